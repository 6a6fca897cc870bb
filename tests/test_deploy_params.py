"""Deploy parameters: one table, declared with descriptions, every bad value refused with the reason (at start-up
and when set over ROS), and the robot side built from them (spec, state sources, command mapping)."""

import time

import numpy as np
import pytest

from deploy_utils import free_domain_id, ros_context, spin_in_thread
from pirl_robot.deploy import params as P
from pirl_robot.deploy.robot import CommandMap, StateAssembler, StaleInputError, parse_camera_entry, robot_spec
from pirl_robot.drivers.arms.base import JointSample


@pytest.mark.parametrize("name, value, message", [
    ("control_hz", -5.0, "must be > 0"),
    ("control_hz", "fast", "must be float"),
    ("command_interface", "velocity", "must be one of"),
    ("tick_source", "clock", "must be one of"),
    ("cameras", ["wrist=64x64"], "name=HxW=source"),
    ("cameras", ["wrist=64x0=topic:/w"], "size like"),
    ("cameras", ["wrist=64x64=firewire:0"], "kind in"),
    ("max_image_age_ms", 0.0, "must be > 0"),
    ("blend_ticks", -1, "must be >= 0"),
    ("seed", -2, "must be >= -1"),
    ("autostart", 1, "must be bool"),
    ("state_names", ["a", 3], "list of str"),
])
def test_table_rejects_bad_values(name, value, message):
    errors = P.validate({name: value})
    assert errors and message in errors[0] and errors[0].startswith(name)


def test_table_cross_checks_command_mapping():
    ok = {"action_names": ["a", "b"], "command_scale": [1.0, 2.0]}
    assert P.validate(ok) == []
    errors = P.validate({**ok, "command_scale": [1.0, 2.0, 3.0]})
    assert errors and "0 or 2 entries" in errors[0]
    assert P.validate({"command_offset": [float("nan")], "action_names": ["a"]})[0].endswith("must be finite")
    assert "unknown parameter 'contol_hz'" in P.validate({"contol_hz": 20.0})


def test_every_param_has_description_and_valid_default():
    assert P.validate(P.defaults()) == []
    assert all(len(p.description) > 10 for p in P.PARAMS)
    assert len({p.name for p in P.PARAMS}) == len(P.PARAMS)


def test_node_declares_descriptors_and_refuses_bad_values_over_ros():
    from rcl_interfaces.srv import SetParameters
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    from pirl_robot.deploy.node import DeployNode

    ctx = ros_context(free_domain_id())
    with pytest.raises(ValueError, match="command_interface: must be one of"):
        DeployNode("bad", context=ctx, parameter_overrides=[Parameter("command_interface", value="torque")])
    node = DeployNode("param_node", context=ctx)
    other = Node("tuner", context=ctx)
    stop = spin_in_thread([node, other], ctx)
    try:
        d = node.describe_parameter("max_wait_ms")
        assert "wait" in d.description
        client = other.create_client(SetParameters, "/param_node/set_parameters")
        assert client.wait_for_service(timeout_sec=10)

        def set_over_ros(name, value):
            fut = client.call_async(SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()]))
            t = time.monotonic()
            while not fut.done() and time.monotonic() - t < 10:
                time.sleep(0.01)
            return fut.result().results[0]

        bad = set_over_ros("control_hz", -1.0)
        assert not bad.successful and "control_hz: must be > 0" in bad.reason
        assert node.get_parameter("control_hz").value == 20.0
        assert set_over_ros("control_hz", 50.0).successful and node.values["control_hz"] == 50.0
        bad = set_over_ros("cameras", ["nocolon"])
        assert not bad.successful and "name=HxW=source" in bad.reason
    finally:
        stop()


def test_robot_spec_and_state_sources():
    p = {**P.defaults(), "state_names": ["qpos.j1", "qvel.j1", "cube.x"], "action_names": ["j1"],
         "action_state_index": [0], "cameras": ["wrist=48x64=opencv:0"], "robot": "arm", "control_hz": 30.0}
    spec = robot_spec(p)
    assert spec.cameras[0].height == 48 and spec.cameras[0].width == 64 and spec.control_hz == 30.0
    asm = StateAssembler(spec.state_names)
    js = JointSample(("j0", "j1"), np.array([5.0, 1.5]), np.array([0.0, -2.0]), time.monotonic())
    np.testing.assert_array_equal(asm.build(js, {"cube.x": 0.25}), np.array([1.5, -2.0, 0.25], np.float32))
    with pytest.raises(StaleInputError, match="cube.x"):
        asm.build(js, {})
    with pytest.raises(StaleInputError, match="not finite"):
        asm.build(js, {"cube.x": float("nan")})
    with pytest.raises(StaleInputError, match="'j1'"):
        asm.build(JointSample(("j0",), np.array([0.0]), None, 0.0), {"cube.x": 0.0})


def test_command_map_units():
    m = CommandMap.from_params({"action_names": ["j", "gripper"], "command_names": ["j", "finger"],
                                "command_scale": [1.0, 0.025], "command_offset": [0.0, 0.015]})
    np.testing.assert_allclose(m(np.array([0.3, 1.0])), [0.3, 0.04])  # gripper open -> finger 4 cm
    np.testing.assert_allclose(m(np.array([0.3, -1.0])), [0.3, -0.01])
    np.testing.assert_allclose(m.inverse(m(np.array([0.1, 0.2]))), [0.1, 0.2])
    assert parse_camera_entry("a=1x2=topic:/x=y").source == "topic:/x=y"
