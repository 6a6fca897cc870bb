"""Rolling timing statistics for diagnostics and benchmarks."""

from __future__ import annotations

import threading
from collections import deque

import numpy as np


class Rolling:
    def __init__(self, size: int = 2000):
        self._v: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()
        self.count = 0

    def add(self, value: float) -> None:
        with self._lock:
            self._v.append(value)
            self.count += 1

    def values(self) -> np.ndarray:
        with self._lock:
            return np.array(self._v, dtype=np.float64)

    def percentile(self, q: float) -> float:
        v = self.values()
        return float(np.percentile(v, q)) if v.size else float("nan")

    def summary(self, scale: float = 1e3) -> dict[str, float]:
        v = self.values() * scale
        if not v.size:
            return {"n": 0}
        return {"n": int(v.size), "p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99)),
                "max": float(v.max()), "mean": float(v.mean())}
