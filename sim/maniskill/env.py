"""One ManiSkill3 CPU env that speaks the policy observation format, and the PolicySpec of a task.

    env = ManiSkillEnv(TaskConfig(task="PushCube-v1", obs_mode="state"))
    obs, info = env.reset(seed=3)      # obs = {"state": (S,) float32, "images": {cam: (H, W, 3) uint8}}
    obs, reward, terminated, truncated, info = env.step(action)   # action: (8,) absolute joint targets + gripper

State layout: the fields below, in this order, flattened with one name per entry (``qpos.panda_joint1``,
``tcp_pose.qw``, ``is_grasped``...). qpos comes first so arm action j commands state entry j.
The layout is a fixed table (so ``task_spec`` needs no simulator) that is checked against the env's real
observation when an env is built: a ManiSkill version that changes it fails loudly instead of shifting entries.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pirl_robot.spec import CameraSpec, PolicySpec
from sim.maniskill.config import TaskConfig

ARM_JOINTS = tuple(f"panda_joint{i}" for i in range(1, 8))
JOINTS = ARM_JOINTS + ("panda_finger_joint1", "panda_finger_joint2")
ACTION_NAMES = ARM_JOINTS + ("gripper",)
POSE = ("x", "y", "z", "qw", "qx", "qy", "qz")  # ManiSkill raw_pose: position + wxyz quaternion
POS = ("x", "y", "z")
CAMERAS = ("base_camera",)
HAND_CAMERA = "hand_camera"  # with env.maniskill.hand_camera_calibration: the Panda's wrist camera (twin.py)
CONTROL_HZ = 20  # ManiSkill's control frequency for these tasks (sim at 100 Hz); checked when an env is built
GRIPPER_OPEN, GRIPPER_CLOSED = 1.0, -1.0  # normalised gripper action; maps to finger targets 0.04 m / -0.01 m

# (group in the ManiSkill obs dict, key, entry names); None = a scalar entry named after the key.
_AGENT = [("agent", "qpos", JOINTS), ("agent", "qvel", JOINTS)]
_EXTRA = {
    ("PushCube-v1", "state"): [("extra", "tcp_pose", POSE), ("extra", "goal_pos", POS), ("extra", "obj_pose", POSE)],
    ("PushCube-v1", "rgb"): [("extra", "tcp_pose", POSE)],
    ("PickCube-v1", "state"): [("extra", "is_grasped", None), ("extra", "tcp_pose", POSE), ("extra", "goal_pos", POS),
                               ("extra", "obj_pose", POSE), ("extra", "tcp_to_obj_pos", POS),
                               ("extra", "obj_to_goal_pos", POS)],
    # In rgb mode the goal stays in the state: PickCube's goal marker is hidden from the cameras.
    ("PickCube-v1", "rgb"): [("extra", "is_grasped", None), ("extra", "tcp_pose", POSE), ("extra", "goal_pos", POS)],
}


def state_fields(cfg: TaskConfig) -> list[tuple[str, str, tuple[str, ...] | None]]:
    return _AGENT + _EXTRA[(cfg.task, cfg.obs_mode)]


def state_names(cfg: TaskConfig) -> tuple[str, ...]:
    names: list[str] = []
    for _, key, parts in state_fields(cfg):
        names += [key] if parts is None else [f"{key}.{p}" for p in parts]
    return tuple(names)


def task_spec(cfg: TaskConfig) -> PolicySpec:
    """The PolicySpec a policy for this task consumes and produces (no simulator needed)."""
    names = state_names(cfg)
    cams = tuple(CameraSpec(c, cfg.image_size, cfg.image_size) for c in cameras(cfg))
    return PolicySpec(
        state_names=names,
        action_names=ACTION_NAMES,
        action_type="joint_pos",
        action_units=("rad",) * len(ARM_JOINTS) + ("normalized",),
        action_state_index=tuple(names.index(f"qpos.{j}") for j in ARM_JOINTS) + (-1,),
        delta_action_mask=(True,) * len(ARM_JOINTS) + (False,),
        cameras=cams,
        control_hz=float(CONTROL_HZ),
        chunk_size=cfg.chunk_size,
        exec_horizon=cfg.exec_horizon,
        instruction=cfg.instruction,
        robot="panda",
    )


def cameras(cfg: TaskConfig) -> tuple[str, ...]:
    """The cameras a task config observes: base_camera, plus the wrist camera with a hand camera calibration."""
    if cfg.obs_mode != "rgb":
        return ()
    return CAMERAS + ((HAND_CAMERA,) if cfg.hand_camera_calibration else ())


def gym_kwargs(cfg: TaskConfig, twins: tuple = ()) -> dict[str, Any]:
    """The ``gym.make(cfg.task, **kwargs)`` arguments of a task config (ManiSkillEnv and the batched env); each
    CameraTwin (sim/maniskill/twin.py) overrides its camera's pose, size and intrinsics."""
    kwargs: dict[str, Any] = dict(
        obs_mode="state_dict" if cfg.obs_mode == "state" else "rgb",
        control_mode=cfg.control_mode, reward_mode=cfg.reward_mode, render_backend=cfg.render_backend,
        sim_backend=cfg.sim_backend, max_episode_steps=cfg.max_episode_steps)
    if HAND_CAMERA in cameras(cfg):
        from sim.maniskill.twin import HAND_ROBOT

        kwargs["robot_uids"] = HAND_ROBOT  # the same Panda with a camera (HAND_CAMERA) on its hand
    if cfg.obs_mode == "rgb":
        kwargs["sensor_configs"] = dict(width=cfg.image_size, height=cfg.image_size)
        for twin in twins:
            kwargs["sensor_configs"].update(twin.sensor_configs())
    return kwargs


