"""What a chunked vector env returns, shared by every simulator's ``ChunkVectorEnv`` (see ``sim.vector_pool``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

Obs = dict[str, Any]  # {"state": (S,) float32, "images": {cam: (H, W, 3) uint8}}, or batched with a leading N


@dataclass
class EpisodeStats:
    env_index: int
    seed: int
    episode_return: float
    length: int
    success: bool


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
    reward: np.ndarray
    step_rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    success: np.ndarray
    steps: np.ndarray
    episodes: list[EpisodeStats] = field(default_factory=list)

    @property
    def done(self) -> np.ndarray:
        return self.terminated | self.truncated


class WorkerError(RuntimeError):
    """An env worker raised or died; the message carries its traceback or exit code."""


def stack_obs(obs_list: Sequence[Obs]) -> Obs:
    """[{"state": (S,), "images": {cam: img}}] * N -> {"state": (N, S), "images": {cam: (N, H, W, 3)}}."""
    cams = obs_list[0]["images"].keys()
    return {"state": np.stack([o["state"] for o in obs_list]),
            "images": {c: np.stack([o["images"][c] for o in obs_list]) for c in cams}}
