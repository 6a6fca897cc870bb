"""Fault injection on the hardware-in-the-loop setup over real DDS: how fast a fault turns into a hold (or an
e-stop) on the command topic, and that the e-stop stays latched until reset and an operator start.

The setup is the HIL one (config panda_maniskill.yaml, sim safety limits): the ManiSkill simulated arm node in its
own process, a camera driver in another (tests/ros_publisher.py), the deploy node with the safety filter. Faults
are injected where they happen on a robot, never inside the node: the camera and arm driver processes are frozen
(SIGSTOP) or killed (SIGKILL), the e-stop is pressed on its topic and service, and the policy the node runs is
wrapped (`FaultyPolicy`) so that it raises, hangs or returns NaN on demand. The wrapper still runs the bundle's
real network every call, but sends a steady sweep of joint 1 (RAMP_V), so that the moment the filter stops
following the policy is plain on the command topic: the first command whose step falls below half the sweep's.

Latency is "fault -> first hold command received": for a stale input the fault is the last message the driver
got out (the node must wait out its timeout before it may call the input stale, so the table also gives the time
beyond that timeout); for the policy the moment it raised or returned NaN, or, when it hangs, the tick that had
no action; for the e-stop the press. Goal: one control period + 10 ms (beyond the timeout for stale inputs).
The tests assert generous bounds (the machine is shared); the measured numbers are printed as a table.
`pytest -m slow tests/test_safety_faults.py -s` repeats every fault PIRL_FAULT_REPEATS (default 10) times.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from deploy_utils import free_domain_id, ros_context, ros_env, spin_in_thread, tiny_policy
from pirl_robot.bundle import export_bundle
from pirl_robot.deploy.taps import SafetyRecord
from pirl_robot.spec import CameraSpec

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "ros_ws" / "src" / "pirl_robot" / "config" / "panda_maniskill.yaml"
CMD_TOPIC = "/joint_trajectory_controller/joint_trajectory"
CAM = CameraSpec("wrist", 32, 32)
HZ = 20.0
T = 1.0 / HZ
RAMP_V = 0.3  # rad/s on panda_joint1: well inside every limit
GOAL_S = T + 0.010
BOUND_S = 0.5  # asserted (beyond the timeout): far above the goal, far below "never"
# The simulated arm runs in lockstep (step_on: command): it steps once per command and publishes that state at
# once, so its joint states are never late because its own process was starved (a CI neighbour), only when the
# fault freezes it; the deploy node ticks on its own 20 Hz timer, the clock the sweep and the latencies are
# measured on. The arm republishes its state after LOCKSTEP_KEEPALIVE_S without a command (holding, stopped).
pytestmark = pytest.mark.sim
LOCKSTEP_KEEPALIVE_S = T


class FaultyPolicy:
    """The bundle's policy with a fault switch: mode ok | raise | hang | nan. Actions: joint 1 sweeps at RAMP_V
    from where the arm was at the first call after `restart`, the other joints stay, the gripper stays open."""

    def __init__(self, policy):
        self.policy, self.spec, self.noise_shape = policy, policy.spec, policy.noise_shape
        self.mode, self.fault_time = "ok", None
        self.release = threading.Event()
        self.direction, self._anchor = 1.0, None

    def restart(self, q1: float) -> None:
        self.direction = -1.0 if q1 > 0 else 1.0  # sweep back towards the middle of joint 1's range
        self._anchor = None

    def infer(self, obs, noise=None):
        t = time.monotonic()
        self.policy.infer(obs, noise=noise)  # the real forward pass, every call
        if self.mode == "raise":
            self.fault_time = time.monotonic()
            raise RuntimeError("injected policy fault")
        if self.mode == "hang":
            self.fault_time = t
            self.release.wait(30)
        if self._anchor is None:
            self._anchor = (t, np.asarray(obs["state"][:7], dtype=np.float64))
        t0, q0 = self._anchor
        a = np.tile(np.r_[q0, 1.0], (self.spec.chunk_size, 1))
        a[:, 0] += self.direction * RAMP_V * (t - t0 + T * np.arange(self.spec.chunk_size))
        if self.mode == "nan":
            a[:, 0] = np.nan
            self.fault_time = time.monotonic()
        return {"actions": a.astype(np.float32)}


class Observer:
    """The operator's and the controller's view over DDS: commands, safety events, driver messages, services."""

    def __init__(self, ctx):
        from rclpy.node import Node
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Bool, String
        from std_srvs.srv import Trigger
        from trajectory_msgs.msg import JointTrajectory

        from pirl_robot.drivers.ros_msgs import qos

        self.node = n = Node("fault_observer", context=ctx)
        self.lock = threading.Lock()
        self.commands: list[tuple[float, np.ndarray]] = []
        self.events: list[tuple[float, dict]] = []
        self.last_joint_state = self.last_frame = 0.0
        n.create_subscription(JointTrajectory, CMD_TOPIC, self._on_cmd, qos("reliable", 50))
        n.create_subscription(String, "/deploy_node/safety_events", self._on_event, qos("reliable", 50))
        n.create_subscription(JointState, "/joint_states", lambda m: self._stamp("last_joint_state"), qos("sensor", 5))
        n.create_subscription(Image, "/wrist/image_raw", lambda m: self._stamp("last_frame"), qos("sensor", 5))
        self.estop_pub = n.create_publisher(Bool, "/estop", qos("reliable", 10))
        self.clients = {s: n.create_client(Trigger, f"/deploy_node/{s}") for s in ("start", "estop", "reset_estop")}

    def _on_cmd(self, msg):
        with self.lock:
            self.commands.append((time.monotonic(), np.array(msg.points[0].positions)))

    def _on_event(self, msg):
        with self.lock:
            self.events.append((time.monotonic(), json.loads(msg.data)))

    def _stamp(self, name):
        setattr(self, name, time.monotonic())

    def call(self, name: str, timeout: float = 10.0):
        from std_srvs.srv import Trigger

        c = self.clients[name]
        assert c.wait_for_service(timeout_sec=timeout), name
        fut = c.call_async(Trigger.Request())
        deadline = time.monotonic() + timeout
        while not fut.done():
            assert time.monotonic() < deadline, f"{name} did not answer"
            time.sleep(0.002)
        return fut.result()

    def snapshot(self):
        with self.lock:
            return list(self.commands), list(self.events)


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.005)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Hil:
    def __init__(self, obs: Observer, deploy, policy: FaultyPolicy, arm: subprocess.Popen, camera: subprocess.Popen):
        self.obs, self.deploy, self.policy, self.arm, self.camera = obs, deploy, policy, arm, camera
        self.results: list[dict] = []

    def steady(self, timeout: float = 10.0) -> None:
        """Executing, RUNNING, and the last commands sweep joint 1 at RAMP_V."""
        def ok():
            cmds, _ = self.obs.snapshot()
            if self.deploy.safety_mode != "running" or len(cmds) < 6:
                return False
            steps = np.diff([c[0] for _, c in cmds[-6:]]) * self.policy.direction
            return bool((np.abs(steps - RAMP_V * T) < 0.3 * RAMP_V * T).all())
        wait_for(ok, timeout, f"a steady sweep (mode {self.deploy.safety_mode})")

    def ready(self) -> None:
        """A steady sweep before the next fault (restarted if a hiccup held the arm meanwhile)."""
        try:
            self.steady(timeout=3.0)
        except AssertionError:
            self.start()

    def start(self, attempts: int = 4) -> None:
        """Operator start, repeated (as an operator would) when a real hiccup of the loaded machine, e.g. a joint
        state 200 ms late, holds the arm again before the sweep is steady."""
        for attempt in range(attempts):
            cmds, _ = self.obs.snapshot()
            self.policy.restart(cmds[-1][1][0] if cmds else 0.0)
            r = wait_for(lambda: (lambda r: r if r.success else None)(self.obs.call("start")), 10, "start accepted")
            assert r.success, r.message
            try:
                return self.steady()
            except AssertionError:
                if attempt == attempts - 1 or self.deploy.safety_mode not in ("hold", "stopping", "stopped"):
                    raise

    def hold_after(self, t0: float, timeout: float = 5.0) -> tuple[float, np.ndarray, float]:
        """(arrival, command, arrival of the previous command) of the first command after t0 that no longer
        follows the sweep (step below half of it, or back)."""
        def found():
            cmds, _ = self.obs.snapshot()
            for (ta, a), (tb, b) in zip(cmds, cmds[1:]):
                if tb > t0 and (b[0] - a[0]) * self.policy.direction < 0.5 * RAMP_V * T:
                    return tb, b, ta
            return None
        return wait_for(found, timeout, "a hold on the command topic")

    def events_since(self, t0: float) -> list[dict]:
        return [e for t, e in self.obs.snapshot()[1] if t >= t0]

    def record(self, fault: str, latency: float, timeout: float = 0.0, **extra) -> dict:
        r = {"fault": fault, "latency_s": latency, "timeout_s": timeout, "beyond_s": latency - timeout, **extra}
        self.results.append(r)
        return r


def sim_arm_process(tmp: Path, env: dict) -> subprocess.Popen:
    from pirl_robot.deploy.plan import NodePlan
    from pirl_robot.deploy.runner import node_command
    from pirl_robot.process import die_with_parent_term

    overrides = tmp / "sim_arm_overrides.yaml"
    overrides.write_text(yaml.safe_dump({"sim_arm_node": {"ros__parameters": {
        "max_episode_steps": 10**6, "step_on": "command", "lockstep_keepalive_s": LOCKSTEP_KEEPALIVE_S}}}))
    cmd = node_command(NodePlan("sim_arm_node", "sim_arm_node", str(CONFIG)), str(overrides), "error")
    return subprocess.Popen(cmd, env=env, cwd=ROOT, preexec_fn=die_with_parent_term)


@pytest.fixture(scope="module")
def hil(tmp_path_factory):
    from rclpy.lifecycle import TransitionCallbackReturn

    from pirl_robot.deploy.node import DeployNode
    from pirl_robot.deploy.params import ros_parameters
    from pirl_robot.deploy.runner import load_node_params
    from sim.maniskill.config import TaskConfig
    from sim.maniskill.env import task_spec

    tmp = tmp_path_factory.mktemp("faults")
    spec = dataclasses.replace(task_spec(TaskConfig(task="PushCube-v1")), cameras=(CAM,))
    tiny_policy(spec).save(tmp / "ckpt")
    bundle = export_bundle(tmp / "ckpt", tmp / "bundle")
    domain = free_domain_id()
    env = {**ros_env(domain), "OMP_NUM_THREADS": "1"}
    camera = subprocess.Popen([sys.executable, str(ROOT / "tests" / "ros_publisher.py"),
                               json.dumps({"image_topic": "/wrist/image_raw", "image": [32, 32, 3], "rate_hz": 30.0})],
                              env=env)
    arm = sim_arm_process(tmp, env)
    ctx = ros_context(domain)
    params = {**load_node_params(str(CONFIG), "deploy_node"), "bundle": str(bundle), "seed": 0,
              "cameras": ["wrist=32x32=topic:/wrist/image_raw"], "tick_source": "timer"}
    deploy = DeployNode("deploy_node", context=ctx, parameter_overrides=ros_parameters(params))
    observer = Observer(ctx)
    taps: list[SafetyRecord] = []
    deploy.taps.append(lambda rec: taps.append(rec) if isinstance(rec, SafetyRecord) else None)
    stop = spin_in_thread([deploy, observer.node], ctx)
    released = threading.Event()
    try:
        assert deploy.trigger_configure() == TransitionCallbackReturn.SUCCESS
        worker = deploy.deployment.loop.worker
        policy = FaultyPolicy(worker.policy)
        policy.release = released
        worker.policy = policy  # the node's inference thread now calls the wrapper
        assert deploy.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert "pirl_robot.safety" in deploy.diagnostics()["safety"]
        h = Hil(observer, deploy, policy, arm, camera)
        h.taps = taps
        wait_for(lambda: observer.last_joint_state and observer.last_frame, 60, "the drivers' first messages")
        h.start()
        yield h
    finally:
        released.set()  # a hung policy call must not keep the inference thread
        stop()
        for p in (camera, arm):
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.terminate()
                p.wait(timeout=20)


def stale_input(h: Hil, fault: str, proc: subprocess.Popen, last: str, timeout: float, causes: set[str]) -> dict:
    h.ready()
    os.kill(proc.pid, signal.SIGSTOP)
    time.sleep(0.05)  # messages already on their way still arrive
    t_last = getattr(h.obs, last)
    t_hold, _, _ = h.hold_after(t_last)
    got = hold_causes(h, t_last, causes)
    assert got & causes, f"{fault}: hold events {got}, expected one of {causes}"
    os.kill(proc.pid, signal.SIGCONT)
    return h.record(fault, t_hold - t_last, timeout, cause="/".join(sorted(got & causes)))


def hold_causes(h: Hil, t0: float, causes: set[str]) -> set[str]:
    """Causes of the hold events since t0 (they follow the hold command on their own topic: wait a little)."""
    def got():
        return {e["cause"] for e in h.events_since(t0) if e["mode"] == "hold"}
    try:
        wait_for(lambda: got() & causes, 2.0, f"a hold event with a cause in {causes}")
    except AssertionError:
        pass
    return got()


def node_timeout(h: Hil, param: str, watchdog: str) -> float:
    return min(h.deploy.values[param] / 1e3, getattr(h.deploy.deployment.safety.sup.cfg.watchdog, watchdog))


def fault_camera_stops(h: Hil) -> dict:
    r = stale_input(h, "camera stops (driver frozen)", h.camera, "last_frame",
                    node_timeout(h, "max_image_age_ms", "camera_timeout_s"), {"input_fault", "camera_stale"})
    h.start()
    return r


def fault_joint_states_stop(h: Hil) -> dict:
    r = stale_input(h, "joint states stop (arm driver frozen)", h.arm, "last_joint_state",
                    node_timeout(h, "max_state_age_ms", "joint_state_timeout_s"), {"input_fault", "joint_state_stale"})
    h.start()
    return r


def policy_fault(h: Hil, mode: str, fault: str, causes: set[str]) -> dict:
    h.ready()
    h.policy.fault_time = None
    h.policy.mode = mode
    t_fault = wait_for(lambda: h.policy.fault_time, 5, f"the policy to {mode}")
    t_hold, _, t_prev = h.hold_after(t_fault)
    if mode == "hang":  # the fault shows when a tick has no action: one period after the last one sent
        latency, extra = t_hold - (t_prev + T), {"hang_to_hold_s": t_hold - t_fault}
    else:
        latency, extra = t_hold - t_fault, {}
    got = hold_causes(h, t_fault, causes)
    assert got & causes, f"{fault}: hold events {got}, expected one of {causes}"
    h.policy.mode = "ok"
    h.policy.release.set()
    time.sleep(0.05)
    h.policy.release.clear()
    r = h.record(fault, latency, cause="/".join(sorted(got & causes)), **extra)
    h.start()
    return r


# a failed or refused chunk shows on the tick that needed it (no_command) or on the next (the policy's error)
POLICY_CAUSES = {"input_fault", "policy_error", "no_command"}


def fault_policy_raises(h: Hil) -> dict:
    return policy_fault(h, "raise", "policy raises", POLICY_CAUSES)


def fault_policy_hangs(h: Hil) -> dict:
    return policy_fault(h, "hang", "policy hangs", {"no_command", "policy_deadline"})


def fault_nan_actions(h: Hil) -> dict:
    return policy_fault(h, "nan", "NaN actions", POLICY_CAUSES)


def estop(h: Hil, how: str) -> dict:
    from std_msgs.msg import Bool

    h.ready()
    t_press = time.monotonic()
    if how == "topic":
        h.obs.estop_pub.publish(Bool(data=True))
    else:
        threading.Thread(target=h.obs.call, args=("estop",), daemon=True).start()
    event = wait_for(lambda: next((e for e in h.events_since(t_press) if e["cause"] == "estop"), None), 2,
                     "the e-stop event")
    hold = h.deploy.deployment.command_map(np.array(event["applied"]))  # the e-stop's hold, in command units

    def hold_arrived():
        cmds, _ = h.obs.snapshot()
        return next((t for t, c in cmds if t > t_press and np.allclose(c, hold, rtol=0, atol=1e-12)), None)
    t_hold = wait_for(hold_arrived, 2, "the e-stop's hold on the command topic")
    r = h.record(f"e-stop pressed ({how})", t_hold - t_press)
    # latched: nothing moves while the inputs stay fresh and the operator tries to start, until reset + start
    time.sleep(0.3)
    refused = h.obs.call("start")
    assert not refused.success and "e-stop" in refused.message
    time.sleep(0.3)
    assert h.obs.call("reset_estop").success
    time.sleep(0.4)
    cmds, _ = h.obs.snapshot()
    after = [c for t, c in cmds if t > t_hold]
    assert after and all(np.allclose(c, hold, rtol=0, atol=1e-12) for c in after), "a command moved after the e-stop"
    assert h.deploy.safety_mode in ("estop", "stopped")
    h.start()  # reset + operator start: motion again
    return r


def fault_estop_topic(h: Hil) -> dict:
    return estop(h, "topic")


def fault_estop_service(h: Hil) -> dict:
    return estop(h, "service")


def fault_driver_killed(h: Hil) -> dict:
    """Last: the arm process is gone for good. The node holds on the stale joint states, then stops."""
    h.ready()
    h.arm.send_signal(signal.SIGKILL)
    h.arm.wait(timeout=10)
    time.sleep(0.05)
    t_last = h.obs.last_joint_state
    t_hold, _, _ = h.hold_after(t_last)
    causes = {"input_fault", "joint_state_stale", "driver_disconnected"}
    got = hold_causes(h, t_last, causes) & causes
    assert got, f"hold causes {got}"
    stop_after = h.deploy.deployment.safety.sup.cfg.watchdog.stop_after_s
    wait_for(lambda: any(e["cause"] == "stopped" for e in h.events_since(t_last)), stop_after + 3,
             "the controlled stop after stop_after_s")
    return h.record("driver disconnect (arm process killed)", t_hold - t_last,
                    node_timeout(h, "max_state_age_ms", "joint_state_timeout_s"), cause="/".join(sorted(got)))


FAULTS = [fault_camera_stops, fault_joint_states_stop, fault_policy_raises, fault_policy_hangs, fault_nan_actions,
          fault_estop_topic, fault_estop_service]


def print_table(results: list[dict], capsys, title: str) -> None:
    by: dict[str, list[dict]] = {}
    for r in results:
        by.setdefault(r["fault"], []).append(r)
    with capsys.disabled():
        print(f"\n{title} (control period {T * 1e3:.0f} ms; goal: hold within {GOAL_S * 1e3:.0f} ms beyond the "
              f"input's timeout)")
        print(f"{'fault':<40}{'n':>3}{'timeout ms':>12}{'fault->hold ms':>16}{'beyond ms':>11}{'max beyond':>12}  "
              f"goal  cause")
        for fault, rs in by.items():
            lat = np.array([r["latency_s"] for r in rs]) * 1e3
            beyond = np.array([r["beyond_s"] for r in rs]) * 1e3
            print(f"{fault:<40}{len(rs):>3}{rs[0]['timeout_s'] * 1e3:>12.0f}{np.median(lat):>16.1f}"
                  f"{np.median(beyond):>11.1f}{beyond.max():>12.1f}  {'met' if beyond.max() <= GOAL_S * 1e3 else 'MISSED'}"
                  f"  {rs[0].get('cause', 'estop')}")


@pytest.mark.slow
def test_faults_repeated(hil, capsys):
    n = int(os.environ.get("PIRL_FAULT_REPEATS", "10"))
    results = len(hil.results)
    for _ in range(n):
        for fault in FAULTS:
            r = fault(hil)
            assert r["beyond_s"] <= BOUND_S, r
    print_table(hil.results[results:], capsys, f"fault injection over DDS, {n} of each")


@pytest.mark.parametrize("fault", FAULTS + [fault_driver_killed], ids=lambda f: f.__name__[6:])
def test_fault_holds_the_arm(hil, fault):
    r = fault(hil)
    # A hold can precede a fault by up to a tick when a starved CPU delays the joint states (the watchdog holds
    # first, correctly); anything earlier means the measurement did not see this fault.
    assert -T <= r["latency_s"] and r["beyond_s"] <= BOUND_S, r


def test_events_reach_the_topic_and_the_taps(hil, capsys):
    """Every intervention above went out on ~/safety_events as a JSON event dict and to node.taps alike."""
    t_cut = time.monotonic()
    time.sleep(0.3)
    _, events = hil.obs.snapshot()
    keys = {"time", "cause", "mode", "detail", "raw", "applied"}
    assert events and all(keys <= set(e) for _, e in events)
    published = sorted((e["time"], e["cause"]) for _, e in events if e["time"] < t_cut)
    tapped = sorted((e["time"], e["cause"]) for rec in hil.taps for e in rec.events if e["time"] < t_cut)
    assert published == tapped
    causes = {c for _, c in published}
    faults = {r["fault"] for r in hil.results}
    expected = {"start", "start_done"} | {c for r in hil.results for c in r.get("cause", "").split("/") if c}
    if any(f.startswith("e-stop") for f in faults):
        expected |= {"estop", "estop_reset"}
    if any(f.startswith("driver") for f in faults):
        expected |= {"hold_timeout", "stopped"}
    assert expected <= causes, expected - causes
    print_table(hil.results, capsys, "fault injection over DDS")
