"""The end-effector workspace box check, with as few forward-kinematics calls as the geometry allows.

A pytorch_kinematics call costs about 0.5 ms, nearly all fixed torch overhead, while a tick checks a command and
its whole braking stop. Most ticks are far inside the box, and that can be proven without FK: the chain's reach
bound (EndEffectorFK.reach) gives |p(q) - p(a)| <= sum_i reach_i |q_i - a_i| for an *anchor* a whose end effector
p(a) was computed, so q is inside whenever that bound is smaller than p(a)'s clearance to the box faces. Anything
not proven that way gets the exact FK check, and its results become the new anchors. The outcome is the one an FK
call on every configuration would give (a configuration proven inside is inside by more than MARGIN); only the
number of calls changes.
"""

from __future__ import annotations

import numpy as np

from pirl_robot.safety.kinematics import EndEffectorFK

MARGIN = 1e-6        # m: a proof must leave this much room (float rounding of both FK and bound)
REACH_SLACK = 1e-6   # relative inflation of the reach bound, for the same reason
MAX_ANCHORS = 64


class WorkspaceCheck:
    def __init__(self, fk: EndEffectorFK, box_min, box_max, use_bound: bool = True):
        self.fk = fk
        self.lo, self.hi = np.asarray(box_min, dtype=np.float64), np.asarray(box_max, dtype=np.float64)
        self.reach = None if fk.reach is None or not use_bound else fk.reach * (1.0 + REACH_SLACK)
        self._anchors = np.empty((0, len(fk.reach) if fk.reach is not None else 0))
        self._clearance = np.empty(0)  # of each anchor's end effector to the nearest box face (m)
        self.fk_calls = 0
        self.proven = 0                # configurations found inside without FK
        self.computed = 0              # configurations given to FK

    def proven_inside(self, q: np.ndarray) -> np.ndarray:
        """(B, n_arm) -> (B,) bool: inside by the reach bound alone (False: not proven, may still be inside)."""
        if self.reach is None or not len(self._anchors):
            return np.zeros(len(q), dtype=bool)
        bound = np.abs(q[:, None, :] - self._anchors[None]) @ self.reach  # (B, anchors)
        return ((self._clearance[None] - bound) > MARGIN).any(axis=1)

    def inside(self, q: np.ndarray, ahead: np.ndarray | None = None) -> np.ndarray:
        """(B, n_arm) joint vectors -> (B,) bool: the end effector lies in the box (faces included).
        `ahead`: configurations the arm is heading for; if an FK call is made anyway, they ride along (almost
        free in the same batch) and become anchors for the coming ticks."""
        ok = self.proven_inside(q)
        self.proven += int(ok.sum())
        todo = np.flatnonzero(~ok)
        if todo.size:
            batch = q[todo] if ahead is None or self.reach is None else np.concatenate([q[todo], ahead])
            p = self.fk.positions(batch)
            self.fk_calls, self.computed = self.fk_calls + 1, self.computed + len(batch)
            clearance = np.minimum(p - self.lo, self.hi - p).min(axis=1)
            ok[todo] = clearance[: todo.size] >= 0.0
            self._remember(batch, clearance)
        return ok

    def _remember(self, q: np.ndarray, clearance: np.ndarray) -> None:
        """Newest anchors first; configurations outside the box prove nothing."""
        if self.reach is None:
            return
        keep = clearance > MARGIN
        self._anchors = np.concatenate([q[keep], self._anchors])[:MAX_ANCHORS]
        self._clearance = np.concatenate([clearance[keep], self._clearance])[:MAX_ANCHORS]
