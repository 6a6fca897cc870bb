"""The e-stop key of `pirl deploy`, pressed on a real terminal (a pseudo-terminal) while the real runner drives the
simulated arm through the safety filter: 'e' latches the e-stop and the commands freeze at once, start is refused
while latched, 'r' resets but nothing moves until 's' starts again, and space is an e-stop too."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import signal
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from deploy_utils import free_domain_id, ros_context, ros_env, spin_in_thread, tiny_policy
from pirl_robot.bundle import export_bundle
from pirl_robot.transforms import PolicyTransforms, Stats

ROOT = Path(__file__).resolve().parents[1]
# Real-time over a pty and DDS: flaky on a starved CPU, so it runs with -m slow on an idle machine.
pytestmark = [pytest.mark.slow, pytest.mark.sim]


def gentle_bundle(tmp: Path) -> Path:
    """A small real policy whose actions stay near where the arm is (its arm actions are relative to the measured
    joints: small deltas), so the filter lets it move."""
    from sim.maniskill.config import TaskConfig
    from sim.maniskill.env import task_spec

    spec = task_spec(TaskConfig(task="PushCube-v1"))
    assert spec.delta_action_mask[:7] == (True,) * 7
    policy = tiny_policy(spec)
    s = spec.state_dim
    policy.transforms = PolicyTransforms(spec, Stats(torch.zeros(s), torch.ones(s)),
                                         Stats(torch.tensor([0.0] * 7 + [1.0]), torch.full((8,), 0.03)))
    policy.save(tmp / "ckpt")
    return export_bundle(tmp / "ckpt", tmp / "bundle")


class Terminal:
    """The runner on a pseudo-terminal: keys in, its output collected."""

    def __init__(self, cmd: list[str], env: dict):
        self.master, slave = pty.openpty()

        def controlling_terminal():  # as a shell does: the pty is the runner's terminal, Ctrl-C included
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ROOT,
                                     preexec_fn=controlling_terminal)
        os.close(slave)
        self.text = ""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            if not data:
                return
            self.text += data.decode(errors="replace")

    def press(self, key: str) -> None:
        os.write(self.master, key.encode())

    def wait_text(self, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.text:
            assert self.proc.poll() is None, f"runner exited ({self.proc.returncode}):\n{self.text[-3000:]}"
            assert time.monotonic() < deadline, f"no {text!r} on the terminal:\n{self.text[-3000:]}"
            time.sleep(0.01)


def test_estop_key_latches_and_r_resets(tmp_path):
    from rclpy.node import Node
    from std_msgs.msg import String
    from trajectory_msgs.msg import JointTrajectory

    bundle = gentle_bundle(tmp_path)
    domain = free_domain_id()
    term = Terminal([sys.executable, "-m", "pirl_robot.cli", "deploy", "--bundle", str(bundle), "--start",
                     "--log-level", "warn"], {**ros_env(domain), "OMP_NUM_THREADS": "1"})
    ctx = ros_context(domain)
    node = Node("estop_key_watcher", context=ctx)
    cmds, events, lock = [], [], threading.Lock()

    def on_cmd(m):
        with lock:
            cmds.append((time.monotonic(), np.array(m.points[0].positions)))

    node.create_subscription(JointTrajectory, "/joint_trajectory_controller/joint_trajectory", on_cmd, 50)
    node.create_subscription(String, "/deploy_node/safety_events",
                             lambda m: events.append((time.monotonic(), json.loads(m.data))), 50)
    stop = spin_in_thread([node], ctx)

    def since(t):
        with lock:
            return [c for tc, c in cmds if tc > t]

    def wait(pred, what, timeout=20.0):
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{term.text[-2000:]}"
            time.sleep(0.01)

    def moving(t):
        c = since(t)
        return len(c) >= 5 and np.abs(np.diff(np.array(c)[:, :7], axis=0)).max() > 1e-4

    try:
        term.wait_text("keys: e/space e-stop", 90)
        assert not termios.tcgetattr(term.master)[3] & termios.ICANON  # one key at a time, no Enter needed
        t0 = time.monotonic()
        wait(lambda: moving(t0), "the policy moving the arm", 60)

        t_press = time.monotonic()
        term.press("e")
        term.wait_text("estop: e-stop latched")
        wait(lambda: any(e["cause"] == "estop" for t, e in events if t > t_press), "the e-stop event")
        time.sleep(0.5)
        # From the e-stop event on, every command is the hold (the node applies the e-stop and publishes the
        # event under the lock that also guards step + send). The key press is no anchor: on a busy machine the
        # service call takes longer than a tick. 50 ms covers a command already in flight on the other topic.
        t_event = min(t for t, e in events if t > t_press and e["cause"] == "estop")
        frozen = since(t_event + 0.05)
        assert frozen and all(np.array_equal(c, frozen[0]) for c in frozen), "commands changed after the e-stop"

        term.press("s")  # latched: start is refused
        term.wait_text("start FAILED: e-stop is latched")
        term.press("r")
        term.wait_text("reset_estop: e-stop reset")
        wait(lambda: any(e["cause"] == "estop_reset" for t, e in events if t > t_press), "the reset event")
        t_reset = time.monotonic()
        time.sleep(0.5)
        assert all(np.array_equal(c, frozen[0]) for c in since(t_reset)), "moved after reset, before start"

        term.press("s")
        term.wait_text("start: executing episode 2")
        t_start = time.monotonic()
        wait(lambda: moving(t_start), "motion after the operator's start")

        t_space = time.monotonic()
        term.press(" ")
        wait(lambda: any(e["cause"] == "estop" for t, e in events if t > t_space), "the space-bar e-stop")
        term.press("\x03")  # Ctrl-C: the runner shuts down and gives the terminal back
        assert term.proc.wait(timeout=30) == 0, term.text[-2000:]
        assert termios.tcgetattr(term.master)[3] & termios.ICANON, "terminal left in key mode"
    finally:
        stop()
        if term.proc.poll() is None:
            os.killpg(term.proc.pid, signal.SIGTERM)
            term.proc.wait(timeout=30)
        os.close(term.master)
