"""The deploy node over real DDS on loopback, fed by a separate process that publishes plain sensor_msgs/JointState
and sensor_msgs/Image (as any ros2_control arm and camera driver would), commanding through standard
trajectory_msgs/JointTrajectory or std_msgs/Float64MultiArray. The command must be exactly the bundle's first
action for that observation and noise seed."""

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from deploy_utils import PANDA_JOINTS, free_domain_id, panda_spec, ros_context, ros_env, save_tiny_checkpoint, \
    spin_in_thread
from pirl_robot.bundle import export_bundle, load_bundle
from pirl_robot.spec import CameraSpec
from ros_publisher import pattern_image

JOINTS = {**{j: 0.1 * i for i, j in enumerate(PANDA_JOINTS)}, "panda_finger_joint1": 0.03,
          "panda_finger_joint2": 0.03}
CAM = CameraSpec("wrist", 32, 32)
SPEC = panda_spec(cameras=(CAM,), control_hz=50.0, state_names=tuple(f"qpos.{j}" for j in JOINTS))


def node_params(bundle, **kw):
    p = dict(bundle=str(bundle), robot="panda", control_hz=50.0, state_names=list(SPEC.state_names),
             action_names=list(SPEC.action_names), action_state_index=list(SPEC.action_state_index),
             cameras=["wrist=32x32=topic:/wrist/image_raw"], command_topic="/jtc/joint_trajectory", seed=7,
             max_state_age_ms=500.0, max_image_age_ms=500.0, safety_config="unfiltered")
    p.update(kw)
    return p


def make_deploy_node(ctx, params, name="deploy_node"):
    from pirl_robot.deploy.node import DeployNode
    from pirl_robot.deploy.params import ros_parameters

    return DeployNode(name, context=ctx, parameter_overrides=ros_parameters(params))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    d = tmp_path_factory.mktemp("node")
    return export_bundle(save_tiny_checkpoint(d / "ckpt", SPEC), d / "bundle")


@pytest.fixture(scope="module")
def domain():
    return free_domain_id()


@pytest.fixture(scope="module")
def third_party_driver(domain):
    cfg = {"joints": JOINTS, "image_topic": "/wrist/image_raw", "image": [32, 32, 3], "rate_hz": 50.0}
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("ros_publisher.py")), json.dumps(cfg)],
                            env=ros_env(domain))
    yield proc
    proc.terminate()
    proc.wait(timeout=10)


def expected_first_chunk(bundle, seed, episode=1):
    policy = load_bundle(bundle)
    obs = {"state": np.array(list(JOINTS.values()), dtype=np.float32), "images": {"wrist": pattern_image(32, 32, 3)}}
    noise = np.random.default_rng(seed + episode).standard_normal((SPEC.chunk_size, SPEC.action_dim))
    return policy.infer(obs, noise=noise.astype(np.float32))["actions"]


def assert_is_chunk_row(values, chunk):
    """The first command is the chunk's action for the tick it is sent at: row 0, or a later row when the
    first inference took longer than max_wait_ms (time-aligned chunks skip actions whose tick has passed)."""
    err = np.abs(chunk - np.asarray(values)[None]).max(axis=1)
    assert err.min() < 1e-6, f"command {values} is no row of the expected chunk (closest off by {err.min()})"


@pytest.mark.parametrize("interface", ["trajectory", "position"])
def test_node_commands_from_plain_ros_inputs(bundle, domain, third_party_driver, interface):
    from rclpy.lifecycle import TransitionCallbackReturn
    from std_msgs.msg import Float64MultiArray
    from trajectory_msgs.msg import JointTrajectory

    ctx = ros_context(domain)
    deploy = make_deploy_node(ctx, node_params(bundle, command_interface=interface, autostart=True))
    from rclpy.node import Node

    listener = Node("controller_stand_in", context=ctx)
    got, first = [], threading.Event()

    def on_cmd(msg):
        got.append(msg)
        first.set()

    mtype = JointTrajectory if interface == "trajectory" else Float64MultiArray
    listener.create_subscription(mtype, "/jtc/joint_trajectory", on_cmd, 10)
    stop = spin_in_thread([deploy, listener], ctx)
    try:
        assert deploy.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert deploy.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert first.wait(20), f"no command published; diagnostics: {deploy.diagnostics()}"
        time.sleep(0.3)
        diag = deploy.diagnostics()
    finally:
        stop()
    msg = got[0]
    chunk = expected_first_chunk(bundle, seed=7)
    if interface == "trajectory":
        assert list(msg.joint_names) == list(SPEC.action_names) and len(msg.points) == 1
        assert_is_chunk_row(msg.points[0].positions, chunk)
        tfs = msg.points[0].time_from_start
        assert tfs.sec == 0 and tfs.nanosec == 20_000_000  # one control period at 50 Hz
    else:
        assert_is_chunk_row(msg.data, chunk)
    assert len(got) >= 5 and diag["chunks"] >= 1 and diag["ticks"] >= 5
    assert np.isfinite(diag["overhead_p50_ms"]) and np.isfinite(diag["inference_p50_ms"])


