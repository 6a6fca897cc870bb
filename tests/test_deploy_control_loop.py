"""The deploy node's control loop without ROS: a real policy, broker, inference thread and safety stage
(configs/robot/panda.yaml) around a stand-in arm that reaches every command (the device layer is the only fake).

    python tests/test_deploy_control_loop.py      # also profiles 2000 ticks of ControlLoop.step with the filter
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from deploy_utils import PANDA_JOINTS, PANDA_STATE_JOINTS, panda_home_policy  # noqa: E402

from pirl_robot.deploy.broker import ActionChunkBroker  # noqa: E402
from pirl_robot.deploy.control_loop import ControlLoop  # noqa: E402
from pirl_robot.deploy.robot import CommandMap  # noqa: E402
from pirl_robot.deploy.safety_hook import make_safety_stage  # noqa: E402
from pirl_robot.deploy.taps import ChunkRecord, SafetyRecord, TickRecord  # noqa: E402
from pirl_robot.drivers.arms.base import JointSample  # noqa: E402

NAMES = PANDA_STATE_JOINTS
HOME = np.array([0.0, 0.4, 0.0, -1.9, 0.0, 2.3, 0.8, 0.04, 0.04])
COMMAND = CommandMap(PANDA_JOINTS + ("panda_finger_joint1",), np.r_[np.ones(7), 0.025], np.r_[np.zeros(7), 0.015])
SETTINGS = {"control_hz": 20.0, "tick_source": "timer", "max_wait_ms": 500.0, "max_state_age_ms": 200.0, "seed": 0,
            "chunking": "blend", "rtc_inference_delay": 0, "rtc_execution_horizon": 0}


class ReachingArm:
    """Stands in for the arm and its joint-state driver: every command is reached at once."""

    def __init__(self):
        self.q, self.sent = HOME.copy(), []

    def send(self, command):
        self.sent.append(np.array(command))
        self.q[:8] = command
        self.q[8] = command[7]

    def latest(self) -> JointSample:
        return JointSample(NAMES, self.q.copy(), np.zeros(9), time.monotonic())

    def observe(self):
        joints = self.latest()
        return {"state": joints.position.copy(), "images": {}}, joints, {}


def make_loop(arm: ReachingArm) -> ControlLoop:
    # actions near the home pose, gripper half open: the filter follows (RUNNING) instead of holding
    policy = panda_home_policy(HOME, gripper=0.0, action_std=0.02)
    spec = policy.spec
    safety = make_safety_stage("configs/robot/panda.yaml", spec, COMMAND)
    safety.driver(True)
    return ControlLoop(arm, arm, safety, ActionChunkBroker(spec.exec_horizon), policy, dict(SETTINGS),
                       log=lambda level, msg: None)


def wait_ticks(loop: ControlLoop, n: int, timeout: float = 30.0) -> None:
    """Let the tick thread run n more ticks (it ticks on its 20 Hz timer)."""
    target, deadline = loop.tick + n, time.monotonic() + timeout
    while loop.tick < target:
        assert time.monotonic() < deadline, f"only {loop.tick} ticks"
        time.sleep(0.01)


def test_ticks_command_within_limits_and_the_estop_latches():
    arm = ReachingArm()
    loop = make_loop(arm)
    records = []
    loop.taps.append(records.append)
    loop.start()
    try:
        loop.start_policy()
        wait_ticks(loop, 30)
        assert loop.mode == "running" and len(arm.sent) >= 20
        steps = np.abs(np.diff(np.array(arm.sent)[:, :7], axis=0))
        assert (steps <= 0.05 + 1e-9).all()  # panda.yaml: max_step 0.05 rad on joints 1-4, 0.065 on 5-7
        kinds = {type(r) for r in records}
        assert {TickRecord, ChunkRecord, SafetyRecord} <= kinds
        tick = next(r for r in reversed(records) if isinstance(r, TickRecord))
        assert tick.executing and tick.command is not None and tick.action is not None

        assert loop.estop("(test)") == "e-stop latched"
        held = arm.sent[-1]
        wait_ticks(loop, 5)
        assert all(np.array_equal(c, held) for c in arm.sent[-5:])
        try:
            loop.start_policy()
            raise AssertionError("start accepted while the e-stop is latched")
        except RuntimeError as e:
            assert "e-stop" in str(e)
    finally:
        loop.close()


if __name__ == "__main__":  # profile the tick
    import cProfile
    import pstats

    arm = ReachingArm()
    loop = make_loop(arm)
    prof, tick = cProfile.Profile(), loop.step
    loop.step = lambda: prof.runcall(tick)  # the tick thread calls this
    loop.start()
    loop.start_policy()
    wait_ticks(loop, 400, timeout=120)
    loop.close()
    print({k: v for k, v in loop.diagnostics().items() if k.startswith("overhead")})
    pstats.Stats(prof).sort_stats("tottime").print_stats(30)
