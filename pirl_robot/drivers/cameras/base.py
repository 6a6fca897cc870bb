"""The camera interface and the latest-frame bookkeeping every driver shares."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np


class CameraError(RuntimeError):
    """A camera cannot be opened, was lost, or has not delivered any frame."""


class StaleFrameError(CameraError):
    """The newest frame is older than the caller accepts."""


@dataclass(frozen=True)
class Frame:
    """One camera frame. stamp: time.monotonic() when it was received on this computer."""

    color: np.ndarray  # (H, W, 3) uint8 RGB
    stamp: float
    index: int
    depth: np.ndarray | None = None  # (H, W) uint16, depth_units metres per count
    meta: dict = field(default_factory=dict)

    def age_ms(self, now: float | None = None) -> float:
        return ((time.monotonic() if now is None else now) - self.stamp) * 1e3


class Camera:
    """Base class: drivers push frames with `_publish`; readers take the newest one.

    Subclasses implement `_open()`/`_close()` and deliver frames from their own thread or callback.
    """

    def __init__(self, name: str):
        self.name = name
        self._latest: Frame | None = None
        self._count = 0
        self._cond = threading.Condition()
        self._error: Exception | None = None
        self._connected = False

    # --- driver side ---------------------------------------------------------------------------------------
    def _open(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _publish(self, color: np.ndarray, depth: np.ndarray | None = None, stamp: float | None = None,
                 **meta) -> None:
        with self._cond:
            self._count += 1
            self._latest = Frame(color, time.monotonic() if stamp is None else stamp, self._count, depth, meta)
            self._cond.notify_all()

    def _fail(self, error: Exception) -> None:
        """Called by a driver thread when the device is lost: readers get the error instead of old frames."""
        with self._cond:
            self._error = error
            self._cond.notify_all()

    # --- user side -----------------------------------------------------------------------------------------
    @property
    def is_connected(self) -> bool:
        return self._connected and self._error is None

    def connect(self) -> None:
        if self._connected:
            return
        self._error = None
        self._open()
        self._connected = True

    def disconnect(self) -> None:
        if self._connected:
            self._connected = False
            self._close()

    def read(self, timeout_ms: float = 1000.0) -> Frame:
        """Block until a frame newer than the last one seen by any reader arrives."""
        with self._cond:
            seen = self._count
            if not self._cond.wait_for(lambda: self._count > seen or self._error is not None, timeout_ms / 1e3):
                raise CameraError(f"camera {self.name!r}: no new frame within {timeout_ms:.0f} ms")
            self._raise_if_failed()
            return self._latest

    def latest(self) -> Frame | None:
        """The newest frame however old, without checks (None before the first)."""
        with self._cond:
            return self._latest

    def read_latest(self, max_age_ms: float) -> Frame:
        """The newest frame; raises StaleFrameError if it is older than max_age_ms, CameraError if none yet."""
        with self._cond:
            self._raise_if_failed()
            frame = self._latest
        if frame is None:
            raise CameraError(f"camera {self.name!r} has not delivered a frame yet")
        age = frame.age_ms()
        if age > max_age_ms:
            raise StaleFrameError(f"camera {self.name!r}: newest frame is {age:.0f} ms old (limit {max_age_ms:.0f} ms)")
        return frame

    def _raise_if_failed(self) -> None:
        if not self._connected:
            raise CameraError(f"camera {self.name!r} is not connected")
        if self._error is not None:
            raise CameraError(f"camera {self.name!r} lost: {self._error}") from self._error

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.disconnect()


class PollingCamera(Camera):
    """A camera read by a background thread that calls `_grab()` in a loop (OpenCV, RealSense)."""

    def __init__(self, name: str):
        super().__init__(name)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def _grab(self) -> tuple[np.ndarray, np.ndarray | None] | None:
        """One blocking capture; None at the end of a finite source."""
        raise NotImplementedError

    def _start_thread(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=f"camera-{self.name}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                got = self._grab()
            except Exception as e:  # the device went away: tell readers instead of serving old frames
                self._fail(e)
                return
            if got is None:
                self._fail(CameraError("end of stream"))
                return
            self._publish(*got)

    def _stop_thread(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