# Known flake, kept out of the default suite: under rclpy's Python MultiThreadedExecutor the cleanup transition
# sometimes gets no answer within 15 s (1 of 3 runs on an idle 2-core machine, 2026-11-27; seen before the issue 17
# split too). The shipped configs run the node on the events executor, whose variant stays in the default suite.
@pytest.mark.parametrize("executor", [pytest.param("multi_threaded", marks=pytest.mark.slow), "events"])
def test_start_stop_services_and_lifecycle_over_ros(bundle, domain, third_party_driver, executor):
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState
    from rclpy.node import Node
    from std_srvs.srv import Trigger
    from trajectory_msgs.msg import JointTrajectory

    from rclpy.parameter import Parameter

    ctx = ros_context(domain)
    deploy = make_deploy_node(ctx, node_params(bundle, control_hz=30.0, executor=executor), name="lc_deploy")
    client = Node("operator", context=ctx)
    cmds = []
    client.create_subscription(JointTrajectory, "/jtc/joint_trajectory", lambda m: cmds.append(time.monotonic()), 10)
    stop = spin_in_thread([deploy, client], ctx)

    def call(srv, srv_name, req):
        c = client.create_client(srv, srv_name)
        assert c.wait_for_service(timeout_sec=10), srv_name
        fut = c.call_async(req)
        t = time.monotonic()
        while not fut.done() and time.monotonic() - t < 15:
            time.sleep(0.01)
        assert fut.done(), f"{srv_name} did not answer"
        return fut.result()

    def transition(tid):
        return call(ChangeState, "/lc_deploy/change_state", ChangeState.Request(transition=Transition(id=tid)))

    def state():
        return call(GetState, "/lc_deploy/get_state", GetState.Request()).current_state.label

    try:
        assert state() == "unconfigured"
        # control_hz 30 does not match the bundle's 50 Hz: configure is refused and the node stays unconfigured
        assert not transition(Transition.TRANSITION_CONFIGURE).success
        assert state() == "unconfigured"
        assert deploy.set_parameters([Parameter("control_hz", value=50.0)])[0].successful
        assert transition(Transition.TRANSITION_CONFIGURE).success and state() == "inactive"
        # fixed parameters cannot change while configured; dynamic ones can
        assert not deploy.set_parameters([Parameter("control_hz", value=20.0)])[0].successful
        assert deploy.set_parameters([Parameter("blend_ticks", value=2)])[0].successful
        r = call(Trigger, "/lc_deploy/start", Trigger.Request())
        assert not r.success and "not active" in r.message
        assert transition(Transition.TRANSITION_ACTIVATE).success and state() == "active"
        time.sleep(0.3)
        assert not cmds, "holding (not started) must publish no command"
        assert call(Trigger, "/lc_deploy/start", Trigger.Request()).success
        t0 = time.monotonic()
        while len(cmds) < 10 and time.monotonic() - t0 < 10:
            time.sleep(0.01)
        assert len(cmds) >= 10
        assert call(Trigger, "/lc_deploy/stop", Trigger.Request()).success
        time.sleep(0.2)
        n = len(cmds)
        time.sleep(0.4)
        assert len(cmds) == n, "commands kept coming after stop"
        assert transition(Transition.TRANSITION_DEACTIVATE).success and state() == "inactive"
        assert transition(Transition.TRANSITION_CLEANUP).success and state() == "unconfigured"
        assert deploy.arm is None and deploy.bundle is None
    finally:
        stop()


def test_stale_inputs_hold_instead_of_commanding(bundle, domain):
    """No driver publishing on this topic: the node stays active, counts stale inputs and sends nothing."""
    ctx = ros_context(domain)
    deploy = make_deploy_node(ctx, node_params(bundle, joint_states_topic="/nobody/joint_states", autostart=True,
                                               command_topic="/stale/cmd"), name="stale_deploy")
    stop = spin_in_thread([deploy], ctx)
    try:
        deploy.trigger_configure()
        deploy.trigger_activate()
        time.sleep(0.5)
        assert deploy.diagnostics()["executing"]
    finally:
        stop()
    d = deploy.diagnostics()
    assert d["ticks"] >= 10 and d["stale_inputs"] == d["ticks"] and d["chunks"] == 0


