"""Calibration sessions: a folder of images + joint positions, captured live or brought from elsewhere.

    <session>/session.yaml     board, camera (name, source, size, device intrinsics if the driver reports them),
                               joint_names, and one entry per view: {image: 000.png, joints: [...]}
    <session>/000.png ...      the frames (RGB as captured)

    pirl calibrate capture --camera realsense: --out calib/s1                 # live: deploy drivers + /joint_states
    pirl calibrate capture --camera opencv:/dev/video0 --no-joints --out calib/intr   # intrinsics only

Live capture uses the deploy path's own drivers (pirl_robot.drivers.cameras: RealSense, OpenCV, ROS image topic)
and the arm's sensor_msgs/JointState over rclpy. For every pose the operator moves the arm (or the board), then
presses Enter; the newest frame and joint state are stored together (both must be fresher than --max-age-ms).
A session from elsewhere only needs the same session.yaml (joints in the order of joint_names) and images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import yaml

from calibration.board import Board

SESSION = "session.yaml"


class SessionError(ValueError):
    """A session folder that cannot be read."""


@dataclass
class View:
    name: str
    image: np.ndarray             # RGB uint8
    joints: np.ndarray | None     # joint positions in the session's joint_names order (rad)


@dataclass
class Session:
    root: Path
    board: Board
    camera: dict
    joint_names: tuple[str, ...]
    entries: list[dict] = field(default_factory=list)

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.camera["width"]), int(self.camera["height"])

    def views(self) -> list[View]:
        out = []
        for e in self.entries:
            bgr = cv2.imread(str(self.root / e["image"]), cv2.IMREAD_COLOR)
            if bgr is None:
                raise SessionError(f"{self.root / e['image']}: not a readable image")
            if (bgr.shape[1], bgr.shape[0]) != self.image_size:
                raise SessionError(f"{e['image']} is {bgr.shape[1]}x{bgr.shape[0]}, the session's camera is "
                                   f"{self.image_size[0]}x{self.image_size[1]}")
            joints = e.get("joints")
            if joints is not None and len(joints) != len(self.joint_names):
                raise SessionError(f"{e['image']}: {len(joints)} joint positions for joint_names "
                                   f"{list(self.joint_names)}")
            out.append(View(Path(e["image"]).stem, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB),
                            None if joints is None else np.asarray(joints, dtype=np.float64)))
        return out

    def add(self, image: np.ndarray, joints: np.ndarray | None) -> str:
        name = f"{len(self.entries):03d}.png"
        self.root.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(self.root / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise SessionError(f"cannot write {self.root / name}")
        self.entries.append({"image": name, **({} if joints is None else {"joints": [float(x) for x in joints]})})
        self.save()
        return name

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        data = {"board": self.board.to_dict(), "camera": self.camera, "joint_names": list(self.joint_names),
                "views": self.entries}
        (self.root / SESSION).write_text(yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=120))


def open_session(root: str | Path) -> Session:
    root = Path(root)
    path = root / SESSION
    if not path.is_file():
        raise SessionError(f"{root} is not a calibration session (no {SESSION}; make one with "
                           f"`pirl calibrate capture` or see docs/calibration.md)")
    d = yaml.safe_load(path.read_text()) or {}
    for key in ("board", "camera", "views"):
        if key not in d:
            raise SessionError(f"{path}: missing {key!r}")
    cam = d["camera"]
    if not {"width", "height"} <= set(cam):
        raise SessionError(f"{path}: camera needs width and height")
    return Session(root, Board.from_dict(d["board"]), cam, tuple(d.get("joint_names") or ()), list(d["views"]))


# --- live capture ---------------------------------------------------------------------------------------------
class JointStateListener:
    """The newest sensor_msgs/JointState on a topic, in a given joint order (own rclpy context and thread)."""

    def __init__(self, topic: str, joint_names: tuple[str, ...]):
        import threading

        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import JointState

        from pirl_robot.drivers.ros_msgs import qos

        self.joint_names, self.latest, self.stamp = joint_names, None, 0.0
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.node = rclpy.create_node("pirl_calibrate", context=self.ctx)
        self.node.create_subscription(JointState, topic, self._on_msg, qos("sensor"))
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while self.ctx.ok():
            self.executor.spin_once(timeout_sec=0.05)

    def _on_msg(self, msg) -> None:
        index = {n: i for i, n in enumerate(msg.name)}
        if all(n in index for n in self.joint_names):
            self.latest = np.array([msg.position[index[n]] for n in self.joint_names])
            self.stamp = time.monotonic()

    def read(self, max_age_ms: float) -> np.ndarray:
        if self.latest is None:
            raise SessionError(f"no joint state with {list(self.joint_names)} received yet")
        age = (time.monotonic() - self.stamp) * 1e3
        if age > max_age_ms:
            raise SessionError(f"newest joint state is {age:.0f} ms old (limit {max_age_ms:.0f} ms)")
        return self.latest.copy()

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.ctx.try_shutdown()


def capture_session(out: Path, board: Board, camera, joints: JointStateListener | None, *, camera_source: str,
                    poses: int, max_age_ms: float = 200.0, prompt: Callable[[str], str] = input, log=print) -> Session:
    """Operator loop: for each pose, wait for Enter (s: skip, q: finish), then store frame + joint state.
    The board detection is shown right away so a bad view can be retaken."""
    if out.exists() and any(out.iterdir()):
        raise SessionError(f"{out} exists and is not empty; captures go to a new folder")
    camera.connect()
    try:
        frame = camera.read(timeout_ms=5000)
        h, w = frame.color.shape[:2]
        info = {"name": camera.name, "source": camera_source, "width": w, "height": h}
        if getattr(camera, "intrinsics", None):  # RealSense: the factory calibration, kept as a cross-check
            info["device_intrinsics"] = dict(camera.intrinsics)
        session = Session(out, board, info, joints.joint_names if joints else ())
        session.save()
        k = 0
        while k < poses:
            answer = prompt(f"pose {k + 1}/{poses}: move the arm, keep it still, Enter to capture "
                            f"(s skip, q finish) > ").strip().lower()
            if answer == "q":
                break
            if answer == "s":
                k += 1
                continue
            try:
                q = joints.read(max_age_ms) if joints else None
                frame = camera.read_latest(max_age_ms)
            except Exception as e:  # a stale input: say so and let the operator retry this pose
                log(f"  not captured: {e}")
                continue
            det = board.detect(frame.color)
            name = session.add(frame.color, q)
            log(f"  {name}: " + (det.problem or f"{det.count} corners"))
            k += 1
        return session
    finally:
        camera.disconnect()
