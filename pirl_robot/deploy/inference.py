"""Policy inference on its own thread, so a slow forward pass never blocks the control loop."""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass
class InferenceResult:
    request_id: int
    obs_tick: int
    actions: np.ndarray | None  # (H, A) policy actions, None on error
    noise: np.ndarray | None  # the initial noise used (for exact offline replay)
    latency_s: float
    error: str | None = None
    prefix: object = None  # the flow.rtc.ChunkPrefix the chunk was guided to continue (real-time chunking)


def check_chunk(actions, spec) -> np.ndarray:
    """The policy's output as a finite (chunk_size, action_dim) array, or a ValueError (the node holds)."""
    a = np.asarray(actions)
    if a.dtype.kind != "f" or a.shape != (spec.chunk_size, spec.action_dim):
        raise ValueError(f"policy returned {a.dtype} actions of shape {a.shape}, expected floats of shape "
                         f"({spec.chunk_size}, {spec.action_dim})")
    if not np.isfinite(a).all():
        raise ValueError(f"policy returned NaN/inf actions (in {int((~np.isfinite(a)).sum())} entries)")
    return a


class InferenceWorker:
    """Holds at most one request; `on_result` runs on the worker thread."""

    def __init__(self, policy, on_result: Callable[[InferenceResult], None], seed: int = -1):
        self.policy, self.on_result = policy, on_result
        self._rng = np.random.default_rng(None if seed < 0 else seed)
        self._cond = threading.Condition()
        self._request: tuple[int, int, dict, object] | None = None
        self._next_id = 0
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="policy-inference", daemon=True)
        self._thread.start()

    def reseed(self, seed: int) -> None:
        self._rng = np.random.default_rng(None if seed < 0 else seed)

    def submit(self, obs: dict, obs_tick: int, prefix=None) -> int:
        """prefix: a flow.rtc.ChunkPrefix the chunk must continue (real-time chunking), or None."""
        with self._cond:
            self._next_id += 1
            self._request = (self._next_id, obs_tick, obs, prefix)
            self._cond.notify_all()
            return self._next_id

    def _loop(self) -> None:
        spec = self.policy.spec
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._request is not None or self._stop)
                if self._stop:
                    return
                rid, tick, obs, prefix = self._request
                self._request = None
            noise = self._rng.standard_normal(self.policy.noise_shape).astype(np.float32)  # pi0: padded dims
            t0 = time.perf_counter()
            try:
                extra = {} if prefix is None else {"prefix": prefix}
                actions, error = check_chunk(self.policy.infer(obs, noise=noise, **extra)["actions"], spec), None
            except Exception as e:  # NaN actions, bad observation, a crashing model: the control loop decides
                actions, error = None, f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"
            result = InferenceResult(rid, tick, actions, noise, time.perf_counter() - t0, error, prefix)
            self.on_result(result)

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=5.0)
