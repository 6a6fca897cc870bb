"""Action-chunk broker: one action per control tick from time-stamped chunks, with overlapping chunks blended.

A chunk computed from the observation of tick k holds the actions for ticks k, k+1, ... (index i -> tick k+i).
When a newer chunk arrives the broker switches to it at once, skipping the actions whose ticks are past, and
crossfades from the old chunk over `blend_ticks` ticks (linear weights) where both still cover the tick, so a
late or slightly different new plan does not jump the arm. A request for the next chunk is due `lead_ticks`
before the current one has run `exec_horizon` actions, so inference can overlap execution. If no chunk covers a
tick (the policy is slower than the plan lasts) the broker returns None: the caller holds (an underrun).

Real-time chunking (flow/rtc.py; `rtc_prefix`): instead of (or besides) the crossfade, a request carries the
current plan's actions from the request's tick on as a guided prefix, so the next chunk is sampled to continue what
the arm is executing while it is being computed (its first `inference_delay` actions frozen to the plan).

The broker is also the one place that knows the chunk request in flight (`request`, at most one): made on the tick
it was due, handed to the inference worker (`worker_id`), cleared when its chunk arrives, on `cancel_request` or
on `reset` (so a chunk that answers a request of a stopped episode finds no request and is dropped).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pirl_robot.flow.rtc import ChunkPrefix


@dataclass
class ChunkRequest:
    """The chunk request in flight: for the observation of tick `obs_tick`."""

    obs_tick: int
    obs: dict | None = None  # held until the tick's command is out (an early request), then submitted
    worker_id: int | None = None  # the inference worker's id for it, once submitted
    prefix: ChunkPrefix | None = None  # real-time chunking: the plan the new chunk must continue


@dataclass
class _Chunk:
    actions: np.ndarray  # (H, A)
    start: int  # tick of actions[0]

    def at(self, tick: int) -> np.ndarray | None:
        i = tick - self.start
        return self.actions[i] if 0 <= i < len(self.actions) else None


class ActionChunkBroker:
    def __init__(self, exec_horizon: int, blend_ticks: int = 0, lead_ticks: int = 0):
        if exec_horizon < 1 or blend_ticks < 0 or lead_ticks < 0:
            raise ValueError("exec_horizon >= 1, blend_ticks >= 0 and lead_ticks >= 0 required")
        self.exec_horizon, self.blend_ticks, self.lead_ticks = exec_horizon, blend_ticks, lead_ticks
        self.reset()

    def reset(self) -> None:
        self._cur: _Chunk | None = None
        self._old: _Chunk | None = None
        self._switch_tick = 0
        self.request: ChunkRequest | None = None
        self.chunks = 0

    @property
    def pending(self) -> bool:
        return self.request is not None

    def needs_inference(self, tick: int) -> bool:
        if self.request is not None:
            return False
        if self._cur is None:
            return True
        return tick >= self._cur.start + self.exec_horizon - self.lead_ticks

    def mark_requested(self, tick: int) -> ChunkRequest:
        self.request = ChunkRequest(tick)
        return self.request

    def rtc_prefix(self, tick: int, inference_delay: int, execution_horizon: int = 0) -> ChunkPrefix | None:
        """The current plan from `tick` on as a real-time-chunking prefix (None: no plan left to continue).
        inference_delay: ticks the new chunk is expected to take (capped at the plan left); execution_horizon:
        where the guidance fades out (0: the end of the plan left)."""
        if self._cur is None:
            return None
        left = self._cur.actions[max(0, tick - self._cur.start):]
        if len(left) == 0:
            return None
        horizon = min(len(left), execution_horizon or len(left))
        delay = min(inference_delay, horizon)
        return ChunkPrefix(left.astype(np.float32), delay, horizon)

    def cancel_request(self) -> None:
        self.request = None

    def put(self, actions: np.ndarray, obs_tick: int, now_tick: int) -> None:
        """A chunk computed from the observation of `obs_tick`, delivered while tick `now_tick` is current."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or not np.isfinite(actions).all():
            raise ValueError(f"a chunk must be a finite (H, A) array, got shape {actions.shape}")
        self.request = None
        self.chunks += 1
        new = _Chunk(actions, obs_tick)
        if self._cur is not None and self.blend_ticks and self._cur.at(now_tick) is not None:
            self._old, self._switch_tick = self._cur, now_tick
        else:
            self._old = None
        self._cur = new

    def action(self, tick: int) -> np.ndarray | None:
        if self._cur is None:
            return None
        a = self._cur.at(tick)
        if a is None:
            return None
        if self._old is not None:
            k = tick - self._switch_tick
            old = self._old.at(tick)
            if old is None or k >= self.blend_ticks:
                self._old = None
            else:
                w = (k + 1) / (self.blend_ticks + 1)
                a = (1.0 - w) * old + w * a
        return a

    def remaining(self, tick: int) -> int:
        return 0 if self._cur is None else max(0, self._cur.start + len(self._cur.actions) - tick)
