"""numpy <-> ROS 2 message conversions (no cv_bridge in the wheels), and QoS profiles by stream kind."""

from __future__ import annotations

import numpy as np

_ENCODINGS = {"rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3), "rgba8": (np.uint8, 4), "bgra8": (np.uint8, 4),
              "mono8": (np.uint8, 1), "16UC1": (np.uint16, 1), "mono16": (np.uint16, 1), "32FC1": (np.float32, 1)}


def image_to_numpy(msg) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, 3) uint8 RGB for colour encodings, (H, W) for depth/mono."""
    if msg.encoding not in _ENCODINGS:
        raise ValueError(f"unsupported image encoding {msg.encoding!r}; supported: {sorted(_ENCODINGS)}")
    dtype, ch = _ENCODINGS[msg.encoding]
    itemsize = np.dtype(dtype).itemsize
    row = msg.width * ch * itemsize
    if msg.step < row or len(msg.data) < msg.step * msg.height:
        raise ValueError(f"image buffer too short for {msg.width}x{msg.height} {msg.encoding} (step {msg.step})")
    buf = np.frombuffer(bytes(msg.data), dtype=np.uint8).reshape(msg.height, msg.step)[:, :row]
    img = buf.copy().view(dtype).reshape(msg.height, msg.width, ch)
    if msg.is_bigendian != (np.little_endian is False) and itemsize > 1:
        img = img.byteswap()
    if msg.encoding in ("bgr8", "bgra8"):
        img = img[..., 2::-1]
    elif msg.encoding == "rgba8":
        img = img[..., :3]
    return np.ascontiguousarray(img[..., 0] if ch == 1 else img)


def numpy_to_image(img: np.ndarray, stamp=None, frame_id: str = ""):
    """(H, W, 3) uint8 RGB -> sensor_msgs/Image rgb8; (H, W) uint16 -> 16UC1."""
    from sensor_msgs.msg import Image

    msg = Image()
    if img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8:
        msg.encoding = "rgb8"
    elif img.ndim == 2 and img.dtype == np.uint16:
        msg.encoding = "16UC1"
    else:
        raise ValueError(f"cannot publish image of shape {img.shape} and dtype {img.dtype}")
    img = np.ascontiguousarray(img)
    msg.height, msg.width = img.shape[:2]
    msg.step = img.strides[0]
    msg.is_bigendian = 0
    msg.data = img.tobytes()
    msg.header.frame_id = frame_id
    if stamp is not None:
        msg.header.stamp = stamp
    return msg


def qos(kind: str, depth: int = 1):
    """'sensor' (best effort, keep last: fresh data beats complete data) or 'reliable' (commands, events)."""
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    if kind not in ("sensor", "reliable"):
        raise ValueError(f"QoS kind must be 'sensor' or 'reliable', got {kind!r}")
    rel = ReliabilityPolicy.BEST_EFFORT if kind == "sensor" else ReliabilityPolicy.RELIABLE
    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST, reliability=rel)


def level_log(logger):
    """log(level, msg) onto an rclpy logger; level: info | warn | warning | error. rclpy refuses one call site
    with two severities ("Logger severity cannot be changed between calls"), so each level has its own line."""
    def log(level: str, msg: str) -> None:
        if level == "error":
            logger.error(msg)
        elif level in ("warn", "warning"):
            logger.warning(msg)
        else:
            logger.info(msg)
    return log
