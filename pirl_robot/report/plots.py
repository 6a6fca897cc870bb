"""The report's figures (PNG): success with intervals, latency histograms, interventions, episode timeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pirl_robot.report.stats import LATENCY_KEYS, EpisodeSummary
from pirl_robot.utils.plots import pyplot, save_figure

OUTCOME_COLORS = {"success": "tab:green", "failure": "tab:red", "unknown": "tab:gray", "interrupted": "tab:orange"}


def success_plot(rows: list[dict], out: Path, title: str) -> Path:
    """One bar per group: success rate, Wilson 95% interval, successes/decided written on it."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5.5, 1.8 * len(rows) + 2), 4.2))
    x = np.arange(len(rows))
    rate = np.array([r["success_rate"] if r["decided"] else 0.0 for r in rows])
    lo = np.array([r["ci95"][0] for r in rows])
    hi = np.array([r["ci95"][1] for r in rows])
    ax.bar(x, rate, color="tab:blue", alpha=0.75)
    ax.errorbar(x, rate, yerr=np.vstack([rate - lo, hi - rate]), fmt="none", ecolor="k", capsize=5, lw=1.2)
    for i, r in enumerate(rows):
        ax.text(i, min(0.97, hi[i] + 0.03), f"{r['successes']}/{r['decided']}" +
                (f" (+{r['unknown']} ?)" if r["unknown"] else ""), ha="center", fontsize=8)
    ax.set_xticks(x, [_label(r["group"]) for r in rows], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, out)


def latency_plot(summaries: list[EpisodeSummary], out: Path) -> Path:
    """One histogram per latency, one colour per bundle."""
    plt = pyplot()
    bundles = sorted({s.bundle for s in summaries})
    fig, axes = plt.subplots(1, len(LATENCY_KEYS), figsize=(4.0 * len(LATENCY_KEYS), 3.4))
    for ax, (key, label) in zip(axes, LATENCY_KEYS.items()):
        allv = [np.concatenate([s.latency.get(key, np.zeros(0)) for s in summaries if s.bundle == b]) for b in bundles]
        finite = np.concatenate(allv) if allv else np.zeros(0)
        finite = finite[np.isfinite(finite)]
        if finite.size == 0:
            ax.text(0.5, 0.5, "no samples", ha="center", va="center", transform=ax.transAxes)
        else:
            bins = np.linspace(0, np.percentile(finite, 99.5) * 1.05 + 1e-9, 40)
            for b, v in zip(bundles, allv):
                v = v[np.isfinite(v)]
                if v.size:
                    ax.hist(np.clip(v, 0, bins[-1]), bins=bins, alpha=0.6, label=f"{b[:10]} (n={v.size})")
            p50, p99 = np.percentile(finite, [50, 99])
            ax.axvline(p50, color="k", ls="--", lw=1)
            ax.axvline(p99, color="k", ls=":", lw=1)
            ax.set_title(f"{label}\np50 {p50:.2f}, p99 {p99:.2f}", fontsize=9)
            ax.legend(fontsize=7)
        ax.set(xlabel="ms", ylabel="count")
        ax.grid(alpha=0.3)
    return save_figure(fig, out)


def episode_labels(summaries: list[EpisodeSummary]) -> list[str]:
    """'A1', 'A2', 'B1'...: session letter (recording order) + episode number."""
    sessions: dict[str, str] = {}
    for s in summaries:
        sessions.setdefault(s.session, _letters(len(sessions)))
    return [f"{sessions[s.session]}{s.episode}" for s in summaries]


def _letters(i: int) -> str:
    return chr(65 + i) if i < 26 else _letters(i // 26 - 1) + chr(65 + i % 26)


def _session_breaks(ax, summaries: list[EpisodeSummary]) -> None:
    for i in range(1, len(summaries)):
        if summaries[i].session != summaries[i - 1].session:
            ax.axvline(i - 0.5, color="k", lw=0.8, ls="--", alpha=0.6)


def interventions_plot(summaries: list[EpisodeSummary], out: Path) -> Path:
    """Per episode: e-stops, holds, input faults (bars) and the share of ticks the filter changed (dots)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(7, 0.4 * len(summaries) + 3), 4.2))
    x = np.arange(len(summaries))
    bottom = np.zeros(len(summaries))
    for label, vals, color in (("e-stops", [s.estops for s in summaries], "tab:red"),
                               ("holds", [s.holds for s in summaries], "tab:orange"),
                               ("policy errors", [s.policy_errors for s in summaries], "tab:purple")):
        ax.bar(x, vals, bottom=bottom, label=label, color=color)
        bottom += np.asarray(vals, dtype=float)
    ax.set(xlabel="episode (letter: session)", ylabel="count")
    ax.set_xticks(x, episode_labels(summaries), fontsize=7)
    _session_breaks(ax, summaries)
    ax2 = ax.twinx()
    ax2.plot(x, [100.0 * s.filtered_ticks / max(s.frames, 1) for s in summaries], "ko", ms=4,
             label="ticks changed by the safety filter (%)")
    ax2.set(ylabel="% of ticks", ylim=(0, 105))
    for i, s in enumerate(summaries):
        ax.axvspan(i - 0.5, i + 0.5, color=OUTCOME_COLORS.get(s.result if not s.interrupted else "interrupted",
                                                               "tab:gray"), alpha=0.08)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=4)
    ax.set_title("interventions per episode (background: green success, red failure, grey unknown)", fontsize=9)
    ax.set_ylim(0, max(1.0, bottom.max() * 1.15))
    return save_figure(fig, out)


def timeline_plot(summaries: list[EpisodeSummary], out: Path) -> Path:
    """Episodes in recording order: duration, coloured by outcome; marks e-stops."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(summaries) + 3), 3.8))
    for i, s in enumerate(summaries):
        key = "interrupted" if s.interrupted else s.result
        ax.bar(i, s.duration_s, color=OUTCOME_COLORS.get(key, "tab:gray"))
        if s.estops:
            ax.text(i, s.duration_s, "E", ha="center", va="bottom", color="tab:red", fontsize=9)
    from matplotlib.patches import Patch

    ax.set(xlabel="episode (letter: session), recording order", ylabel="duration (s)",
           title="episodes over the evaluation (E: e-stop)")
    ax.set_xticks(range(len(summaries)), episode_labels(summaries), fontsize=7)
    _session_breaks(ax, summaries)
    ax.legend(handles=[Patch(color=c, label=k) for k, c in OUTCOME_COLORS.items()], fontsize=7, ncol=4,
              loc="upper center", bbox_to_anchor=(0.5, -0.25))
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, out)


def _label(g) -> str:
    """A group key as a few short lines."""
    import textwrap

    parts = g if isinstance(g, tuple) else (g,)
    return "\n".join(textwrap.shorten(str(p), 40, placeholder="…") for p in parts)
