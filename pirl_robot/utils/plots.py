"""Plots people would rather look at than read: learning curves from metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the Agg backend: figures go to files, never to a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out: str | Path, dpi: int = 110) -> Path:
    """Lay out, write and close `fig` (an open figure keeps its memory until closed)."""
    fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    pyplot().close(fig)
    return Path(out)


def read_metrics(metrics: str | Path) -> list[dict]:
    """The rows of a run's metrics.jsonl (rl.trainer): {"kind": "train" | "eval", "iteration", "env_steps", ...};
    eval rows carry success_rate, successes, episodes and ci95 (the Wilson 95% interval [lo, hi]). Eval rows written
    before 2026-11-27 (ci95 a normal half-width, no count) are given their count and Wilson interval."""
    from pirl_robot.evaluate import wilson_interval

    rows = [json.loads(x) for x in Path(metrics).read_text().splitlines() if x.strip()]
    for r in rows:
        if r["kind"] == "eval" and "successes" not in r:
            r["successes"] = round(r["success_rate"] * r["episodes"])
            r["ci95"] = wilson_interval(r["successes"], r["episodes"])
    return rows


def learning_curve(metrics: str | Path, out: str | Path, title: str = "") -> Path:
    plt = pyplot()
    rows = read_metrics(metrics)
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        xs = [r["env_steps"] for r in train]
        ax1.plot(xs, [r["success_rate"] for r in train], alpha=0.35, label="train episodes (stochastic)")
        ax2.plot(xs, [r["mean_return"] for r in train], label="train return")
    if evals:
        rate = [r["success_rate"] for r in evals]
        below = [max(p - r["ci95"][0], 0.0) for p, r in zip(rate, evals)]  # ci95: the Wilson interval [lo, hi]
        above = [max(r["ci95"][1] - p, 0.0) for p, r in zip(rate, evals)]
        ax1.errorbar([r["env_steps"] for r in evals], rate, yerr=[below, above], marker="o", capsize=3,
                     label="eval (ODE, 95% Wilson CI)")
        sft = [r for r in evals if r.get("tag") == "sft"]
        if sft:
            ax1.axhline(sft[0]["success_rate"], ls="--", c="gray", label=f"SFT start ({sft[0]['success_rate']:.2f})")
    ax1.set(xlabel="env steps", ylabel="success rate", ylim=(-0.02, 1.02), title=title or "success")
    ax2.set(xlabel="env steps", ylabel="mean episode return", title="return")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    return save_figure(fig, out)
