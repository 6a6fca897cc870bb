"""What the control loop hands its taps (the recorder, a live view, a test): one typed record per tick, per chunk
and per batch of safety events.

    loop.taps.append(fn)      # fn(record) with record a TickRecord, ChunkRecord or SafetyRecord; runs on the
                              # control-loop or the inference thread, so it must be cheap (queue it, return)

Units: `action` is the policy's action for the tick (policy units, as the broker handed it out), `command` what
was sent to the arm (command units, after the safety stage). Safety events are JSON-ready dicts
(SafetyEvent.to_dict: time, cause, mode, detail, raw, applied).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from pirl_robot.drivers.arms.base import JointSample


@dataclass(frozen=True, slots=True)
class TickRecord:
    """One control tick, after its command went out."""

    tick: int
    episode: int
    t: float  # time.monotonic() at the start of the tick
    executing: bool
    mode: str  # the safety stage's mode after the tick
    obs: dict | None  # the policy observation (None: an input was stale, see fault)
    joints: JointSample | None  # the fresh joint sample the observation was built from
    action: np.ndarray | None  # the policy's action for this tick, None: none (not executing, underrun, fault)
    command: np.ndarray | None  # what was sent to the arm, None: nothing sent
    events: list[dict]
    fault: str | None  # the input or policy fault of this tick
    overhead_s: float  # the tick's own time, without waiting for a chunk
    waited_s: float  # time spent waiting for the chunk in flight


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """A chunk the inference worker returned for the current episode (or its error)."""

    obs_tick: int
    episode: int
    actions: np.ndarray | None  # (chunk_size, action_dim), None on error
    noise: np.ndarray | None  # the initial noise (exact offline replay)
    latency_s: float
    error: str | None
    prefix: Any = None  # the flow.rtc.ChunkPrefix it was guided to continue (real-time chunking), else None


@dataclass(frozen=True, slots=True)
class SafetyRecord:
    """Safety events raised outside a tick's own record (an e-stop from a service) or with it."""

    episode: int
    events: list[dict]


TapRecord = TickRecord | ChunkRecord | SafetyRecord
Tap = Callable[[TapRecord], None]
