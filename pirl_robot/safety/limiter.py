"""Per-entry motion limits on a fixed-period command stream (pure numpy functions, no state).

Vectors hold one value per command entry; a missing limit is +inf. The command stream is discrete: with the
nominal control period T, the velocity of a tick is v = (q_next - q) / T and its acceleration (v - v_prev) / T.

Braking model (the reason every limit can always be met at once): braking at acceleration A lowers the speed by
A*T per tick, so from speed v >= 0 the remaining travel, this tick's step included, is
    S(v) = T * sum_{i >= 0} max(v - i*A*T, 0).
Keeping q + S(v) within the position limit on every tick means that braking is always possible without crossing
the limit, and braking one tick leaves exactly the rest of the same stop: a plan checked once stays valid.
"""

from __future__ import annotations

import numpy as np


def any_of(x: np.ndarray) -> bool:
    """x.any() (any entry nonzero / True) at a quarter of the cost on the filter's short vectors: the tick makes
    a dozen such tests, and each numpy call costs ~1 us of overhead, several times that on a cold cache."""
    return np.count_nonzero(x) > 0


def all_of(x: np.ndarray) -> bool:
    """x.all(), as cheaply as any_of."""
    return np.count_nonzero(x) == x.size


def stopping_travel(v: np.ndarray, accel: np.ndarray, period: float) -> np.ndarray:
    """S(|v|): travel of this tick's step at |v| plus a full stop braking at `accel` (inf: stop at once)."""
    v = np.abs(v)
    with np.errstate(invalid="ignore", divide="ignore"):
        aT = np.where(np.isfinite(accel), accel * period, np.inf)
        n = np.where(np.isfinite(aT), np.floor(v / aT), 0.0)  # full ticks of braking that still move
        s = period * ((n + 1) * v - np.where(np.isfinite(aT), aT, 0.0) * n * (n + 1) / 2)
    return s


def max_speed_before_limit(dist: np.ndarray, accel: np.ndarray, period: float) -> np.ndarray:
    """Largest speed v >= 0 with S(v) <= dist: moving this fast now still leaves room to stop before the limit."""
    d = np.maximum(dist, 0.0)
    finite_d = np.isfinite(d)
    finite = np.isfinite(accel) & finite_d  # accel broadcasts against dist
    a = np.where(finite, accel, 1.0)
    dd = np.where(finite, d, 0.0)
    aT2 = a * period * period
    n = np.floor((np.sqrt(1.0 + 8.0 * dd / aT2) - 1.0) / 2.0)  # S(n*A*T) = A*T^2*n(n+1)/2 <= d
    n1 = n + 1
    v = (dd / period + aT2 / period * n * n1 / 2.0) / n1
    v = np.minimum(v, n1 * a * period)  # rounding guard: stay on the segment solved for
    return np.where(finite, v, np.where(finite_d, d / period, np.inf))


def braking_velocity(v: np.ndarray, accel: np.ndarray, period: float) -> np.ndarray:
    """Next tick's velocity when braking as hard as allowed (towards zero, never past it)."""
    return np.sign(v) * np.maximum(np.abs(v) - accel * period, 0.0)


def braking_plan(q: np.ndarray, v: np.ndarray, accel: np.ndarray, period: float) -> np.ndarray:
    """(m+1, n) positions: q, then each tick of a full-rate stop from velocity v, until every entry is at rest."""
    speed = np.abs(v)
    # accel > 0 (inf: no limit, zero braking ticks), as the safety config guarantees: no 0/0 to silence
    ticks = np.where(np.isfinite(accel) & (v != 0), np.ceil(speed / (accel * period)), 0.0)
    m = int(ticks.max()) if ticks.size else 0
    if m == 0:
        return q[None].copy()
    k = np.arange(1, m + 1)[:, None]
    speeds = np.sign(v) * np.maximum(speed - k * accel * period, 0.0)  # velocity of braking tick k
    return np.concatenate([q[None], q + period * speeds.cumsum(axis=0)])


def velocity_intervals(q: np.ndarray, v: np.ndarray, a: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                       vmax: np.ndarray, amax: np.ndarray, jmax: np.ndarray, period: float,
                       target: np.ndarray, target_velocity: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Allowed velocity for the next tick, one interval per limit, highest priority first.

    `vmax` already includes the per-tick step cap. Given the braking invariant the first three always intersect;
    the last two are kept only where they fit (see `clip_by_priority`):
    - approach: close the gap to the target no faster than one can still stop on it (the target assumed to keep
      its current velocity when it moves away, to stand still otherwise), so a jump is reached without overshoot;
      it exists because of the acceleration limit and is reported as one;
    - jerk.
    """
    e = target - q
    up, down, closing_up, closing_down = max_speed_before_limit(np.array([hi - q, q - lo, e, -e]), amax, period)
    approach_hi = np.where(e > 0, np.maximum(target_velocity, 0) + closing_up, np.inf)
    approach_lo = np.where(e < 0, np.minimum(target_velocity, 0) - closing_down, -np.inf)
    aT, jT = amax * period, jmax * period
    return [("position_limit", -down, up),
            ("velocity_limit", -vmax, vmax),
            ("acceleration_limit", v - aT, v + aT),
            ("acceleration_limit", approach_lo, approach_hi),
            ("jerk_limit", v + period * (a - jT), v + period * (a + jT))]


def clip_by_priority(v_des: np.ndarray, intervals: list[tuple[str, np.ndarray, np.ndarray]]
                     ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Clip `v_des` into the intersection of the intervals, in priority order. Per entry, an interval that does not
    meet the allowed range so far yields: the range shrinks to its point nearest to that interval (so a lower
    limit is still met as far as the higher ones allow, and rounding never discards a limit). Returns the velocity
    and, per limit name that bounded any entry, the mask of the entries it bounded."""
    lo, hi = -np.inf, np.inf  # become arrays at the first interval
    for _, ilo, ihi in intervals:
        # [lo, hi] intersected with [ilo, ihi]; if they are disjoint, the end of [lo, hi] nearest to it
        lo, hi = np.minimum(np.maximum(ilo, lo), hi), np.maximum(np.minimum(ihi, hi), lo)
    v = np.minimum(np.maximum(v_des, lo), hi)
    if all_of(v == v_des):  # the common tick: nothing clipped, so nothing bound (the test below finds no hit)
        return v, {}
    tol = 1e-12 * (1.0 + np.abs(v))
    his = np.array([i[2] for i in intervals])
    los = np.array([i[1] for i in intervals])
    hit = (((v_des > v + tol) & (np.abs(v - his) <= tol)) | ((v_des < v - tol) & (np.abs(v - los) <= tol)))
    binding: dict[str, np.ndarray] = {}
    if not any_of(hit):  # clipped within rounding only
        return v, binding
    for (name, _, _), mask in zip(intervals, hit):
        binding[name] = binding[name] | mask if name in binding else mask
    return v, {name: mask for name, mask in binding.items() if mask.any()}
