"""Per-episode figures and grouped success rates (Wilson 95% intervals) from recorded episodes.

Definitions (one place):
  success rate   successes / (successes + failures); episodes without an outcome (unknown) or interrupted by a
                 crash are counted and listed, never guessed into the rate.
  e-stops        safety events with cause "estop".
  holds          each time the safety filter took over from the policy (into mode "hold": an input fault, a
                 no/bad/out-of-range command, a watchdog fault), with its cause; with the unfiltered stage, each
                 stretch of ticks it skipped for a stale input.
  interventions  e-stops + holds: every time something other than the policy decided what the arm did.
  filtered ticks ticks where the command sent differs from the policy's action (limits, smooth start, braking).
  underruns      executing ticks without a policy action (the chunk was late).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from pirl_robot.record.episodes import RecordedEpisode

LIMIT_CAUSES = ("position_limit", "velocity_limit", "acceleration_limit", "jerk_limit", "workspace", "tick_timing")
LATENCY_KEYS = {"policy_ms": "policy inference (ms)", "tick_overhead_ms": "node overhead per tick (ms)",
                "state_age_ms": "joint state age at the tick (ms)", "wait_ms": "tick waited for a chunk (ms)"}


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    from pirl_robot.evaluate import wilson_interval as wilson

    return wilson(successes, n, z)


@dataclass
class EpisodeSummary:
    name: str
    session: str
    episode: int
    task: str
    bundle: str
    operator: str
    safety: str        # the deploy node's safety stage ("pirl_robot.safety (<config>)" or the pass-through)
    result: str
    source: str
    interrupted: bool
    frames: int
    duration_s: float
    estops: int
    holds: int
    input_faults: int
    policy_errors: int
    filtered_ticks: int
    underruns: int
    start_time: str = ""
    hold_causes: list[str] = field(default_factory=list)
    latency: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def interventions(self) -> int:
        return self.estops + self.holds


def _cause(e: dict) -> str:
    return str(e.get("cause") or e.get("kind") or "").split(":")[0]


def summarize(ep: RecordedEpisode) -> EpisodeSummary:
    c = ep.columns()
    safety = [e for e in ep.events if e.get("kind") == "safety"]
    estops = sum(_cause(e) == "estop" for e in safety)
    faults = sum(e.get("kind") == "fault" for e in ep.events)  # one per stretch of stale/missing inputs
    if "UNFILTERED" in str(ep.meta.get("params", {}).get("safety", "")):
        hold_causes = ["stale_input"] * faults  # the pass-through sends nothing while an input is stale
    else:
        hold_causes = _holds(safety)
    both = c["command.sent"] & c["action.valid"]
    applied = ep.schema.command_to_action(c["command.applied"])
    changed = both & (np.abs(applied - c["action"]).max(axis=1) > 1e-5)
    executing = c["policy.executing"]
    chunk = c["policy.chunk_new"]
    out = ep.outcome
    return EpisodeSummary(
        name=ep.name, session=ep.meta["session"], episode=int(ep.meta["episode"]), task=ep.task or "(none)",
        bundle=ep.bundle_id or "(unknown)", operator=ep.meta.get("operator", ""),
        safety=_safety_label(ep.meta.get("params", {})), result=out.get("result", "unknown"),
        source=out.get("source", ""), interrupted=bool(ep.meta.get("interrupted")), frames=int(len(executing)),
        duration_s=float(c["timing.t_s"][-1]) if len(executing) else 0.0, estops=estops,
        holds=len(hold_causes), hold_causes=hold_causes,
        input_faults=faults, policy_errors=int(ep.meta.get("policy_errors", 0)), filtered_ticks=int(changed.sum()),
        underruns=int((executing & ~c["action.valid"]).sum()), start_time=ep.meta.get("start_time") or "",
        latency={"policy_ms": c["policy.latency_ms"][chunk], "tick_overhead_ms": c["timing.tick_overhead_ms"],
                 "state_age_ms": c["timing.state_age_ms"], "wait_ms": c["timing.wait_ms"][c["timing.wait_ms"] > 0]})


def _holds(safety: list[dict]) -> list[str]:
    """The cause of each time the filter went into HOLD. A tick's events all carry the mode at the tick's end,
    so events are grouped by tick: a hold starts on a tick ending in "hold" after one that did not."""
    out, prev = [], None
    ticks: dict[int, list[dict]] = {}
    for e in safety:
        ticks.setdefault(int(e.get("tick", 0)), []).append(e)
    for _, group in sorted(ticks.items()):
        mode = group[-1].get("mode")
        if mode == "hold" and prev != "hold":
            causes = [_cause(e) for e in group if _cause(e) not in LIMIT_CAUSES + ("start", "start_done")]
            out.append(causes[0] if causes else "hold")
        prev = mode
    return out


def _safety_label(params: dict) -> str:
    name = str(params.get("safety", ""))
    if "UNFILTERED" in name:
        return "unfiltered"
    cfg = str(params.get("safety_config", ""))
    return f"filter {cfg.rsplit('/', 1)[-1]}" if cfg else (name or "?")


def varying_key(summaries: list[EpisodeSummary]):
    """Group by whichever of task, bundle and safety stage differ between the episodes (task at least)."""
    fields = [f for f in ("task", "bundle", "safety") if len({getattr(s, f) for s in summaries}) > 1] or ["task"]
    return lambda s: tuple(getattr(s, f) for f in fields), fields


def rates(summaries: list[EpisodeSummary], key) -> list[dict]:
    """Success per group (key: a function of an episode summary), with the Wilson 95% interval."""
    groups: dict = {}
    for s in summaries:
        groups.setdefault(key(s), []).append(s)
    out = []
    for g, eps in sorted(groups.items(), key=lambda kv: str(kv[0])):
        k = sum(e.result == "success" for e in eps)
        n = k + sum(e.result == "failure" for e in eps)
        lo, hi = wilson_interval(k, n)
        out.append({"group": g, "episodes": len(eps), "decided": n, "successes": k,
                    "success_rate": k / n if n else float("nan"), "ci95": (lo, hi),
                    "unknown": sum(e.result not in ("success", "failure") for e in eps),
                    "interrupted": sum(e.interrupted for e in eps), "estops": sum(e.estops for e in eps),
                    "holds": sum(e.holds for e in eps), "interventions": sum(e.interventions for e in eps),
                    "hold_causes": dict(Counter(c for e in eps for c in e.hold_causes)),
                    "input_faults": sum(e.input_faults for e in eps),
                    "filtered_ticks": sum(e.filtered_ticks for e in eps), "frames": sum(e.frames for e in eps),
                    "underruns": sum(e.underruns for e in eps)})
    return out


def latency_table(summaries: list[EpisodeSummary]) -> list[dict]:
    rows = []
    for k, label in LATENCY_KEYS.items():
        v = np.concatenate([s.latency.get(k, np.zeros(0)) for s in summaries]) if summaries else np.zeros(0)
        v = v[np.isfinite(v)]
        rows.append({"metric": label, "key": k, "n": int(v.size),
                     **({q: float(np.percentile(v, p)) for q, p in (("p50", 50), ("p95", 95), ("p99", 99))}
                        if v.size else {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}),
                     "max": float(v.max()) if v.size else float("nan")})
    return rows
