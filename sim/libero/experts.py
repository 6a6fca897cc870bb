"""A scripted pick-and-place expert for LIBERO tasks whose goal is one ``(In obj container)`` / ``(On obj target)``
with an object at most 7 cm wide (all of LIBERO-Object; LIBERO-Goal 2, 6, 9), acting in the policies' own action
space (OSC_POSE deltas + gripper).

It reads simulator ground truth (``LiberoEnv.privileged()`` and the MuJoCo model): the object's extent from
its collision geoms decides the grasp (top-down, fingers across the object's narrower horizontal side, opened
2.5 cm wider than it, fingertips 3.5 cm below its top but clear of the floor) and the carrying height (the
object's bottom clears the container top). Waypoints are tracked with a proportional step toward the target, at
most ``max_speed`` (in action units, 1 = 5 cm per step), and a proportional rotation toward the grasp orientation.

Measured on standard init states 0-9: LIBERO-Object 94/100 (every task 10/10 but cream cheese, 4/10: a
neighbouring can blocks the hand, which a top-down grasp cannot avoid), LIBERO-Goal 2, 6, 9: 30/30.

    expert = PickPlaceExpert.for_env(env)            # raises UnsupportedTask for other goals
    obs, _ = env.reset(seed=s); expert.reset(env)
    while not done: obs, r, term, trunc, info = env.step(expert.act(env))
"""

from __future__ import annotations

import itertools

import numpy as np

from sim.libero.env import GRIPPER_CLOSE, GRIPPER_OPEN

POS_SCALE, ROT_SCALE = 0.05, 0.5  # OSC_POSE output limits: metres / radians per unit action
PREGRASP = "pregrasp"  # gripper setting of the approach phases: open to the object's width plus a margin


class UnsupportedTask(ValueError):
    """The task's goal is not a single pick-and-place the expert can script."""


def _quat_xyzw_to_mat(q: np.ndarray) -> np.ndarray:
    x, y, z, w = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _rot_to_axis_angle(r: np.ndarray) -> np.ndarray:
    angle = np.arccos(np.clip((np.trace(r) - 1) / 2, -1.0, 1.0))
    if angle < 1e-6:
        return np.zeros(3)
    axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]]) / (2 * np.sin(angle))
    return axis * angle


