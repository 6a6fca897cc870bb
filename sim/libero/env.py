"""One LIBERO task (robosuite 1.4 + MuJoCo) that speaks the policy observation format, and its PolicySpec.

    env = LiberoEnv(LiberoConfig(suite="libero_object", task_ids=(0,), obs_mode="rgb"))
    obs, info = env.reset(seed=3)      # obs = {"state": (S,) float32, "images": {cam: (H, W, 3) uint8}}
    obs, reward, terminated, truncated, info = env.step(action)   # action: (7,) OSC_POSE delta + gripper

Actions are LIBERO's own (what its datasets and openpi / RLinf policies use): the Panda's OSC_POSE controller in
delta mode, 7 entries in [-1, 1]: end-effector translation (x 0.05 m) and axis-angle rotation (x 0.5 rad) in the
world frame, then the gripper (-1 open, +1 close). Out-of-range actions are clipped, non-finite ones refused.

State: ``eef_pos`` (3, world frame), ``eef_axis_angle`` (3, from robosuite's xyzw quaternion, as openpi does) and
``gripper_qpos`` (2 finger joints): the 8-D LIBERO state of openpi's datasets. In ``state`` mode the poses of
the task's objects of interest follow, one slot each (``obj0.x`` .. ``obj0.qw``; xyz + xyzw quaternion; bodies
or, for a region of interest, its site), zero-padded to ``object_slots``.
Images: rotated 180 degrees from MuJoCo's bottom-up render, the orientation of openpi's / RLinf's LIBERO inputs.

Reward is sparse (1 on the step the goal predicate holds); the episode terminates on success and is truncated at
``max_episode_steps``.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np

from pirl_robot.spec import CameraSpec, PolicySpec
from sim.libero.config import LiberoConfig
from sim.libero.suites import TaskInfo, check_gl, task_info

CONTROL_HZ = 20  # LIBERO's control frequency (robosuite control_freq); checked when an env is built
GRIPPER_OPEN, GRIPPER_CLOSE = -1.0, 1.0
NOOP = np.array([0, 0, 0, 0, 0, 0, GRIPPER_OPEN], dtype=np.float64)
PROPRIO = ("eef_pos.x", "eef_pos.y", "eef_pos.z", "eef_axis_angle.rx", "eef_axis_angle.ry", "eef_axis_angle.rz",
           "gripper_qpos.left", "gripper_qpos.right")
SLOT = ("x", "y", "z", "qx", "qy", "qz", "qw")
ACTION_NAMES = ("ee_dx", "ee_dy", "ee_dz", "ee_drx", "ee_dry", "ee_drz", "gripper")
CAMERA_SOURCES = {"agentview": "agentview", "wrist": "robot0_eye_in_hand"}  # spec name -> robosuite camera


def state_names(cfg: LiberoConfig) -> tuple[str, ...]:
    names = list(PROPRIO)
    if cfg.obs_mode == "state":
        names += [f"obj{i}.{p}" for i in range(cfg.object_slots) for p in SLOT]
    return tuple(names)


def task_spec(cfg: LiberoConfig) -> PolicySpec:
    """The PolicySpec of this setup (no simulator needed). With several tasks the instruction differs per
    episode, so the spec carries none."""
    for t in cfg.task_ids:
        _check_slots(cfg, task_info(cfg.suite, t))
    cams = tuple(CameraSpec(c, cfg.image_size, cfg.image_size) for c in cfg.cameras) if cfg.obs_mode == "rgb" else ()
    return PolicySpec(
        state_names=state_names(cfg),
        action_names=ACTION_NAMES,
        action_type="ee_delta_pose",
        action_units=("normalized",) * len(ACTION_NAMES),
        cameras=cams,
        control_hz=float(CONTROL_HZ),
        chunk_size=cfg.chunk_size,
        exec_horizon=cfg.exec_horizon,
        instruction=task_info(cfg.suite, cfg.task_ids[0]).instruction if len(cfg.task_ids) == 1 else "",
        robot="panda",
    )


def _check_slots(cfg: LiberoConfig, task: TaskInfo) -> None:
    if cfg.obs_mode == "state" and len(task.objects_of_interest) > cfg.object_slots:
        raise ValueError(f"{task.suite} task {task.task_id} has {len(task.objects_of_interest)} objects of interest "
                         f"{task.objects_of_interest}; raise object_slots (now {cfg.object_slots})")


def quat_to_axis_angle(q: np.ndarray) -> np.ndarray:
    """xyzw quaternion -> axis * angle (rad); the conversion openpi applies to LIBERO's eef quaternion."""
    w = float(np.clip(q[3], -1.0, 1.0))
    den = np.sqrt(1.0 - w * w)
    if den < 1e-8:
        return np.zeros(3)
    return np.asarray(q[:3], dtype=np.float64) * 2.0 * np.arccos(w) / den


