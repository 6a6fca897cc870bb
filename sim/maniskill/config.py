"""One ManiSkill3 task setup, as plain data (what a Hydra `env:` group fills in)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from pirl_robot.config import check_keys

TASKS = ("PushCube-v1", "PickCube-v1")
OBS_MODES = ("state", "rgb")
REWARD_MODES = ("normalized_dense", "dense", "sparse")
INSTRUCTIONS = {
    "PushCube-v1": "push the cube to the goal region",
    "PickCube-v1": "pick up the cube and move it to the goal position",
}


@dataclass(frozen=True)
class TaskConfig:
    """task: ManiSkill env id. obs_mode: ``state`` (privileged state vector) or ``rgb`` (proprioception + camera).

    control_mode is fixed to ``pd_joint_pos`` (absolute joint targets) because that is the action space the
    policies, the experts and the real arm share. image_size: camera width = height (rgb only).
    """

    task: str = "PushCube-v1"
    obs_mode: str = "state"
    control_mode: str = "pd_joint_pos"
    reward_mode: str = "normalized_dense"
    max_episode_steps: int = 50
    image_size: int = 64
    chunk_size: int = 8
    exec_horizon: int = 8
    sim_backend: str = "cpu"
    render_backend: str = "cpu"
    credit_remaining_steps: bool = True  # dense rewards: success pays the remaining steps (see ManiSkillEnv.step)
    # --- the twin of the real robot (issue 15; opt-in) ---
    camera_calibration: str | None = None  # calibration YAML: base_camera rendered as that camera (sim/maniskill/twin.py)
    hand_camera_calibration: str | None = None  # eye-in-hand calibration YAML: adds a wrist camera (hand_camera)
    safety_config: str | None = None       # robot yaml: actions pass the deploy SafetyFilter (sim/safety_limits.py)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unsupported ManiSkill task {self.task!r}; supported: {TASKS}")
        if self.obs_mode not in OBS_MODES:
            raise ValueError(f"obs_mode {self.obs_mode!r} not in {OBS_MODES}")
        if self.control_mode != "pd_joint_pos":
            raise ValueError(f"control_mode must be 'pd_joint_pos' (absolute joint targets), got {self.control_mode!r}")
        if self.reward_mode not in REWARD_MODES:
            raise ValueError(f"reward_mode {self.reward_mode!r} not in {REWARD_MODES}")
        if self.max_episode_steps <= 0 or self.image_size <= 0:
            raise ValueError("max_episode_steps and image_size must be positive")
        if not 1 <= self.exec_horizon <= self.chunk_size:
            raise ValueError(f"exec_horizon {self.exec_horizon} must be in [1, chunk_size={self.chunk_size}]")
        if ":" in self.render_backend:
            # ManiSkill splits device strings on ':' and fails on "pci:N"; say so instead of a deep traceback.
            raise ValueError(f"render_backend {self.render_backend!r}: use 'cpu' or 'gpu'/'cuda'")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TaskConfig":
        check_keys(d, {f.name for f in fields(cls)}, "ManiSkill task config")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def instruction(self) -> str:
        return INSTRUCTIONS[self.task]