def check_layout(cfg: TaskConfig, raw: dict[str, Any]) -> None:
    """Refuse a ManiSkill observation (batched, any number of envs) whose layout differs from the state table."""
    fields = state_fields(cfg)
    for group in ("agent", "extra"):
        expected = [k for g, k, _ in fields if g == group]
        if list(raw[group]) != expected:
            raise RuntimeError(f"{cfg.task} obs[{group!r}] has keys {list(raw[group])}, the state layout "
                               f"expects {expected}; update sim/maniskill/env.py for this ManiSkill version")
    for group, key, parts in fields:
        x = raw[group][key]
        n = int(np.prod(x.shape[1:])) if len(x.shape) > 1 else 1  # entries per env
        if n != (1 if parts is None else len(parts)):
            raise RuntimeError(f"{cfg.task} obs {group}.{key} has {n} entries, layout expects {parts}")
    if cfg.obs_mode == "rgb":
        have = sorted(raw["sensor_data"])
        if have != sorted(cameras(cfg)):
            raise RuntimeError(f"{cfg.task} cameras {have} != expected {list(cameras(cfg))}")


class ManiSkillEnv:
    """A single (num_envs=1) ManiSkill env with numpy observations in the policy format."""

    def __init__(self, cfg: TaskConfig):
        import gymnasium as gym
        import mani_skill.envs  # noqa: F401  (registers the tasks)

        self.cfg = cfg
        self.twins, self.limits = twin_hooks(cfg)  # issue 15: calibrated cameras, robot safety limits (or None)
        self.env = gym.make(cfg.task, **gym_kwargs(cfg, self.twins))
        self.unwrapped = self.env.unwrapped
        self.state_names = state_names(cfg)
        self.cameras = cameras(cfg)
        if self.unwrapped.control_freq != CONTROL_HZ:
            raise RuntimeError(f"{cfg.task} runs at {self.unwrapped.control_freq} Hz, task_spec assumes {CONTROL_HZ}")
        space = self.env.action_space
        self.action_low = np.asarray(space.low, dtype=np.float32)
        self.action_high = np.asarray(space.high, dtype=np.float32)
        self._checked = False

    # --- gym-like API -----------------------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        raw, info = self.env.reset(seed=seed)
        if not self._checked:
            self._check_layout(raw)
        if self.limits is not None:
            self.limits.reset(self.privileged()["qpos"])
        return self.convert_obs(raw), _info(info)

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        """action: (8,) = 7 absolute arm joint targets (rad) + gripper in [-1, 1] (1 open). Clipped to the
        action box (joint limits), as an arm driver would; non-finite actions are refused."""
        action = self.clip_action(action)
        if self.limits is not None:  # the deploy node's SafetyFilter between the policy and the arm
            action = self.limits.filter(action, self.privileged()["qpos"])
        raw, reward, terminated, truncated, info = self.env.step(action)
        reward, terminated = float(reward.item()), bool(terminated.item())
        info["executed_action"] = action
        if terminated and self.cfg.reward_mode != "sparse" and self.cfg.credit_remaining_steps:
            # Episodes end on success. With a dense per-step reward that would pay a policy to postpone success
            # (a longer episode collects more); credit the remaining steps at the success step's reward instead,
            # as if the episode had continued in the success state (ManiSkill's own PPO keeps it running).
            remaining = self.cfg.max_episode_steps - int(self.unwrapped.elapsed_steps.item())
            reward += reward * max(remaining, 0)
        return self.convert_obs(raw), reward, terminated, bool(truncated.item()), _info(info)

    def clip_action(self, action: np.ndarray) -> np.ndarray:
        """The action as it will be executed: validated, float32, clipped to the joint limits / gripper range."""
        action = np.asarray(action, dtype=np.float32)
        if action.shape != self.action_low.shape:
            raise ValueError(f"action must have shape {self.action_low.shape}, got {action.shape}")
        if not np.isfinite(action).all():
            raise ValueError(f"non-finite action {action}")
        return np.clip(action, self.action_low, self.action_high)

    def close(self) -> None:
        self.env.close()

    # --- observation conversion -------------------------------------------------------------------------------
    def convert_obs(self, raw: dict[str, Any]) -> dict[str, Any]:
        parts = [_np(raw[group][key]).reshape(-1).astype(np.float32) for group, key, _ in state_fields(self.cfg)]
        images = {cam: _np(raw["sensor_data"][cam]["rgb"])[0] for cam in self.cameras}
        for twin in self.twins:
            if twin.uid in images:
                images[twin.uid] = twin.distort(images[twin.uid])
        return {"state": np.concatenate(parts), "images": images}

    def _check_layout(self, raw: dict[str, Any]) -> None:
        check_layout(self.cfg, raw)
        for twin in self.twins:
            from sim.maniskill.twin import check_base_pose

            check_base_pose(twin, self.privileged()["base_pose"])
        self._checked = True

    # --- ground truth for scripted experts ------------------------------------------------------------------
    def privileged(self) -> dict[str, np.ndarray]:
        """Simulator ground truth in the world frame (any obs mode): qpos (9,), tcp_pose, obj_pose (7,) as
        xyz + wxyz, goal_pos (3,), base_pose (7,) of the robot root."""
        u = self.unwrapped
        obj = u.obj if self.cfg.task == "PushCube-v1" else u.cube
        goal = u.goal_region if self.cfg.task == "PushCube-v1" else u.goal_site
        return {
            "qpos": _np(u.agent.robot.get_qpos())[0].astype(np.float64),
            "qvel": _np(u.agent.robot.get_qvel())[0].astype(np.float64),
            "tcp_pose": _np(u.agent.tcp.pose.raw_pose)[0].astype(np.float64),
            "obj_pose": _np(obj.pose.raw_pose)[0].astype(np.float64),
            "goal_pos": _np(goal.pose.p)[0].astype(np.float64),
            "base_pose": _np(u.agent.robot.pose.raw_pose)[0].astype(np.float64),
        }