def _rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def body_extent(env, name: str, frame: str = "world") -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned (min, max) corners of a body's collision geoms, in the world or the body's own frame."""
    m, d = env.raw_env.sim.model._model, env.raw_env.sim.data._data
    root = env.raw_env.obj_body_id[name]

    def under(b: int) -> bool:
        while b > 0:
            if b == root:
                return True
            b = m.body_parentid[b]
        return False

    r_body, p_body = d.xmat[root].reshape(3, 3), d.xpos[root]
    pts = []
    for g in range(m.ngeom):
        if not under(int(m.geom_bodyid[g])) or (m.geom_contype[g] == 0 and m.geom_conaffinity[g] == 0):
            continue
        c, h = m.geom_aabb[g][:3], m.geom_aabb[g][3:]
        r = d.geom_xmat[g].reshape(3, 3)
        for s in itertools.product((-1.0, 1.0), repeat=3):
            p = d.geom_xpos[g] + r @ (c + h * np.array(s))
            pts.append(p if frame == "world" else r_body.T @ (p - p_body))
    if not pts:
        raise UnsupportedTask(f"{name} has no collision geoms")
    pts = np.array(pts)
    return pts.min(0), pts.max(0)


class PickPlaceExpert:
    """Waypoint phases: above the object, down, close, lift, over the container, down, open, retreat."""

    max_speed = 1.0  # action units per step: the OSC covers ~1.3 cm per step at full scale, lagging the command
    grasp_depth = 0.035  # fingertips this far below the object's top
    floor_clearance = 0.012
    max_width = 0.07  # widest object the fingers (8 cm apart when open) can grasp across, with margin

    def __init__(self, obj: str, target: str, noise: float = 0.0, seed: int | None = None):
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        self.obj, self.target, self.noise = obj, target, noise
        self.rng = np.random.default_rng(seed)

    @classmethod
    def for_env(cls, env, noise: float = 0.0, seed: int | None = None) -> "PickPlaceExpert":
        goal = env.task.goal
        if len(goal) != 1 or goal[0][0] not in ("in", "on") or len(goal[0]) != 3:
            raise UnsupportedTask(f"{env.task.suite} task {env.task.task_id}: goal {goal} is not one pick-and-place")
        _, obj, target = goal[0]
        if obj not in env.raw_env.objects_dict:
            raise UnsupportedTask(f"{obj} is not a movable object")
        lo, hi = body_extent(env, obj, frame="body")
        if sorted(hi - lo)[1] > cls.max_width:  # the middle extent: the narrowest side a top-down grasp could take
            raise UnsupportedTask(f"{obj} is {100 * sorted(hi - lo)[1]:.1f} cm across; the expert grasps objects "
                                  f"up to {100 * cls.max_width:.0f} cm wide (a bowl would need a rim grasp)")
        return cls(obj, target, noise=noise, seed=seed)

    # --- planning, once per episode -------------------------------------------------------------------------
    def reset(self, env) -> None:
        priv = env.privileged()
        lo, hi = body_extent(env, self.obj)
        self.grasp_z_offset = max(hi[2] - self.grasp_depth, lo[2] + self.floor_clearance) - priv["objects"][self.obj][2]
        self.grasp_above_bottom = self.grasp_z_offset + priv["objects"][self.obj][2] - lo[2]
        self.target_body = self._target_body(env)
        self.target_top = body_extent(env, self.target_body)[1][2]
        # Fingers (the hand's y axis) across the object's narrower horizontal side.
        blo, bhi = body_extent(env, self.obj, frame="body")
        r_obj = _quat_xyzw_to_mat(priv["objects"][self.obj][3:])
        size = bhi - blo
        horizontal = [i for i in range(3) if abs(r_obj[2, i]) < 0.7] or [0, 1]
        narrow = min(horizontal, key=lambda i: size[i])
        axis = r_obj[:, narrow]
        # Open only a little wider than the object, so the fingers do not catch its neighbours on the way down.
        self.pregrasp_width = size[narrow] + 0.025
        r0 = _quat_xyzw_to_mat(priv["eef_quat"])
        finger = r0[:, 1]
        yaw = np.arctan2(axis[1], axis[0]) - np.arctan2(finger[1], finger[0])
        yaw = (yaw + np.pi / 2) % np.pi - np.pi / 2  # the gripper is symmetric: turn at most 90 degrees
        self.r_goal = _rot_z(yaw) @ r0
        self.phase, self.phase_steps = 0, 0

    def _target_body(self, env) -> str:
        bodies = env.raw_env.obj_body_id
        if self.target in bodies:
            return self.target
        for name in sorted(bodies, key=len, reverse=True):  # a region like basket_1_contain_region
            if self.target.startswith(name + "_"):
                return name
        raise UnsupportedTask(f"cannot find the body of target {self.target!r}")

    # --- acting ---------------------------------------------------------------------------------------------
    def waypoint(self, priv) -> tuple[np.ndarray, float, float, int]:
        """(eef target, gripper, arrival tolerance m, minimum steps) of the current phase."""
        obj = priv["objects"][self.obj][:3]
        tgt = priv["objects"][self.target_body][:3]
        grasp = obj + [0, 0, self.grasp_z_offset]
        carry_z = self.target_top + 0.04 + self.grasp_above_bottom
        phases = [
            (np.r_[obj[:2], max(grasp[2] + 0.08, carry_z)], PREGRASP, 0.015, 0),      # above the object
            (grasp, PREGRASP, 0.008, 0),                                              # down around it
            (grasp, GRIPPER_CLOSE, np.inf, 12),                                       # close
            (np.r_[grasp[:2], carry_z], GRIPPER_CLOSE, 0.02, 0),                      # lift
            (np.r_[tgt[:2], carry_z], GRIPPER_CLOSE, 0.015, 0),                       # over the target
            (np.r_[tgt[:2], carry_z - 0.03], GRIPPER_OPEN, np.inf, 10),               # release
            (np.r_[tgt[:2], carry_z + 0.05], GRIPPER_OPEN, np.inf, 10**6),            # retreat and wait
        ]
        return phases[min(self.phase, len(phases) - 1)]

    def act(self, env) -> np.ndarray:
        priv = env.privileged()
        eef = priv["eef_pos"]
        target, gripper, tol, min_steps = self.waypoint(priv)
        if np.linalg.norm(eef - target) < tol and self.phase_steps >= min_steps or \
                (tol == np.inf and self.phase_steps >= min_steps):
            self.phase, self.phase_steps = self.phase + 1, 0
            target, gripper, tol, min_steps = self.waypoint(priv)
        self.phase_steps += 1
        if gripper == PREGRASP:  # the gripper action is a rate (sign) command: servo the finger opening
            width = priv["gripper_qpos"][0] - priv["gripper_qpos"][1]
            gripper = GRIPPER_CLOSE if width > self.pregrasp_width + 0.004 else (
                GRIPPER_OPEN if width < self.pregrasp_width - 0.004 else 0.0)
        move = (target - eef) / POS_SCALE
        speed = np.linalg.norm(move)
        if speed > self.max_speed:
            move *= self.max_speed / speed
        rot = _rot_to_axis_angle(self.r_goal @ _quat_xyzw_to_mat(priv["eef_quat"]).T) / ROT_SCALE
        action = np.concatenate([move, np.clip(rot, -0.5, 0.5), [gripper]])
        if self.noise:
            action[:6] += self.rng.normal(0.0, self.noise, size=6)
        return np.clip(action, -1.0, 1.0).astype(np.float32)
