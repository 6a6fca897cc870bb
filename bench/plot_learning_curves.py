"""python bench/plot_learning_curves.py outputs/pushcube_2demos_flow_sde_ppo_s0 outputs/pushcube_grpo_s0 -o docs/img/learning_curves.png

One figure with every run's learning curve: the ODE policy's success on the fixed evaluation seeds against env
steps (or RL wall time, --x wall), the Wilson 95% interval shaded, read from each run's metrics.jsonl (the eval
rows `pirl train` writes every eval.every iterations, SFT first at 0 steps). A run is labelled by its directory
name, or by --label in the same order. Runs still in progress plot what they have so far.

    python bench/plot_learning_curves.py outputs/*/ -o curves.png --x wall --title "PushCube, 2-demo start"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pirl_robot.utils.plots import pyplot, read_metrics, save_figure  # noqa: E402


def eval_curve(run: Path) -> list[dict]:
    """The eval rows of a run directory (or of a metrics.jsonl given directly), in iteration order."""
    path = run / "metrics.jsonl" if run.is_dir() else run
    if not path.exists():
        raise SystemExit(f"{path}: no metrics.jsonl (is {run} a `pirl train` output_dir?)")
    metrics = read_metrics(path)
    rows = [r for r in metrics if r["kind"] == "eval"]
    if not rows:
        raise SystemExit(f"{path}: no eval rows yet")
    # wall time: eval rows written since issue 14 carry wall_s; older runs: the summed iteration times
    iter_s, t = {}, 0.0
    for r in metrics:
        if r["kind"] == "train":
            t += r["iter_seconds"]
            iter_s[r["iteration"]] = t
    for r in rows:
        r.setdefault("wall_s", iter_s.get(r["iteration"], 0.0))
    return sorted(rows, key=lambda r: (r["iteration"], r.get("tag") != "sft"))


def plot(runs: list[Path], labels: list[str], out: Path, x: str = "env_steps", title: str = "") -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for run, label in zip(runs, labels):
        rows = eval_curve(run)
        xs = [r["env_steps"] / 1e6 if x == "env_steps" else r["wall_s"] / 60 for r in rows]
        p = [100 * r["success_rate"] for r in rows]
        lo, hi = [100 * r["ci95"][0] for r in rows], [100 * r["ci95"][1] for r in rows]
        start, end = rows[0], rows[-1]
        line, = ax.plot(xs, p, marker="o", ms=3, label=f"{label}: {start['successes']}/{start['episodes']} -> "
                                                         f"{end['successes']}/{end['episodes']}")
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
    ax.set(xlabel="env steps (millions)" if x == "env_steps" else "RL wall time (minutes)",
           ylabel="ODE success rate, % (Wilson 95% interval shaded)", ylim=(0, 100),
           title=title or "learning curves")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, out)


def main(argv: list[str] | None = None) -> int:
    first, _, rest = __doc__.partition("\n")  # --help opens with a real command line
    ap = argparse.ArgumentParser(usage=first, description=rest.strip(),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="`pirl train` output directories (or metrics.jsonl files)")
    ap.add_argument("-o", "--out", type=Path, default=Path("learning_curves.png"), help="the figure to write")
    ap.add_argument("--label", nargs="+", default=None, help="one label per run (default: the directory names)")
    ap.add_argument("--x", choices=("env_steps", "wall"), default="env_steps", help="the horizontal axis")
    ap.add_argument("--title", default="")
    args = ap.parse_args(argv)
    labels = args.label or [(r if r.is_dir() else r.parent).name for r in args.runs]
    if len(labels) != len(args.runs):
        ap.error(f"{len(args.runs)} runs but {len(labels)} labels")
    print(plot(args.runs, labels, args.out, args.x, args.title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