def twin_hooks(cfg: TaskConfig, num_envs: int = 1):
    """The calibrated cameras (a tuple, empty unless set) and the robot's safety limits (None unless set) this env
    runs with (issue 15)."""
    twins, limits = [], None
    for path, uid, mount in ((cfg.camera_calibration, CAMERAS[0], "eye_to_hand"),
                             (cfg.hand_camera_calibration, HAND_CAMERA, "eye_in_hand")):
        if path:
            from sim.maniskill.twin import CameraTwin, TwinError

            twin = CameraTwin.from_file(path, cfg.task, cfg.image_size, cfg.image_size, uid)
            if twin.on_hand != (mount == "eye_in_hand"):
                raise TwinError(f"{path}: mount {twin.calibration.mount!r}; the {uid} twin needs {mount}")
            twins.append(twin)
    if cfg.safety_config:
        from sim.safety_limits import SimSafetyLimits

        limits = SimSafetyLimits.from_config(cfg.safety_config, task_spec(cfg), num_envs)
    return tuple(twins), limits


def _np(x: Any) -> np.ndarray:
    return x.cpu().numpy() if hasattr(x, "cpu") else np.asarray(x)


def _info(info: dict[str, Any]) -> dict[str, Any]:
    """Batch-of-one torch info -> python scalars (success, elapsed_steps, ...)."""
    out = {}
    for k, v in info.items():
        if hasattr(v, "numel") and v.numel() == 1:
            v = v.item()
        out[k] = v
    return out
