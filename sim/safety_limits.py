"""The robot's own safety limits inside the simulator: every sim action passes the deploy node's SafetyFilter.

    env.maniskill.safety_config: ros_ws/src/pirl_robot/config/safety/panda_maniskill.yaml   # Hydra env config
    ManiSkillEnv(TaskConfig(task="PushCube-v1", safety_config="configs/robot/panda.yaml"))   # or directly

With the key set, ManiSkillEnv runs each action through `SimSafetyLimits.filter` before the simulator steps:
pirl_robot.safety.SafetyFilter, built from the same yaml the deploy node loads (position / velocity /
acceleration / jerk / per-tick limits, the workspace box through the URDF FK, the smooth start after each reset),
ticked once per control step with the measured joints, as the node ticks it once per control period. What the
filter applied is what the arm executes and what `info["executed_action"]` reports, so expert demos record the
limited actions (a policy cloned from them learns commands the filter passes), RL rollouts and evaluations see
the motion the arm will make. The watchdog is not modelled: simulated inputs are never stale.

The gripper entry is the normalised command (1 open, -1 closed); its measured value is the finger position
mapped back as the deploy node's command map does for the simulated arm (finger = 0.025 x command + 0.015).
"""

from __future__ import annotations

import numpy as np

from pirl_robot.drivers.arms.maniskill_arm import FINGER_HIGH, FINGER_LOW
from pirl_robot.safety import SafetyFilter, load_safety_config
from pirl_robot.safety.config import SafetyConfig
from pirl_robot.safety.kinematics import EndEffectorFK
from pirl_robot.spec import PolicySpec


class SimSafetyLimits:
    """One SafetyFilter per simulated env (`num_envs`: the batched env's; the URDF FK is parsed once, shared)."""

    def __init__(self, cfg: SafetyConfig, control_hz: float, source: str = "", num_envs: int = 1):
        self.cfg, self.control_hz, self.source = cfg, control_hz, source
        ws = cfg.workspace
        self._fk = EndEffectorFK(ws.urdf, ws.ee_link, [j.urdf_joint for j in cfg.joints]) if ws else None
        self.filters: list[SafetyFilter | None] = [None] * num_envs  # one per env and episode
        self._hold: list[np.ndarray | None] = [None] * num_envs
        self.ticks = self.modified = 0          # over the env's lifetime, all envs
        self.causes: dict[str, int] = {}        # safety event causes (clamps, limits, holds) over the lifetime

    @classmethod
    def from_config(cls, path: str, spec: PolicySpec, num_envs: int = 1) -> "SimSafetyLimits":
        from pirl_robot.deploy.safety_hook import resolve_path

        return cls(load_safety_config(resolve_path(path), spec=spec), spec.control_hz, str(path), num_envs)


    def measured(self, qpos: np.ndarray) -> np.ndarray:
        """Simulator joint positions (9,) -> the filter's entries: 7 arm joints + the normalised gripper."""
        gripper = 2.0 * (qpos[7] - FINGER_LOW) / (FINGER_HIGH - FINGER_LOW) - 1.0
        return np.concatenate([qpos[:7], [gripper]])[: len(self.cfg.entry_names)]

    def reset(self, qpos: np.ndarray, env: int = 0) -> None:
        """A new episode of `env`: a fresh filter that starts (smoothly) from the measured state, as after ~/start."""
        self.filters[env] = f = SafetyFilter(self.cfg, self.control_hz, fk=self._fk)
        f.resume()
        self._hold[env] = self.measured(qpos)

    def filter(self, action: np.ndarray, qpos: np.ndarray, env: int = 0) -> np.ndarray:
        """One control tick of `env`: the policy's action (8,) and the measured qpos (9,) -> the action the arm
        executes."""
        f = self.filters[env]
        if f is None:
            raise RuntimeError("SimSafetyLimits.filter before reset")
        out = f.step(np.asarray(action, dtype=np.float64), self.measured(qpos), None)
        for e in out.events:
            self.causes[e.cause] = self.causes.get(e.cause, 0) + 1
        cmd = self._hold[env] if out.command is None else out.command  # None: start refused; the arm holds still
        self.ticks += 1
        self.modified += int(not np.allclose(cmd, action, atol=1e-6))
        return np.asarray(cmd, dtype=np.float32)

    def filter_batch(self, actions: np.ndarray, qpos: np.ndarray) -> np.ndarray:
        """Every env's tick: actions (N, 8), measured qpos (N, 9) -> executed actions (N, 8). A loop over numpy
        filters on the host: ~0.2-0.3 ms an env and step, the cost of the limits in a batched GPU simulation."""
        return np.stack([self.filter(a, q, i) for i, (a, q) in enumerate(zip(actions, qpos))])
