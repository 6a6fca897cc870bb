"""Bundles carry the camera calibration their policy was trained with; the deploy node's check compares it with
the live camera (device intrinsics, this robot's calibration file) against stated tolerances."""

import time
from dataclasses import replace

import numpy as np
import pytest

from calibration.calib_file import CalibrationFile
from calibration.poses import make_T
from calibration.synthetic import look_at
from deploy_utils import tiny_policy
from pirl_robot.bundle import BundleError, export_bundle, open_bundle
from pirl_robot.deploy.calibration_check import (INTRINSICS_PX, CalibrationMismatch, check_cameras,
                                                 parse_calibration_entries)

K = np.array([[610.0, 0.0, 322.5], [0.0, 608.0, 236.0], [0.0, 0.0, 1.0]])
D = np.array([-0.12, 0.09, 0.0008, -0.0005, -0.02])


def _cal() -> CalibrationFile:
    T = look_at(np.array([1.25, 0.45, 0.55]), np.array([0.6, 0.0, 0.08]))
    return CalibrationFile("base_camera", 640, 480, K, D).with_pose("eye_to_hand", "panda_link0", T)


@pytest.fixture()
def rgb_bundle(tmp_path):
    from sim.maniskill.config import TaskConfig
    from sim.maniskill.env import task_spec

    tiny_policy(task_spec(TaskConfig(task="PushCube-v1", obs_mode="rgb"))).save(tmp_path / "ckpt")
    cal = _cal().save(tmp_path / "trained.yaml")
    return export_bundle(tmp_path / "ckpt", tmp_path / "bundle", calibrations={"base_camera": cal}), cal


def test_bundle_carries_the_calibration(rgb_bundle, tmp_path):
    bundle, cal_path = rgb_bundle
    b = open_bundle(bundle)
    (name, cal), = b.camera_calibrations().items()
    assert name == "base_camera" and np.allclose(cal.K, K) and np.allclose(cal.T_base_camera, _cal().T_base_camera)
    assert b.manifest["camera_calibrations"] == {"base_camera": "calibration_base_camera.yaml"}
    p = bundle / "calibration_base_camera.yaml"
    p.write_text(p.read_text().replace("610.0", "611.0"))
    with pytest.raises(BundleError, match="calibration_base_camera.yaml"):
        open_bundle(bundle)  # checksummed like the weights
    with pytest.raises(BundleError, match="policy's cameras are"):
        export_bundle(tmp_path / "ckpt", tmp_path / "b2", calibrations={"wrist": cal_path})


def test_live_camera_compared_with_stated_tolerances(rgb_bundle, tmp_path):
    bundle, _ = rgb_bundle
    trained = open_bundle(bundle).camera_calibrations()
    same = _cal().save(tmp_path / "robot_same.yaml")
    (ok, line), = check_cameras(trained, {"base_camera": str(same)}, {}, "refuse")
    assert ok and "within tolerance" in line and "0.00 mm" in line

    moved = _cal()
    moved = replace(moved, T_parent_camera=moved.T_parent_camera @ make_T(np.eye(3), [0.0, 0.015, 0.0]))
    moved_path = moved.save(tmp_path / "robot_moved.yaml")
    (ok, line), = check_cameras(trained, {"base_camera": str(moved_path)}, {}, "warn")
    assert not ok and "camera moved 15.0 mm (tolerance 10.0 mm)" in line
    with pytest.raises(CalibrationMismatch, match="camera moved 15.0 mm"):
        check_cameras(trained, {"base_camera": str(moved_path)}, {}, "refuse")

    class RealSense:  # what RealSenseCamera.intrinsics holds after connect (read from the device)
        intrinsics = {"width": 1280, "height": 960, "fx": 2 * 610.0, "fy": 2 * 608.0, "ppx": 2 * 322.5 + 0.5,
                      "ppy": 2 * 236.0 + 0.5, "model": "distortion.brown_conrady", "coeffs": list(D)}

    (ok, line), = check_cameras(trained, {"base_camera": str(same)}, {"base_camera": RealSense()}, "refuse")
    assert ok and "device intrinsics + configured pose" in line  # twice the resolution, the same camera
    RealSense.intrinsics = {**RealSense.intrinsics, "fx": 2 * 610.0 * 1.02}
    (ok, line), = check_cameras(trained, {"base_camera": str(same)}, {"base_camera": RealSense()}, "warn")
    assert not ok and f"tolerance {INTRINSICS_PX} px" in line
    (ok, line), = check_cameras(trained, {}, {"base_camera": object()}, "refuse")
    assert not ok and "no live calibration" in line
    assert check_cameras(trained, {}, {}, "off") == []
    with pytest.raises(ValueError, match="camera=path"):
        parse_calibration_entries(["base_camera"])


def test_ros_topic_camera_reads_camera_info_over_dds(rgb_bundle):
    """A ROS image-topic camera reports its driver's CameraInfo (the topic beside the image's) as live
    intrinsics, and the check compares them; without CameraInfo it says so instead of passing the camera."""
    import threading

    from rclpy.node import Node
    from sensor_msgs.msg import CameraInfo

    from deploy_utils import free_domain_id, ros_context
    from pirl_robot.drivers.cameras.factory import make_camera

    bundle, _ = rgb_bundle
    trained = open_bundle(bundle).camera_calibrations()
    ctx = ros_context(free_domain_id())
    reader, driver = Node("cam_reader", context=ctx), Node("cam_driver", context=ctx)
    pub = driver.create_publisher(CameraInfo, "/base/camera_info", 10)
    msg = CameraInfo(width=640, height=480, distortion_model="plumb_bob", d=list(D), k=K.ravel().tolist())
    stop = threading.Event()

    def publish():
        while not stop.is_set():
            pub.publish(msg)
            time.sleep(0.05)

    t = threading.Thread(target=publish, daemon=True)
    t.start()
    try:
        cam = make_camera("base_camera", "topic:/base/image_raw", node=reader)
        assert cam.info_topic == "/base/camera_info"
        assert cam.intrinsics["fx"] == 610.0 and cam.intrinsics["coeffs"] == pytest.approx(list(D))
        (ok, line), = check_cameras(trained, {}, {"base_camera": cam}, "refuse")
        assert ok and "camera_info /base/camera_info, no configured pose" in line
        msg.k = (K * [[1.02], [1.0], [1.0]]).ravel().tolist()  # fx 2% off
        cam2 = make_camera("base_camera", "topic:/base/image_raw", node=reader)
        with pytest.raises(CalibrationMismatch, match="intrinsics differ"):
            check_cameras(trained, {}, {"base_camera": cam2}, "refuse")
        silent = make_camera("base_camera", "topic:/nobody/image_raw", node=reader)
        (ok, line), = check_cameras(trained, {}, {"base_camera": silent}, "warn")
        assert not ok and "no live calibration" in line and silent.intrinsics is None
    finally:
        stop.set()
        t.join()
        reader.destroy_node()
        driver.destroy_node()
        ctx.try_shutdown()
