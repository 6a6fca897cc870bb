"""What a chunked vector env returns, shared by every simulator's ``ChunkVectorEnv`` (see ``sim.vector_pool``) and
by the batched device-resident ManiSkill env (``sim.maniskill.batched``).

Arrays are numpy arrays from the worker-process envs and torch tensors on the policy's device from the batched
env; both support the same indexing and ``|``, so the rollout code reads either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence, Union

import numpy as np

if TYPE_CHECKING:
    import torch

Array = Union[np.ndarray, "torch.Tensor"]
Obs = dict[str, Any]  # {"state": (S,) float32, "images": {cam: (H, W, 3) uint8}}, or batched with a leading N


@dataclass
class EpisodeStats:
    """One finished episode. success: the task's success flag held at some step of the episode (ManiSkill's
    ``success_once``), the one success definition of training, ``pirl eval`` and HIL evaluation; the simulators
    here end an episode at its first success, so it is also the flag at the end (``success_at_end``)."""

    env_index: int
    seed: int
    episode_return: float
    length: int
    success: bool
    success_at_end: bool | None = None


@dataclass
class ChunkResult:
    """What one chunk did in each of the N envs.

    obs: observations after the chunk; for envs whose episode ended, the first observation of the next episode.
    final_obs: where ``done``, the last observation of the ended episode (bootstrap the value on truncation);
      elsewhere the same as ``obs``.
    reward: sum of the rewards of the executed steps; step_rewards (N, H): per step, 0 after the episode ended.
    steps: actions executed (< H when the episode ended inside the chunk; 0 for inactive envs).
    success: the task's success flag at the last executed step.
    episodes: stats of the episodes that ended in this chunk.
    """

    obs: Obs
    final_obs: Obs
    reward: Array
    step_rewards: Array
    terminated: Array
    truncated: Array
    success: Array
    steps: Array
    episodes: list[EpisodeStats] = field(default_factory=list)

    @property
    def done(self) -> Array:
        return self.terminated | self.truncated


class WorkerError(RuntimeError):
    """An env worker raised or died; the message carries its traceback or exit code."""


def stack_obs(obs_list: Sequence[Obs]) -> Obs:
    """[{"state": (S,), "images": {cam: img}}] * N -> {"state": (N, S), "images": {cam: (N, H, W, 3)}}."""
    cams = obs_list[0]["images"].keys()
    return {"state": np.stack([o["state"] for o in obs_list]),
            "images": {c: np.stack([o["images"][c] for o in obs_list]) for c in cams}}


def per_env(values: Sequence[Any] | None, num_envs: int, what: str) -> list[Any]:
    """One entry per env (None: None for every env); a list of another length is refused with the counts."""
    if values is None:
        return [None] * num_envs
    values = list(values)
    if len(values) != num_envs:
        raise ValueError(f"{what} needs one entry per env ({num_envs}), got {len(values)}")
    return values
