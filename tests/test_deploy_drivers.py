"""Camera and arm drivers: image conversions, a real OpenCV capture from a video file, RealSense's answer with no
device, the ROS image topic camera over DDS, lerobot's real SO-101 follower class on a fake motor bus (the only
absent hardware), and the simulated Panda's unit conversions."""

import contextlib
import math
import time

import cv2
import numpy as np
import pytest

from deploy_utils import free_domain_id, ros_context, spin_in_thread
from pirl_robot.drivers.arms.base import ArmError, StaleStateError
from pirl_robot.drivers.cameras import CameraError, StaleFrameError, make_camera, parse_camera_source
from pirl_robot.drivers.ros_msgs import image_to_numpy, numpy_to_image


def test_image_conversions():
    from sensor_msgs.msg import Image

    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(image_to_numpy(numpy_to_image(rgb)), rgb)
    bgr_img = np.concatenate([rgb[:, :, ::-1].reshape(5, 21), np.full((5, 7), 99, np.uint8)], axis=1)
    msg = Image(height=5, width=7, encoding="bgr8", step=28, data=bgr_img.tobytes())
    np.testing.assert_array_equal(image_to_numpy(msg), rgb)
    depth = np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000
    np.testing.assert_array_equal(image_to_numpy(numpy_to_image(depth)), depth)
    with pytest.raises(ValueError, match="unsupported image encoding"):
        image_to_numpy(Image(height=1, width=1, encoding="yuv422", step=2, data=b"\0\0"))
    with pytest.raises(ValueError, match="too short"):
        image_to_numpy(Image(height=4, width=4, encoding="rgb8", step=12, data=b"\0" * 10))


@pytest.fixture
def video_file(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (64, 48))
    for i in range(10):
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[:, :, 2] = 200  # red in BGR
        frame[:, i * 6:(i + 1) * 6, 1] = 255
        writer.write(frame)
    writer.release()
    return path


def test_opencv_camera_reads_latest_and_detects_stale_and_end(video_file):
    cam = make_camera("front", f"opencv:{video_file}", width=32, height=24, fps=100)
    with cam:
        frame = cam.read(timeout_ms=2000)
        assert frame.color.shape == (24, 32, 3) and frame.color.dtype == np.uint8
        assert frame.color[..., 0].mean() > 150 > frame.color[..., 2].mean()  # RGB order: red stays red
        assert cam.read_latest(max_age_ms=1000).index >= frame.index
        time.sleep(0.3)  # the 10-frame file ends: no newer frames, then the stream-end error
        with pytest.raises(CameraError, match="end of stream|old"):
            cam.read_latest(max_age_ms=50)
    with pytest.raises(CameraError, match="not connected"):
        cam.read_latest(1000)


def test_stale_frame_error_is_a_camera_error(video_file):
    cam = make_camera("front", f"opencv:{video_file}", fps=100)
    cam.loop = True
    with cam:
        cam.read(timeout_ms=2000)
        time.sleep(0.05)
        with pytest.raises(StaleFrameError, match=r"limit 0 ms"):
            cam.read_latest(max_age_ms=1e-6)


def test_opencv_missing_device_and_bad_sources():
    with pytest.raises(CameraError, match="cannot open"):
        make_camera("x", "opencv:/nonexistent/video9").connect()
    for bad in ("usb:0", "topic:", "opencv"):
        with pytest.raises(ValueError):
            parse_camera_source(bad)


def test_realsense_without_device_says_so():
    pytest.importorskip("pyrealsense2")
    cam = make_camera("rs", "realsense:123456789")
    with pytest.raises(CameraError, match="no RealSense"):
        cam.connect()


def test_ros_image_topic_camera_over_dds():
    from rclpy.node import Node
    from sensor_msgs.msg import Image

    ctx = ros_context(free_domain_id())
    sub_node, pub_node = Node("cam_reader", context=ctx), Node("cam_driver", context=ctx)
    cam = make_camera("wrist", "topic:/wrist/image_raw", node=sub_node)
    cam.connect()
    pub = pub_node.create_publisher(Image, "/wrist/image_raw", 10)
    stop = spin_in_thread([sub_node, pub_node], ctx)
    img = np.random.default_rng(1).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    try:
        with pytest.raises(CameraError, match="not delivered"):
            cam.read_latest(100)
        t = time.monotonic()
        frame = None
        while frame is None and time.monotonic() - t < 10:
            pub.publish(numpy_to_image(img))
            with contextlib.suppress(CameraError):
                frame = cam.read_latest(500)
            time.sleep(0.02)
        assert frame is not None
        np.testing.assert_array_equal(frame.color, img)
        time.sleep(0.15)
        with pytest.raises(StaleFrameError):
            cam.read_latest(100)
    finally:
        cam.disconnect()
        stop()


class FakeFeetechBus:
    """Stands in for the serial motor bus only (no arm here): motors reach their goal at once."""

    def __init__(self, motors):
        self.motors, self.connected = motors, False
        self.present = {m: 10.0 for m in motors}
        self.present["gripper"] = 40.0
        self.fail_reads = False

    is_calibrated = True

    @property
    def is_connected(self):
        return self.connected

    def connect(self):
        self.connected = True

    def disconnect(self, disable_torque=True):
        self.connected = False

    @contextlib.contextmanager
    def torque_disabled(self):
        yield

    def configure_motors(self):
        pass

    def write(self, *args, **kwargs):
        pass

    def sync_read(self, what, num_retry=0):
        if self.fail_reads:
            raise ConnectionError("Incorrect status packet!")
        assert what == "Present_Position"
        return dict(self.present)

    def sync_write(self, what, values):
        assert what == "Goal_Position"
        self.present.update(values)