HOME = [0.0, 0.4, 0.0, -1.9, 0.0, 2.3, 0.8, 0.04, 0.04]


def test_safety_filter_on_the_command_path_and_estop(tmp_path, domain):
    """With configs/robot/panda.yaml the node's commands obey the per-tick limits even though the policy jumps,
    the e-stop service latches (start refused) until reset."""
    from deploy_utils import PANDA_STATE_JOINTS as names
    from deploy_utils import panda_home_policy

    policy = panda_home_policy(HOME, gripper=1.0, action_std=0.3)
    spec = policy.spec
    policy.save(tmp_path / "ckpt")
    bundle = export_bundle(tmp_path / "ckpt", tmp_path / "bundle")
    cfg = {"joints": dict(zip(names, HOME)), "joint_states_topic": "/safe/joint_states", "rate_hz": 50.0}
    driver = subprocess.Popen([sys.executable, str(Path(__file__).with_name("ros_publisher.py")), json.dumps(cfg)],
                              env=ros_env(domain))
    try:
        run_safety_scenario(tmp_path, domain, bundle, spec)
    finally:
        driver.terminate()
        driver.wait(timeout=10)


def run_safety_scenario(tmp_path, domain, bundle, spec):  # noqa: C901 (one scenario, read top to bottom)
    from std_msgs.msg import String
    from std_srvs.srv import Trigger
    from trajectory_msgs.msg import JointTrajectory

    from pirl_robot.safety import load_safety_config

    ctx = ros_context(domain)
    params = node_params(bundle, control_hz=20.0, cameras=[], state_names=list(spec.state_names),
                         action_names=list(spec.action_names), action_state_index=list(spec.action_state_index),
                         joint_states_topic="/safe/joint_states", command_topic="/safe/cmd",
                         command_names=list(PANDA_JOINTS) + ["panda_finger_joint1"],
                         command_scale=[1.0] * 7 + [0.025], command_offset=[0.0] * 7 + [0.015],
                         safety_config="configs/robot/panda.yaml", max_state_age_ms=300.0)
    deploy = make_deploy_node(ctx, params, name="safe_deploy")
    from rclpy.node import Node

    operator = Node("safety_operator", context=ctx)
    cmds, events = [], []
    operator.create_subscription(JointTrajectory, "/safe/cmd", lambda m: cmds.append(np.array(m.points[0].positions)),
                                 50)
    operator.create_subscription(String, "/safe_deploy/safety_events", lambda m: events.append(json.loads(m.data)), 50)
    stop = spin_in_thread([deploy, operator], ctx)

    def call(name):
        c = operator.create_client(Trigger, f"/safe_deploy/{name}")
        assert c.wait_for_service(timeout_sec=10)
        fut = c.call_async(Trigger.Request())
        t = time.monotonic()
        while not fut.done() and time.monotonic() - t < 10:
            time.sleep(0.01)
        return fut.result()

    try:
        deploy.trigger_configure()
        deploy.trigger_activate()
        assert "pirl_robot.safety" in deploy.diagnostics()["safety"]
        time.sleep(0.5)
        assert call("start").success
        t = time.monotonic()
        while len(cmds) < 30 and time.monotonic() - t < 15:
            time.sleep(0.02)
        moving = list(cmds)
        assert call("estop").success
        time.sleep(0.3)
        r = call("start")
        assert not r.success and "e-stop" in r.message
        n = len(cmds)
        time.sleep(0.3)
        held = cmds[n - 1:]
        assert call("reset_estop").success and call("start").success
    finally:
        stop()
    assert len(moving) >= 30, f"only {len(moving)} commands; diagnostics {deploy.diagnostics()}"
    limits = load_safety_config("configs/robot/panda.yaml").vectors()
    arm = np.array(moving)[:, :7]
    steps = np.abs(np.diff(np.vstack([HOME[:7], arm]), axis=0))
    assert (steps <= limits["max_step"][:7] + 1e-9).all(), steps.max(axis=0)
    assert (arm >= limits["soft_lo"][:7] - 1e-9).all() and (arm <= limits["soft_hi"][:7] + 1e-9).all()
    assert np.abs(arm - HOME[:7]).max() > 0.01, "the policy never moved the arm"
    assert all(np.allclose(h, held[0]) for h in held), "commands kept changing after the e-stop"
    assert any(e["cause"] == "estop" for e in events)
