"""MP4 writing for evaluation videos (PyAV, which lerobot already installs)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def write_mp4(path: str | Path, frames: Sequence[np.ndarray], fps: float = 20.0) -> Path:
    """Encode uint8 (H, W, 3) RGB frames as H.264 (yuv420p: even sizes are padded). Written to a temporary
    name and renamed, so a crash never leaves a truncated file under the final name."""
    import av

    if not len(frames):
        raise ValueError("no frames to write")
    h, w = frames[0].shape[:2]
    ph, pw = h + h % 2, w + w % 2
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".part.mp4")
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=int(round(fps)))
        stream.width, stream.height, stream.pix_fmt = pw, ph, "yuv420p"
        for frame in frames:
            frame = np.asarray(frame, dtype=np.uint8)
            if frame.shape != (h, w, 3):
                raise ValueError(f"frame of shape {frame.shape}, expected {(h, w, 3)}")
            if (ph, pw) != (h, w):
                frame = np.pad(frame, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)
    return path