def _mat_to_quat_xyzw(m: np.ndarray) -> np.ndarray:
    import mujoco

    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, np.asarray(m, dtype=np.float64).reshape(9))
    return np.array([q[1], q[2], q[3], q[0]])


class LiberoEnv:
    """One LIBERO task with numpy observations in the policy format.

    video_size > 0 also builds an offscreen renderer so ``render()`` can draw frames for videos, in any obs mode.
    """

    def __init__(self, cfg: LiberoConfig, task_id: int | None = None, video_size: int = 0):
        check_gl(cfg.gl)  # before robosuite / MuJoCo are imported
        from libero.libero.envs.env_wrapper import ControlEnv

        self.cfg = cfg
        self.task = task_info(cfg.suite, cfg.task_ids[0] if task_id is None else task_id)
        if self.task.task_id not in cfg.task_ids:
            raise ValueError(f"task {self.task.task_id} is not one of the config's task_ids {cfg.task_ids}")
        _check_slots(cfg, self.task)
        self.init_states = self.task.init_states()
        self.state_names = state_names(cfg)
        self.cameras = cfg.cameras if cfg.obs_mode == "rgb" else ()
        self.video_size = video_size
        kwargs = dict(
            bddl_file_name=str(self.task.bddl_path), use_camera_obs=bool(self.cameras),
            has_offscreen_renderer=bool(self.cameras) or video_size > 0,
            camera_names=[CAMERA_SOURCES[c] for c in self.cameras] or ["agentview"],
            camera_heights=cfg.image_size, camera_widths=cfg.image_size, control_freq=CONTROL_HZ,
            # No hard reset: rebuilding the MuJoCo model from XML on every episode costs seconds, and every
            # episode starts from an init state (qpos + qvel) that overwrites whatever the reset sampled.
            hard_reset=False,
            ignore_done=True, horizon=10**9)  # the time limit is this adapter's, not robosuite's
        with contextlib.redirect_stdout(io.StringIO()):
            self.env = ControlEnv(**kwargs)
        self.raw_env = self.env.env
        if int(self.raw_env.control_freq) != CONTROL_HZ:
            raise RuntimeError(f"LIBERO env runs at {self.raw_env.control_freq} Hz, task_spec assumes {CONTROL_HZ}")
        if self.raw_env.action_dim != len(ACTION_NAMES):
            raise RuntimeError(f"LIBERO env takes {self.raw_env.action_dim}-D actions, expected {len(ACTION_NAMES)}")
        self._sites = {n: self.raw_env.sim.model.site_name2id(n) for n in self.task.objects_of_interest
                       if n not in self.raw_env.obj_body_id}
        self.elapsed_steps = 0
        self.seed = None
        self.init_index = None

    @property
    def instruction(self) -> str:
        return self.task.instruction

    # --- gym-like API -----------------------------------------------------------------------------------------
    def reset(self, seed: int = 0, scene: str = "standard") -> tuple[dict[str, Any], dict[str, Any]]:
        """Start the episode of `seed`. scene="standard": the task's standard init state (seed // T) % n (see
        LiberoConfig), what evaluation and RL use. scene="sampled": a new scene from LIBERO's own placement
        sampler seeded with `seed` (how LIBERO's demonstrations were collected), for demos that do not reuse
        the evaluation scenes."""
        if scene not in ("standard", "sampled"):
            raise ValueError(f"scene must be 'standard' or 'sampled', got {scene!r}")
        task_id, k = self.cfg.episode_of(int(seed), len(self.init_states))
        if task_id != self.task.task_id:
            raise ValueError(f"seed {seed} selects task {task_id}; this env runs task {self.task.task_id}")
        # LIBERO samples object and fixture placements from numpy's global RNG on every reset; fixture poses are
        # model constants that init states do not hold, so seeding makes scene k identical each time.
        np.random.seed(k if scene == "standard" else int(seed) % 2**32)
        self.env.reset()
        # A hard reset would rebuild the gripper model; a soft one keeps its integrated finger command, which
        # would carry the last episode's grasp into this one.
        for robot in self.raw_env.robots:
            robot.gripper.current_action = np.zeros_like(robot.gripper.current_action)
        if scene == "standard":
            self.env.set_init_state(self.init_states[k])
        if self.cfg.settle_steps:
            with self._cameras_off():  # nobody sees the settling frames: skip rendering them
                for _ in range(self.cfg.settle_steps):
                    self.raw_env.step(NOOP)
        raw = self.raw_env._get_observations(force_update=True)
        self.seed, self.init_index, self.elapsed_steps = int(seed), (k if scene == "standard" else None), 0
        return self.convert_obs(raw), {"task_id": task_id, "init_index": self.init_index, "scene": scene,
                                       "instruction": self.instruction}

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        """action (7,): OSC_POSE delta (x, y, z, rx, ry, rz) and gripper, each in [-1, 1] (clipped)."""
        if self.seed is None:
            raise RuntimeError("step before reset")
        raw, reward, done, _ = self.env.step(self.clip_action(action).astype(np.float64))
        self.elapsed_steps += 1
        success = bool(done)  # LIBERO's step returns done = the goal predicate (env.check_success())
        truncated = not success and self.elapsed_steps >= self.cfg.max_episode_steps
        info = {"success": success, "elapsed_steps": self.elapsed_steps}
        return self.convert_obs(raw), float(reward), success, truncated, info

    def clip_action(self, action: np.ndarray) -> np.ndarray:
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (len(ACTION_NAMES),):
            raise ValueError(f"action must have shape ({len(ACTION_NAMES)},), got {action.shape}")
        if not np.isfinite(action).all():
            raise ValueError(f"non-finite action {action}")
        return np.clip(action, -1.0, 1.0)

    def check_success(self) -> bool:
        return bool(self.env.check_success())

    def close(self) -> None:
        if getattr(self, "env", None) is not None:
            self.env.close()
            self.env = None

    # --- observation conversion -------------------------------------------------------------------------------
    def convert_obs(self, raw: dict[str, Any]) -> dict[str, Any]:
        parts = [raw["robot0_eef_pos"], quat_to_axis_angle(raw["robot0_eef_quat"]), raw["robot0_gripper_qpos"]]
        if self.cfg.obs_mode == "state":
            poses = [self.object_pose(n) for n in self.task.objects_of_interest]
            poses += [np.zeros(len(SLOT))] * (self.cfg.object_slots - len(poses))
            parts += poses
        images = {c: np.ascontiguousarray(raw[f"{CAMERA_SOURCES[c]}_image"][::-1, ::-1]) for c in self.cameras}
        return {"state": np.concatenate(parts).astype(np.float32), "images": images}

    def object_pose(self, name: str) -> np.ndarray:
        """World pose (x y z qx qy qz qw) of an object or fixture body, or of a region's site."""
        data = self.raw_env.sim.data
        if name in self.raw_env.obj_body_id:
            i = self.raw_env.obj_body_id[name]
            w, x, y, z = data.body_xquat[i]
            return np.array([*data.body_xpos[i], x, y, z, w])
        i = self._sites[name]
        return np.concatenate([data.site_xpos[i], _mat_to_quat_xyzw(data.site_xmat[i])])

    @contextlib.contextmanager
    def _cameras_off(self):
        names = [f"{CAMERA_SOURCES[c]}_image" for c in self.cameras]
        for n in names:
            self.raw_env.modify_observable(n, "enabled", False)
        try:
            yield
        finally:
            for n in names:
                self.raw_env.modify_observable(n, "enabled", True)

    # --- ground truth, states, frames -------------------------------------------------------------------------
    def privileged(self) -> dict[str, Any]:
        """Simulator ground truth for scripted experts: eef pose (xyz + xyzw), finger qpos, and the world pose of
        every object and fixture (plus the task's regions of interest)."""
        names = list(self.raw_env.obj_body_id) + list(self._sites)
        obs = self.raw_env._get_observations()  # the cached values of the last step: no re-rendering
        return {"eef_pos": np.array(obs["robot0_eef_pos"]), "eef_quat": np.array(obs["robot0_eef_quat"]),
                "gripper_qpos": np.array(obs["robot0_gripper_qpos"]),
                "objects": {n: self.object_pose(n) for n in names}}

    def sim_state(self) -> np.ndarray:
        """The flattened MuJoCo state (the format of the suites' init states)."""
        return np.array(self.env.get_sim_state())

    def set_sim_state(self, state: np.ndarray) -> dict[str, Any]:
        """Load a flattened MuJoCo state and return the observation there (the episode clock is not reset)."""
        return self.convert_obs(self.env.regenerate_obs_from_state(np.asarray(state, dtype=np.float64)))

    def render(self, camera: str = "agentview", size: int | None = None) -> np.ndarray:
        """An upright (H, W, 3) uint8 frame from `camera` (needs cameras or video_size > 0)."""
        if not self.raw_env.has_offscreen_renderer:
            raise RuntimeError("this LiberoEnv has no renderer: build it with obs_mode='rgb' or video_size > 0")
        size = size or self.video_size or self.cfg.image_size
        img = self.raw_env.sim.render(camera_name=CAMERA_SOURCES.get(camera, camera), width=size, height=size)
        return np.ascontiguousarray(img[::-1, ::-1])
