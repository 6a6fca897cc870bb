"""Safety events: one record per intervention, handed to every registered sink (recorder, Rerun, a ROS topic).

An event is created only when the safety layer changes or refuses something, so the common tick costs nothing;
it holds small numpy copies and turns into plain Python types with `to_dict` (JSON-ready apart from NaN/inf,
which are kept because a NaN command is exactly what the record must show).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SafetyEvent:
    time: float                   # the safety layer's clock (seconds)
    cause: str                    # e.g. "velocity_limit", "bad_command", "camera_stale", "estop"
    raw: np.ndarray | None        # the policy's action as received (None: none, or not a numeric vector)
    applied: np.ndarray | None    # the command sent instead (None: nothing is sent)
    detail: str = ""
    mode: str = ""                # filter mode after the event

    def to_dict(self) -> dict[str, Any]:
        return {"time": self.time, "cause": self.cause, "mode": self.mode, "detail": self.detail,
                "raw": None if self.raw is None else self.raw.tolist(),
                "applied": None if self.applied is None else self.applied.tolist()}


def as_vector(x: Any) -> np.ndarray | None:
    """A float copy of a command for the record, or None when it is not numeric at all."""
    try:
        return np.array(x, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None


Sink = Callable[[SafetyEvent], None]


class EventBus:
    """Delivers events to sinks in order. A sink that raises is logged and skipped: a failing recorder must not
    take the safety layer down with it."""

    def __init__(self) -> None:
        self._sinks: list[Sink] = []
        self.sink_errors = 0

    def subscribe(self, sink: Sink) -> Callable[[], None]:
        self._sinks.append(sink)
        return lambda: self._sinks.remove(sink) if sink in self._sinks else None

    def emit(self, event: SafetyEvent) -> None:
        for sink in list(self._sinks):
            try:
                sink(event)
            except Exception:
                self.sink_errors += 1
                log.exception("safety event sink %r failed on %s", sink, event.cause)
