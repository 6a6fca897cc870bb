"""The arm interface and the latest-joint-state bookkeeping drivers share."""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np


class ArmError(RuntimeError):
    """The arm is not connected, was lost, or rejected a command."""


class StaleStateError(ArmError):
    """The newest joint state is older than the caller accepts (or none arrived yet)."""


@dataclass(frozen=True)
class JointSample:
    """Joint positions (and velocities) by name; stamp: time.monotonic() when received on this computer."""

    names: tuple[str, ...]
    position: np.ndarray
    velocity: np.ndarray | None
    stamp: float
    source_stamp: float | None = None  # the message header stamp (s), to match inputs of the same instant

    def age_ms(self, now: float | None = None) -> float:
        return ((time.monotonic() if now is None else now) - self.stamp) * 1e3

    def pick(self, names: tuple[str, ...], what: str = "position") -> np.ndarray:
        src = self.position if what == "position" else self.velocity
        if src is None:
            raise ArmError(f"joint state carries no {what}")
        idx, missing = name_index(tuple(self.names), tuple(names))
        if missing:
            raise ArmError(f"joint state lacks {list(missing)} (has {list(self.names)})")
        return np.asarray(src, dtype=np.float64)[idx]


@functools.lru_cache(maxsize=256)
def name_index(have: tuple[str, ...], want: tuple[str, ...]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Where each of `want` is in `have` (a joint state's names; the last of duplicates), and those `have` lacks.
    Cached: a driver's names do not change between messages, and the control tick asks every period."""
    at = {n: i for i, n in enumerate(have)}
    idx = np.array([at.get(n, -1) for n in want], dtype=np.intp)
    idx.flags.writeable = False
    return idx, tuple(n for n in want if n not in at)


class Arm:
    """Base class. `command_names`: the entries `send` takes, in order (joint targets, a gripper...)."""

    joint_names: tuple[str, ...] = ()
    command_names: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._latest: JointSample | None = None
        self._lock = threading.Lock()
        self._listeners: list[Callable[[JointSample], None]] = []
        self._connected = False

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        self._connected = True

    def disconnect(self) -> None:
        self._connected = False

    def add_state_listener(self, fn: Callable[[JointSample], None]) -> None:
        """fn(sample) on every new joint state (the deploy node can tick on the arm's state rate)."""
        self._listeners.append(fn)

    def _store(self, sample: JointSample) -> None:
        with self._lock:
            self._latest = sample
        for fn in self._listeners:
            fn(sample)

    def latest(self) -> JointSample | None:
        """The newest joint sample however old (None before the first): where the arm was, for braking."""
        with self._lock:
            return self._latest

    def read_state(self, max_age_ms: float) -> JointSample:
        if not self._connected:
            raise ArmError(f"{type(self).__name__} is not connected")
        s = self.latest()
        if s is None:
            raise StaleStateError("no joint state received yet")
        if s.age_ms() > max_age_ms:
            raise StaleStateError(f"joint state is {s.age_ms():.0f} ms old (limit {max_age_ms:.0f} ms)")
        return s

    def send(self, targets: np.ndarray) -> np.ndarray:
        """Command `targets` (ordered as command_names); returns what was actually sent."""
        raise NotImplementedError

    def _check_targets(self, targets) -> np.ndarray:
        t = np.asarray(targets, dtype=np.float64).reshape(-1)
        if t.shape != (len(self.command_names),):
            raise ArmError(f"command has {t.size} entries, the arm takes {len(self.command_names)} "
                           f"({list(self.command_names)})")
        if not np.isfinite(t).all():
            raise ArmError(f"refusing non-finite command {t}")
        return t
