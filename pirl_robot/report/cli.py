"""pirl report — summarise recorded evaluations: success per task and per bundle (Wilson 95% intervals),
interventions and e-stops, latency histograms; PNG plots and a one-page report.md (docs/record_replay.md).

    pirl report recordings/                                  # every session under it -> recordings/report/
    pirl report recordings/SESSION_A recordings/SESSION_B --out outputs/report/eval-2026-11-22
    pirl report recordings/ --bundle 8411e205ceaa            # only episodes of bundles whose id starts so
    pirl report recordings/SESSION --sim-gap                 # recorded commands re-run in the sim twin (sim_gap.md)

Episodes without an outcome are listed and left out of the rates; journals not yet committed (a crash before
the next start) are reported (commit them with `python -m pirl_robot.record.commit DIR`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pirl_robot.record.episodes import RecordingError, find_episodes, pending_journals
from pirl_robot.report import plots
from pirl_robot.report.stats import EpisodeSummary, latency_table, rates, summarize, varying_key


def _pct(r: dict) -> str:
    if not r["decided"]:
        return "n/a"
    lo, hi = r["ci95"]
    return f"{100 * r['success_rate']:.0f}% ({r['successes']}/{r['decided']}) [{100 * lo:.0f}-{100 * hi:.0f}%]"


def _rate_table(rows: list[dict], header: str) -> list[str]:
    out = [f"| {header} | success [95% Wilson CI] | episodes | no outcome | interrupted | e-stops | holds | "
           f"filtered ticks | underruns |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        g = " / ".join(map(str, r["group"])) if isinstance(r["group"], tuple) else r["group"]
        out.append(f"| {g} | {_pct(r)} | {r['episodes']} | {r['unknown']} | {r['interrupted']} | {r['estops']} | "
                   f"{r['holds']} | {100 * r['filtered_ticks'] / max(r['frames'], 1):.1f}% | {r['underruns']} |")
    return out


def _causes(summaries: list[EpisodeSummary]) -> str:
    from collections import Counter

    c = Counter(x for s in summaries for x in s.hold_causes)
    return ", ".join(f"{k} {v}" for k, v in c.most_common()) or "none"


def build_report(paths: list[str], out: Path, bundle_prefix: str = "") -> dict:
    episodes = find_episodes(paths)
    if bundle_prefix:
        episodes = [e for e in episodes if e.bundle_id.startswith(bundle_prefix)]
    if not episodes:
        raise RecordingError(f"no recorded episode under {paths}" + (f" for bundle {bundle_prefix}"
                                                                      if bundle_prefix else ""))
    summaries: list[EpisodeSummary] = [summarize(e) for e in episodes]
    summaries.sort(key=lambda s: (s.start_time, s.session, s.episode))
    out.mkdir(parents=True, exist_ok=True)
    by_task = rates(summaries, lambda s: s.task)
    by_bundle = rates(summaries, lambda s: s.bundle)
    by_both = rates(summaries, lambda s: (s.task, s.bundle))
    by_safety = rates(summaries, lambda s: s.safety)
    key, fields = varying_key(summaries)
    lat = latency_table(summaries)
    figs = {
        "success": plots.success_plot(rates(summaries, key), out / "success.png",
                                      f"success rate, 95% Wilson interval (by {' / '.join(fields)})"),
        "latency": plots.latency_plot(summaries, out / "latency.png"),
        "interventions": plots.interventions_plot(summaries, out / "interventions.png"),
        "episodes": plots.timeline_plot(summaries, out / "episodes.png"),
    }
    pending = pending_journals(paths)
    md = _markdown(paths, summaries, by_task, by_bundle, by_both, by_safety, lat, figs, pending)
    (out / "report.md").write_text(md)
    data = {"sources": [str(p) for p in paths], "episodes": len(summaries),
            "by_task": by_task, "by_bundle": by_bundle, "by_safety": by_safety,
            "by_task_bundle": [{**r, "group": list(r["group"])} for r in by_both],
            "latency": lat, "pending_journals": [str(p) for p in pending],
            "per_episode": [{k: v for k, v in s.__dict__.items() if k != "latency"} | {
                "interventions": s.interventions} for s in summaries]}
    (out / "report.json").write_text(json.dumps(data, indent=1, default=str))
    return {"markdown": out / "report.md", "json": out / "report.json", "figures": figs, "data": data}


def _markdown(paths, summaries, by_task, by_bundle, by_both, by_safety, lat, figs, pending) -> str:
    n = len(summaries)
    decided = sum(s.result in ("success", "failure") for s in summaries)
    lines = [f"# Evaluation report ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"{n} episodes ({decided} with an outcome) from {', '.join(map(str, paths))}; "
             f"{len({s.session for s in summaries})} sessions, operators: "
             f"{', '.join(sorted({s.operator or '-' for s in summaries}))}.", ""]
    if pending:
        lines += [f"**{len(pending)} journal(s) not committed yet** (an episode in progress, or a crash: the next "
                  f"recorder start or `python -m pirl_robot.record.commit DIR` commits them): "
                  + ", ".join(str(p) for p in pending), ""]
    lines += ["## Success", ""] + _rate_table(by_task, "task") + [""] + _rate_table(by_bundle, "bundle") + [""]
    if len(by_both) > 1:
        lines += _rate_table(by_both, "task / bundle") + [""]
    if len(by_safety) > 1:
        lines += _rate_table(by_safety, "safety stage") + [""]
    lines += [f"![success]({figs['success'].name})", "", "## Interventions", "",
              f"e-stops: {sum(s.estops for s in summaries)}, holds (safety filter or stale inputs): "
              f"{sum(s.holds for s in summaries)} ({_causes(summaries)}), policy errors: "
              f"{sum(s.policy_errors for s in summaries)}, "
              f"ticks changed by the safety filter: {sum(s.filtered_ticks for s in summaries)} of "
              f"{sum(s.frames for s in summaries)}.", "", f"![interventions]({figs['interventions'].name})", "",
              "## Latency", "", "| metric | n | p50 | p95 | p99 | max |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['metric']} | {r['n']} | {r['p50']:.2f} | {r['p95']:.2f} | {r['p99']:.2f} | {r['max']:.2f} |"
              for r in lat]
    lines += ["", f"![latency]({figs['latency'].name})", "", "## Episodes", "", f"![episodes]({figs['episodes'].name})",
              "", "| # | session / episode | task | bundle | safety | outcome | frames | s | e-stops | holds | "
              "filtered |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s, label in zip(summaries, plots.episode_labels(summaries)):
        res = f"{s.result} ({s.source})" + (" interrupted" if s.interrupted else "")
        lines.append(f"| {label} | {s.name} | {s.task} | {s.bundle[:12]} | {s.safety} | {res} | {s.frames} | "
                     f"{s.duration_s:.1f} | {s.estops} | {s.holds} | {s.filtered_ticks} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pirl report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", help="record dirs, session dirs or episode dirs")
    ap.add_argument("--out", default=None, help="output directory (default: <first path>/report)")
    ap.add_argument("--bundle", default="", help="only episodes of bundles whose id starts with this")
    ap.add_argument("--sim-gap", action="store_true", help="sim-real gap: the episodes' applied commands re-executed "
                    "in the simulated twin, per-joint RMSE / lag / max deviation and plots (report/sim_gap.py)")
    ap.add_argument("--inject-delay-ticks", type=int, default=0, help="--sim-gap check: the real side as an arm "
                    "that applies commands this many periods late")
    ap.add_argument("--inject-gain", type=float, default=1.0, help="--sim-gap check: the real side as an arm that "
                    "moves this fraction of the way to each command per period")
    a = ap.parse_args(argv)
    out = Path(a.out) if a.out else Path(a.paths[0]) / "report"
    if a.sim_gap:  # issue 15
        return _sim_gap(a, out)
    try:
        res = build_report(a.paths, out, a.bundle)
    except RecordingError as e:
        print(f"pirl report: {e}", file=sys.stderr)
        return 2
    print(res["markdown"].read_text())
    print(f"report: {res['markdown']}  (+ {', '.join(p.name for p in res['figures'].values())}, report.json)")
    return 0


def _sim_gap(a, out: Path) -> int:
    from pirl_robot.report.sim_gap import build_sim_gap_report

    try:
        eps = [e for e in find_episodes(a.paths) if e.bundle_id.startswith(a.bundle)]
        if not eps:
            raise RecordingError(f"no recorded episode under {a.paths}")
        build_sim_gap_report(eps, out, a.inject_delay_ticks, a.inject_gain)
    except RecordingError as e:
        print(f"pirl report: {e}", file=sys.stderr)
        return 2
    print((out / "sim_gap.md").read_text())
    print(f"report: {out / 'sim_gap.md'} (+ sim_gap.json, one plot per episode)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
