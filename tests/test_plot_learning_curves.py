"""The learning-curve plots (bench/plot_learning_curves.py, pirl train's own) read eval rows of every format pirl
train has written (utils.plots.read_metrics)."""

import json

from bench_utils import load_bench

from pirl_robot.evaluate import wilson_interval
from pirl_robot.utils.plots import learning_curve


def test_rows_written_before_wilson_intervals_get_their_count_and_interval(tmp_path):
    old = [  # 2026-11-22's rows: ci95 a normal half-width, no successes, no wall_s
        {"kind": "eval", "tag": "sft", "iteration": 0, "env_steps": 0, "success_rate": 19 / 96, "episodes": 96,
         "ci95": 0.0797},
        {"kind": "train", "iteration": 1, "env_steps": 1855, "iter_seconds": 2.5, "success_rate": 0.28,
         "mean_return": 14.9},
        {"kind": "eval", "tag": "iter1", "iteration": 1, "env_steps": 1855, "success_rate": 37 / 96,
         "episodes": 96, "ci95": 0.0974},
    ]
    new = [{"kind": "eval", "tag": "sft", "iteration": 0, "env_steps": 0, "wall_s": 3.0, "success_rate": 0.5,
            "episodes": 4, "successes": 2, "ci95": [0.15, 0.85]}]
    (tmp_path / "old.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    (tmp_path / "new.jsonl").write_text("".join(json.dumps(r) + "\n" for r in new))
    bench = load_bench("plot_learning_curves")

    rows = bench.eval_curve(tmp_path / "old.jsonl")
    assert [r["successes"] for r in rows] == [19, 37]
    assert rows[1]["ci95"] == wilson_interval(37, 96)
    assert rows[1]["wall_s"] == 2.5  # summed iteration times
    assert bench.eval_curve(tmp_path / "new.jsonl")[0]["ci95"] == [0.15, 0.85]  # kept as written

    out = bench.plot([tmp_path / "old.jsonl", tmp_path / "new.jsonl"], ["old", "new"], tmp_path / "curves.png")
    assert out.stat().st_size > 0
    assert learning_curve(tmp_path / "old.jsonl", tmp_path / "run.png").stat().st_size > 0
