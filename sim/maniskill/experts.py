"""Scripted experts for PushCube-v1 and PickCube-v1 that act in the policies' own action space (pd_joint_pos).

Each expert plans TCP waypoints from simulator ground truth (``ManiSkillEnv.privileged()``), moves a commanded TCP
position toward the current waypoint at a bounded speed, and converts it to absolute arm joint targets with IK
(sim/maniskill/ik.py). So the recorded actions are exactly what the policy will output, and replaying them in a
pd_joint_pos env reproduces the episode: there is no controller conversion in between.

    expert = make_expert("PickCube-v1", noise=0.0, seed=0)
    obs, _ = env.reset(seed=s); expert.reset(env.privileged())
    while not done: action = expert.act(env.privileged()); obs, r, term, trunc, info = env.step(action)

``noise``: std (rad) of Gaussian noise added to every arm joint target, to degrade the expert on purpose
(e.g. for RL from a weaker SFT start, or for failure data).
"""

from __future__ import annotations

import numpy as np

from sim.maniskill.env import GRIPPER_CLOSED, GRIPPER_OPEN
from sim.maniskill.ik import IKError, PandaIK, world_to_base

DOWN = np.array([0.0, 1.0, 0.0, 0.0])  # TCP pointing down (180 deg about x), wxyz, in the base frame
CUBE_HALF = 0.02


def _yaw_quat(angle: float) -> np.ndarray:
    return np.array([np.cos(angle / 2), 0.0, 0.0, np.sin(angle / 2)])


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return np.array([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                     w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2])


class _WaypointExpert:
    """Shared machinery: a phase list of (waypoint, gripper, tolerance) that advances when the TCP arrives."""

    max_step = 0.03  # m per control step (0.6 m/s at 20 Hz): fast enough for 50-step episodes, smooth under PD lag
    ik_tolerance = 0.03  # m: PushCube's farthest goals lie just beyond a vertical TCP's reach; get as close as IK can

    def __init__(self, noise: float = 0.0, seed: int | None = None, ik: PandaIK | None = None):
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        self.noise = noise
        self.rng = np.random.default_rng(seed)
        self.ik = ik or PandaIK()

    def reset(self, priv: dict[str, np.ndarray]) -> None:
        self.phase = 0
        self.phase_steps = 0
        self.cmd = world_to_base(priv["base_pose"], priv["tcp_pose"])[:3]
        self.q_prev = priv["qpos"].copy()
        self.orientation = DOWN
        self.plan(priv)

    def plan(self, priv: dict[str, np.ndarray]) -> None:
        """Per-episode decisions taken once at reset (grasp orientation...)."""

    def waypoint(self, priv: dict[str, np.ndarray]) -> tuple[np.ndarray, float, float, int]:
        """Current phase -> (TCP target in the world frame, gripper action, arrival tolerance (m), min steps)."""
        raise NotImplementedError

    def act(self, priv: dict[str, np.ndarray]) -> np.ndarray:
        base = priv["base_pose"]
        tcp = world_to_base(base, priv["tcp_pose"])[:3]
        target_w, gripper, tol, min_steps = self.waypoint(priv)
        target = world_to_base(base, target_w)
        if np.linalg.norm(tcp - target) < tol and self.phase_steps >= min_steps and self.phase < self.num_phases - 1:
            self.phase, self.phase_steps = self.phase + 1, 0
            target_w, gripper, tol, min_steps = self.waypoint(priv)
            target = world_to_base(base, target_w)
        self.phase_steps += 1
        step = target - self.cmd
        dist = np.linalg.norm(step)
        cmd_before = self.cmd
        self.cmd = self.cmd + (step if dist <= self.max_step else step * self.max_step / dist)
        q_seed = np.concatenate([self.q_prev[:7], priv["qpos"][7:]])
        try:
            arm = self.ik.ik(np.concatenate([self.cmd, self.orientation]), q_seed, tolerance=self.ik_tolerance)
        except IKError:  # out of reach: stay at the last reachable command
            self.cmd = cmd_before
            arm = self.q_prev[:7].copy()
        self.q_prev = np.concatenate([arm, priv["qpos"][7:]])
        if self.noise:
            arm = arm + self.rng.normal(0.0, self.noise, size=arm.shape)
        return np.concatenate([arm, [gripper]]).astype(np.float32)


class PushCubeExpert(_WaypointExpert):
    """Closed gripper: go above a point behind the cube, descend to cube height, push along +x to the goal."""

    num_phases = 3

    def waypoint(self, priv):
        cube, goal = priv["obj_pose"][:3], priv["goal_pos"]
        behind = np.array([cube[0] - CUBE_HALF - 0.025, cube[1], 0.0])
        if self.phase == 0:
            return behind + [0, 0, 0.05], GRIPPER_CLOSED, 0.02, 0
        if self.phase == 1:
            return behind + [0, 0, 0.015], GRIPPER_CLOSED, 0.01, 0
        # Push the cube centre to 4 cm short of the goal centre: inside the 10 cm goal radius with margin, and
        # still reachable with a vertical TCP for the farthest goals. Success ends the episode on the way.
        return np.array([goal[0] - 0.04 - CUBE_HALF - 0.005, cube[1], 0.015]), GRIPPER_CLOSED, 0.0, 0


class PickCubeExpert(_WaypointExpert):
    """Open gripper above the cube (yaw aligned to its faces), descend, close, carry the cube to the goal, hold."""

    num_phases = 5

    def plan(self, priv):
        q = priv["obj_pose"][3:]
        cube_yaw = 2 * np.arctan2(q[3], q[0])
        yaw = (cube_yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4  # nearest of the four face-aligned grasps
        base_q = priv["base_pose"][3:]
        base_yaw = 2 * np.arctan2(base_q[3], base_q[0])
        self.orientation = _quat_mul(_yaw_quat(yaw - base_yaw), DOWN)
        self.grasp_offset = None

    def waypoint(self, priv):
        cube, goal = priv["obj_pose"][:3], priv["goal_pos"]
        if self.phase == 0:
            return cube + [0, 0, 0.06], GRIPPER_OPEN, 0.015, 0
        if self.phase == 1:
            return cube + [0, 0, -0.005], GRIPPER_OPEN, 0.006, 0
        if self.phase == 2:  # close in place; fingers take a few control steps
            return cube + [0, 0, -0.005], GRIPPER_CLOSED, np.inf, 4
        if self.grasp_offset is None:  # where the TCP holds the cube, so the cube centre (not the TCP) hits the goal
            self.grasp_offset = priv["tcp_pose"][:3] - cube
        if self.phase == 3:
            return goal + self.grasp_offset, GRIPPER_CLOSED, 0.01, 0
        return goal + self.grasp_offset, GRIPPER_CLOSED, 0.0, 0


EXPERTS = {"PushCube-v1": PushCubeExpert, "PickCube-v1": PickCubeExpert}


def make_expert(task: str, noise: float = 0.0, seed: int | None = None) -> _WaypointExpert:
    if task not in EXPERTS:
        raise ValueError(f"no scripted expert for {task!r}; have {sorted(EXPERTS)}")
    return EXPERTS[task](noise=noise, seed=seed)