def test_lerobot_so101_bridge(tmp_path):
    from lerobot.robots.so_follower import SO101Follower, SO101FollowerConfig

    from pirl_robot.drivers.arms.lerobot_bridge import LeRobotArm

    robot = SO101Follower(SO101FollowerConfig(port="/dev/null", id="t", calibration_dir=tmp_path,
                                              max_relative_target=5.0))
    robot.bus = FakeFeetechBus(robot.bus.motors)
    arm = LeRobotArm(robot)
    assert arm.command_names == ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
    with pytest.raises(ArmError, match="not connected"):
        arm.read_state(100)
    arm.connect()
    s = arm.read_state(100)
    assert s.position[0] == pytest.approx(math.radians(10.0)) and s.position[-1] == pytest.approx(40.0)
    target = s.position.copy()
    target[0] = math.radians(30.0)  # 20 deg away: lerobot's max_relative_target (5 deg) clips it
    applied = arm.send(target)
    assert applied[0] == pytest.approx(math.radians(15.0))
    assert robot.bus.present["shoulder_pan"] == pytest.approx(15.0)
    with pytest.raises(ArmError, match="non-finite"):
        arm.send(np.full(6, np.nan))
    robot.bus.fail_reads = True
    with pytest.raises(ArmError, match="reading the arm failed"):
        arm.read_state(100)
    arm.disconnect()
    assert not arm.is_connected


def test_ros2_control_arm_staleness():
    from rclpy.node import Node
    from sensor_msgs.msg import JointState

    from pirl_robot.drivers.arms.ros2_control import Ros2ControlArm

    ctx = ros_context(free_domain_id())
    node, pub_node = Node("arm_reader", context=ctx), Node("jsb", context=ctx)
    arm = Ros2ControlArm(node, ("a", "b"), "/js")
    arm.connect()
    pub = pub_node.create_publisher(JointState, "/js", 10)
    stop = spin_in_thread([node, pub_node], ctx)
    try:
        with pytest.raises(StaleStateError, match="no joint state"):
            arm.read_state(100)
        t = time.monotonic()
        while arm._latest is None and time.monotonic() - t < 10:
            pub.publish(JointState(name=["b", "a"], position=[2.0, 1.0]))
            time.sleep(0.02)
        np.testing.assert_array_equal(arm.read_state(500).pick(("a", "b")), [1.0, 2.0])
        time.sleep(0.15)
        with pytest.raises(StaleStateError, match="ms old"):
            arm.read_state(100)
        with pytest.raises(ArmError, match="takes 2"):
            arm.send([1.0])
    finally:
        stop()


def test_ros2_control_arm_sends_each_command_as_given():
    """The driver refills one message per send: every command arrives with its own values, in order, for both
    command interfaces (float32 input and a strided view included)."""
    from rclpy.node import Node
    from std_msgs.msg import Float64MultiArray
    from trajectory_msgs.msg import JointTrajectory

    from pirl_robot.drivers.arms.ros2_control import Ros2ControlArm
    from pirl_robot.drivers.ros_msgs import qos

    ctx = ros_context(free_domain_id())
    node, listener = Node("arm_writer", context=ctx), Node("controller", context=ctx)
    arms = {"trajectory": Ros2ControlArm(node, ("a", "b", "c"), "/js", "/jtc", "trajectory", 0.05),
            "position": Ros2ControlArm(node, ("a", "b", "c"), "/js2", "/fpc", "position")}
    got = {"trajectory": [], "position": []}
    listener.create_subscription(JointTrajectory, "/jtc", got["trajectory"].append, qos("reliable", 100))
    listener.create_subscription(Float64MultiArray, "/fpc", got["position"].append, qos("reliable", 100))
    for arm in arms.values():
        arm.connect()
    stop = spin_in_thread([node, listener], ctx)
    rng = np.random.default_rng(0)
    sent = [rng.normal(size=3) for _ in range(20)]
    sent[3] = sent[3].astype(np.float32)
    sent[4] = np.arange(6.0)[::2]
    try:
        for kind, arm in arms.items():
            t = time.monotonic()
            while not got[kind] and time.monotonic() - t < 10:  # until the subscription is matched
                arm.send(np.zeros(3))
                time.sleep(0.05)
            time.sleep(0.2)
            got[kind].clear()
            for c in sent:
                arm.send(c)
                time.sleep(0.005)
            t = time.monotonic()
            while len(got[kind]) < len(sent) and time.monotonic() - t < 10:
                time.sleep(0.01)
    finally:
        stop()
    for c, m in zip(sent, got["trajectory"], strict=True):
        assert list(m.joint_names) == ["a", "b", "c"] and len(m.points) == 1
        assert m.header.stamp.sec == 0 and m.header.stamp.nanosec == 0  # "start now"
        assert m.points[0].time_from_start.nanosec == 50_000_000
        np.testing.assert_array_equal(np.array(m.points[0].positions), np.asarray(c, dtype=np.float64))
    for c, m in zip(sent, got["position"], strict=True):
        np.testing.assert_array_equal(np.array(m.data), np.asarray(c, dtype=np.float64))


def test_maniskill_arm_units():
    from pirl_robot.drivers.arms.maniskill_arm import finger_to_gripper, gripper_to_finger

    for g in (-1.0, -0.3, 0.0, 1.0):
        assert finger_to_gripper(gripper_to_finger(g)) == pytest.approx(g)
    assert gripper_to_finger(1.0) == pytest.approx(0.04) and gripper_to_finger(-1.0) == pytest.approx(-0.01)
    assert finger_to_gripper(0.5) == 1.0  # beyond the range: clipped like the controller would
