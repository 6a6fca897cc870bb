"""Property-based tests: whatever the policy sends (NaN, inf, huge, wrong length, nothing), whatever the measured
state says, and whatever the operator does, every command the filter applies stays inside every limit.

The limits are checked by `LimitChecker`, written from the raw yaml values and the documented rules only (no
code from pirl_robot.safety), with the end-effector position from SAPIEN's Pinocchio model, not the filter's
pytorch_kinematics chain. A "case" is one applied command checked. Default size: a few thousand cases; the slow
run (`pytest -m slow tests/test_safety_properties.py -s`) targets PIRL_SAFETY_CASES (default 1e6) cases.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pirl_robot.safety import Mode, SafetyConfig, SafetyFilter, load_safety_config
from safety_utils import PinocchioFK

ROOT = Path(__file__).resolve().parents[1]
PANDA_YAML = ROOT / "configs" / "robot" / "panda.yaml"
PANDA_REST = np.array([0.0, np.pi / 8, 0.0, -np.pi * 5 / 8, 0.0, np.pi * 3 / 4, np.pi / 4, 1.0])
HZ = 50.0
T = 1.0 / HZ
# float rounding allowance per quantity (positions ~1e-16 rad; acceleration divides by T^2; two FK libraries)
TOL = {"position": 1e-12, "gripper": 1e-12, "step": 1e-12, "velocity": 1e-10, "acceleration": 1e-8,
       "workspace": 1e-6, "estop": 0.0, "continuity": 0.0}


# --- the independent checker ------------------------------------------------------------------------------------
@dataclass
class Report:
    cases: int = 0
    worst: dict[str, float] = field(default_factory=lambda: {k: 0.0 for k in TOL})

    def add(self, kind: str, amount: float) -> None:
        self.worst[kind] = max(self.worst[kind], float(amount))

    def merge(self, other: "Report") -> None:
        self.cases += other.cases
        for k, v in other.worst.items():
            self.add(k, v)

    def beyond_tolerance(self) -> float:
        return max(max(0.0, self.worst[k] - TOL[k]) for k in TOL)


class LimitChecker:
    """Follows the applied command stream and measures how far each tick is outside each limit (0 = inside)."""

    def __init__(self, safety: dict, fk=None):
        joints, g = safety["joints"], safety.get("gripper")
        rows = [(j.get("min_position", -math.inf) if j.get("has_position_limits", True) else -math.inf,
                 j.get("max_position", math.inf) if j.get("has_position_limits", True) else math.inf,
                 j.get("position_margin", 0.0),
                 j["max_velocity"] if j.get("has_velocity_limits", True) else math.inf,
                 j["max_acceleration"] if j.get("has_acceleration_limits", True) else math.inf,
                 j["max_step"]) for j in joints]
        if g:
            rows.append((g["min_position"], g["max_position"], 0.0, g["max_velocity"], math.inf, g["max_step"]))
        self.lo, self.hi, margin, self.vmax, self.amax, self.step = (np.array(c, float) for c in zip(*rows))
        self.soft_lo, self.soft_hi = self.lo + margin, self.hi - margin
        self.n, self.n_arm, self.has_gripper = len(rows), len(joints), bool(g)
        with np.errstate(invalid="ignore"):
            band = np.where(np.isfinite(self.hi - self.lo), safety.get("reject_beyond", 0.25) * (self.hi - self.lo), 0)
        self.valid_lo, self.valid_hi = self.lo - band, self.hi + band
        ws = safety.get("workspace")
        self.box = (np.array(ws["min"]), np.array(ws["max"])) if ws and ws.get("enabled", True) else None
        self.fk = fk
        self.q = self.v = None          # last applied command and its velocity
        self.outside = None             # how far the last command was outside the soft limits (start band)
        self.last_valid_meas = None
        self.resume_asked = False
        self.estop_hold = None          # the e-stop's hold: exempt from limits, must stay put until a restart
        self.estop_latched = False
        self.report = Report()

    def valid(self, meas) -> np.ndarray | None:
        try:
            m = np.array(meas, dtype=float)
        except (TypeError, ValueError):
            return None
        if m.shape != (self.n,) or not np.isfinite(m).all() or ((m < self.valid_lo) | (m > self.valid_hi)).any():
            return None
        return m

    def _soft_outside(self, q):
        return np.maximum(0.0, np.maximum(self.soft_lo - q, q - self.soft_hi))

    def restart_from(self, q):
        self.q, self.v, self.outside = q.copy(), np.zeros(self.n), self._soft_outside(q)

    def check_tick(self, command, resynced: bool, meas) -> None:
        m = self.valid(meas)
        if self.estop_hold is not None and not resynced:  # latched, then reset: exactly the hold until a restart
            self.report.add("estop", 0.0 if command is not None and np.array_equal(command, self.estop_hold) else 1.0)
            self.report.cases += 1
            return
        if command is None:
            self.report.add("continuity", 1.0 if self.q is not None else 0.0)  # once started, always a command
            return
        if resynced:  # a (re)start: only after an operator resume, from a valid measured state at most 1 % of
            #           the range past a hard limit (it starts at the limit then)
            slack = 0.01 * np.where(np.isfinite(self.hi - self.lo), self.hi - self.lo, 0.0)
            near = m is not None and bool(((m >= self.lo - slack) & (m <= self.hi + slack)).all())
            self.report.add("continuity", 0.0 if (self.resume_asked and near) else 1.0)
            self.report.add("estop", 1.0 if self.estop_latched else 0.0)
            self.resume_asked = False
            self.estop_hold = None
            self.restart_from(np.clip(m, self.lo, self.hi) if near else self.q)
        elif self.q is None:
            self.report.add("continuity", 1.0)
            return
        self._check_limits(np.asarray(command, float))

    def _check_limits(self, q) -> None:
        r = self.report
        r.cases += 1
        arm = slice(0, self.n_arm)
        outside = self._soft_outside(q)
        hard = np.maximum(0.0, np.maximum(self.lo - q, q - self.hi))
        pos = np.maximum(hard, outside - self.outside)  # in the soft range, or no further out than before
        r.add("position", pos[arm].max(initial=0.0))
        if self.has_gripper:
            r.add("gripper", pos[-1])
        dq = q - self.q
        r.add("step", np.max(np.abs(dq) - self.step))
        v = dq / T
        r.add("velocity", np.max(np.abs(v) - self.vmax))
        acc = np.abs(v - self.v) / T
        r.add("acceleration", np.max(np.where(np.isfinite(self.amax), acc - self.amax, 0.0)))
        if self.box is not None:
            p = self.fk(q[arm])
            r.add("workspace", np.max(np.maximum(self.box[0] - p, p - self.box[1])))
        self.q, self.v, self.outside = q, v, np.minimum(self.outside, outside)

    def on_estop(self, command, meas) -> None:
        m = self.valid(meas)
        m = self.last_valid_meas if m is None else m
        expected = np.clip(m, self.lo, self.hi) if m is not None else self.q
        ok = (command is None and expected is None) or (command is not None and expected is not None
                                                        and np.array_equal(command, expected))
        self.report.add("estop", 0.0 if ok else 1.0)
        self.estop_hold, self.estop_latched = command, True
        if command is not None:
            self.restart_from(command)
        self.resume_asked = False


# --- driving a filter with a generated sequence ------------------------------------------------------------------
OPS = ("none", "resume", "hold", "stop", "estop", "reset")


def run_sequence(filt: SafetyFilter, checker: LimitChecker, ticks) -> None:
    """ticks: iterable of (op, raw, measured, dt)."""
    for op, raw, meas, dt in ticks:
        if op == "resume":
            was_moving = filt.mode in (Mode.STARTING, Mode.RUNNING)
            ok, _ = filt.resume()
            checker.resume_asked |= ok and not was_moving
        elif op == "hold":
            filt.hold("test_hold")
            checker.resume_asked = False
        elif op == "stop":
            filt.stop("test_stop")
            checker.resume_asked = False
        elif op == "estop":
            checker.on_estop(filt.estop("test", measured=meas).command, meas)
        elif op == "reset":  # succeeds exactly when the e-stop is latched
            checker.report.add("estop", 0.0 if filt.reset_estop() == checker.estop_latched else 1.0)
            checker.estop_latched = False
        out = filt.step(raw, meas, dt)
        if checker.valid(meas) is not None:
            checker.last_valid_meas = checker.valid(meas)
        checker.check_tick(out.command, out.resynced, meas)


def random_vector(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, spread: float = 1.3) -> np.ndarray:
    lo_f, hi_f = np.where(np.isfinite(lo), lo, -4.0), np.where(np.isfinite(hi), hi, 4.0)
    mid, half = (lo_f + hi_f) / 2, (hi_f - lo_f) / 2
    return mid + half * rng.uniform(-spread, spread, size=lo.shape)


def generate_ticks(rng: np.random.Generator, checker: LimitChecker, n_ticks: int, home: np.ndarray | None,
                   p_bad: float, p_op: float, p_jump: float, noise: float, mode=lambda: Mode.RUNNING):
    """A seeded random stream: mostly smooth policy targets, with jumps, garbage and operator actions mixed in.
    Like an operator, it resumes after a hold or stop and resets the e-stop after a while (`mode` is read only)."""
    n = checker.n
    finite = np.isfinite(checker.hi - checker.lo)
    half = np.where(finite, (checker.hi - checker.lo) / 2, 2.0)  # per-entry scale of the motion
    keep_lo = np.where(finite, checker.lo - 0.05 * half, -np.inf)
    keep_hi = np.where(finite, checker.hi + 0.05 * half, np.inf)
    target = home.copy() if home is not None else random_vector(rng, checker.soft_lo, checker.soft_hi, 0.9)
    yield "resume", target, target, T
    for _ in range(n_ticks - 1):
        if rng.random() < p_jump:
            target = (home + rng.normal(0, 0.2, n) * half if home is not None and rng.random() < 0.7
                      else random_vector(rng, checker.lo, checker.hi, 1.1))
        else:  # a policy's drift: mostly inside the range, sometimes a little beyond it
            target = np.clip(target + rng.normal(0, noise, n) * half, keep_lo, keep_hi)
        raw = target
        if rng.random() < p_bad:
            kind = rng.integers(6)
            raw = (np.where(rng.random(n) < 0.5, np.nan, target) if kind == 0 else
                   np.where(rng.random(n) < 0.5, np.inf * rng.choice([-1, 1]), target) if kind == 1 else
                   target * 1e6 + 1.0 if kind == 2 else
                   target[: max(0, n - 1)] if kind == 3 else
                   None if kind == 4 else "not a command")
        applied = checker.q if checker.q is not None else target
        meas = applied + rng.normal(0, 0.002, n) * half
        if rng.random() < p_bad / 3:
            meas = np.full(n, np.nan) if rng.random() < 0.5 else random_vector(rng, checker.lo, checker.hi, 1.5)
        op = "none"
        if rng.random() < p_op:
            op = OPS[rng.integers(2, len(OPS) - 1)]  # hold, stop, estop
        elif mode() == Mode.ESTOP and rng.random() < 0.1:
            op = "reset"
        elif mode() not in (Mode.STARTING, Mode.RUNNING) and rng.random() < 0.2:
            op = "resume"
            target = applied.copy()  # the policy restarts from where the arm is
        dt = T if rng.random() < 0.8 else float(rng.uniform(0, 3 * T))
        yield op, raw, meas, dt


# --- configs -----------------------------------------------------------------------------------------------------
@st.composite
def random_safety_section(draw) -> dict:
    """A random but valid limits config (1-4 joints, any has_* flags, optional gripper), no workspace."""
    f = st.floats
    joints = []
    for i in range(draw(st.integers(1, 4))):
        lo = draw(f(-3.0, 1.0))
        hi = lo + draw(f(0.2, 4.0))
        j = {"name": f"j{i}", "max_step": draw(f(0.001, 0.2)), "min_position": lo, "max_position": hi,
             "position_margin": draw(f(0.0, 0.09))}
        if not draw(st.booleans()) and i > 0:  # a continuous joint now and then
            j = {"name": f"j{i}", "max_step": j["max_step"], "has_position_limits": False}
        if draw(st.integers(0, 4)) == 0:
            j["has_velocity_limits"] = False
        else:
            j["max_velocity"] = draw(f(0.05, 3.0))
        if draw(st.integers(0, 4)) == 0:
            j["has_acceleration_limits"] = False
        else:
            j["max_acceleration"] = draw(f(0.5, 30.0))
        if draw(st.booleans()):
            j.update(has_jerk_limits=True, max_jerk=draw(f(5.0, 2000.0)))
        joints.append(j)
    section = {"joints": joints, "reject_beyond": draw(f(0.0, 0.5)),
               "start": {"velocity_scale": draw(f(0.1, 1.0)), "tolerance": draw(f(0.001, 0.1))}}
    if draw(st.booleans()):
        glo = draw(f(-0.05, 0.05))
        section["gripper"] = {"name": "gripper", "min_position": glo, "max_position": glo + draw(f(0.01, 1.0)),
                              "max_velocity": draw(f(0.05, 2.0)), "max_step": draw(f(0.001, 0.1))}
    return section


@pytest.fixture(scope="module")
def panda():
    raw = yaml.safe_load(PANDA_YAML.read_text())["safety"]
    cfg = load_safety_config(PANDA_YAML)
    filt = SafetyFilter(cfg, HZ)  # built once: the FK chain is reused, each example gets a fresh filter below
    return raw, cfg, filt.fk, PinocchioFK(cfg.workspace.urdf, cfg.workspace.ee_link, len(cfg.joints))


def print_summary(name: str, report: Report, capsys) -> None:
    with capsys.disabled():
        print(f"\n[{name}] {report.cases} cases; worst violation beyond float rounding: {report.beyond_tolerance():g}; "
              f"raw worst: " + ", ".join(f"{k} {v:.2g}" for k, v in report.worst.items()))


# --- element-wise hypothesis sequences (shrinkable; CI size) --------------------------------------------------------
def special_vectors(n: int):
    finite = st.floats(-10.0, 10.0)
    special = st.sampled_from([math.nan, math.inf, -math.inf, 1e6, -1e6, 1e300])
    vec = st.lists(st.one_of(finite, finite, finite, special), min_size=n, max_size=n).map(np.array)
    wrong = st.integers(0, n + 2).filter(lambda k: k != n).flatmap(
        lambda k: st.lists(finite, min_size=k, max_size=k).map(np.array))
    return st.one_of(vec, vec, vec, wrong, st.none())


@given(section=random_safety_section(), data=st.data())
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_any_tick_sequence_stays_in_limits_random_configs(section, data):
    cfg = SafetyConfig.from_dict(section)
    filt, checker = SafetyFilter(cfg, HZ), LimitChecker(section)
    n = len(cfg.entry_names)
    home = random_vector(np.random.default_rng(0), checker.soft_lo, checker.soft_hi, 0.5)
    ticks = [("resume", home, home, T)]
    for _ in range(data.draw(st.integers(5, 40))):
        ticks.append((data.draw(st.sampled_from(OPS[:1] * 12 + OPS[1:])), data.draw(special_vectors(n)),
                      data.draw(special_vectors(n)), data.draw(st.sampled_from([T, T, T, 0.0, 0.5 * T, 3 * T]))))
    run_sequence(filt, checker, ticks)
    RANDOM_TOTAL.merge(checker.report)
    assert checker.report.beyond_tolerance() == 0.0, checker.report.worst


RANDOM_TOTAL = Report()


def test_random_config_summary(capsys):
    """Runs after the property above (file order): prints the number of cases and the worst violation."""
    print_summary("random configs, element-wise sequences", RANDOM_TOTAL, capsys)
    assert RANDOM_TOTAL.beyond_tolerance() == 0.0


# --- seeded long streams (many ticks per example) ------------------------------------------------------------------
def stream_cases(section: dict, cfg: SafetyConfig, seed: int, n_ticks: int, mix: tuple, fk=None, check_fk=None,
                 home=None) -> Report:
    filt = SafetyFilter(cfg, HZ, fk=fk)
    checker = LimitChecker(section, check_fk)
    run_sequence(filt, checker, generate_ticks(np.random.default_rng(seed), checker, n_ticks, home, *mix,
                                               mode=lambda: filt.mode))
    return checker.report


# (p_bad, p_op, p_jump, noise): how often garbage, operator holds/stops/e-stops, target jumps; target drift per tick
MIXES = st.tuples(st.floats(0.0, 0.05), st.floats(0.0, 0.02), st.floats(0.0, 0.1), st.floats(0.0005, 0.01))


@given(section=random_safety_section(), seed=st.integers(0, 2**32 - 1), mix=MIXES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_long_streams_stay_in_limits_random_configs(section, seed, mix):
    report = stream_cases(section, SafetyConfig.from_dict(section), seed, 100, mix)
    STREAM_TOTAL.merge(report)
    assert report.beyond_tolerance() == 0.0, report.worst


STREAM_TOTAL = Report()


@pytest.mark.sim
def test_panda_with_workspace_stays_in_limits(panda, capsys):
    """The shipped panda.yaml, FK workspace box included, on seeded streams that push against the box."""
    section, cfg, fk, pin = panda
    total = Report()

    @given(seed=st.integers(0, 2**32 - 1), mix=MIXES)
    @settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    def prop(seed, mix):
        report = stream_cases(section, cfg, seed, 80, mix, fk=fk, check_fk=pin, home=PANDA_REST)
        total.merge(report)
        assert report.beyond_tolerance() == 0.0, report.worst

    prop()
    total.merge(STREAM_TOTAL)
    print_summary("long streams (random configs + panda workspace)", total, capsys)
    assert total.cases > 1000 and total.beyond_tolerance() == 0.0


# --- the long run ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.sim
def test_million_cases(panda, capsys):
    """PIRL_SAFETY_CASES (default 1e6) checked commands: 80 % random configs, 20 % panda with the workspace box."""
    section, cfg, fk, pin = panda
    target = int(float(os.environ.get("PIRL_SAFETY_CASES", "1e6")))
    ticks, total = 1000, Report()

    @given(section=random_safety_section(), seed=st.integers(0, 2**32 - 1), mix=MIXES)
    @settings(max_examples=max(1, int(0.8 * target) // ticks), deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def random_configs(section, seed, mix):
        report = stream_cases(section, SafetyConfig.from_dict(section), seed, ticks, mix)
        total.merge(report)
        assert report.beyond_tolerance() == 0.0, report.worst

    @given(seed=st.integers(0, 2**32 - 1), mix=MIXES)
    @settings(max_examples=max(1, int(0.2 * target) // ticks), deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def panda_box(seed, mix):
        report = stream_cases(section, cfg, seed, ticks, mix, fk=fk, check_fk=pin, home=PANDA_REST)
        total.merge(report)
        assert report.beyond_tolerance() == 0.0, report.worst

    random_configs()
    panda_box()
    print_summary(f"long run, target {target}", total, capsys)
    assert total.beyond_tolerance() == 0.0


# --- the checker itself can fail -------------------------------------------------------------------------------------
def scripted_ticks(target: np.ndarray, n: int, nan_at: int | None = None):
    ticks = [("resume", PANDA_REST, PANDA_REST, T)]
    for k in range(n):
        ticks.append(("none", np.full(8, np.nan) if k == nan_at else target, PANDA_REST, T))
    return ticks


@pytest.mark.sim
@pytest.mark.parametrize("sabotage, kind", [
    ("faster", "velocity"),           # velocity cap 5 % above the limit
    ("instant_hold", "acceleration"),  # holds by stopping dead instead of braking
    ("no_box", "workspace"),           # workspace check switched off
    ("wide_soft_limits", "position"),  # soft limits 0.01 rad too wide
])
def test_checker_catches_a_sabotaged_filter(panda, monkeypatch, sabotage, kind):
    section, cfg, fk, pin = panda
    filt = SafetyFilter(cfg, HZ, fk=fk)
    far = PANDA_REST.copy()
    far[0] += 2.0  # joint 1 swings the arm round at full speed (until the box side stops it)
    ticks = scripted_ticks(far, 200)
    if sabotage == "faster":
        filt.vmax = filt.vmax * 1.05
    elif sabotage == "instant_hold":
        from pirl_robot.safety import limiter
        monkeypatch.setattr(limiter, "braking_velocity", lambda v, a, period: 0.0 * v)
        ticks = scripted_ticks(far, 120, nan_at=100)  # a NaN at full speed: hold
    elif sabotage == "no_box":
        filt.fk = None
        ticks = scripted_ticks(np.array([0.0, 0.8, 0.0, -1.9, 0.0, np.pi * 3 / 4, np.pi / 4, 1.0]), 200)  # the table
    else:  # wrist joint 7 (it does not move the end effector) past its limit
        filt.soft_lo, filt.soft_hi = filt.soft_lo - 0.01, filt.soft_hi + 0.01
        beyond = PANDA_REST.copy()
        beyond[6] += 3.5
        ticks = scripted_ticks(beyond, 250)
    checker = LimitChecker(section, pin)
    run_sequence(filt, checker, ticks)
    assert checker.report.worst[kind] > 10 * max(TOL[kind], 1e-9), checker.report.worst
    intact = LimitChecker(section, pin)  # the same script through an intact filter is clean
    monkeypatch.undo()
    run_sequence(SafetyFilter(cfg, HZ, fk=fk), intact, ticks)
    assert intact.report.beyond_tolerance() == 0.0 and intact.report.cases == len(ticks)
