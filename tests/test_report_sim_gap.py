"""`pirl report --sim-gap` on episodes recorded through the HIL deploy path (the simulated arm is the "real"
side, so the gap must come out near zero), and with an injected delay or gain error (the report must show it)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_utils import shared_hil_recording  # noqa: E402

pytestmark = pytest.mark.sim


def test_lag_and_rmse_of_known_shifts():
    from pirl_robot.report.sim_gap import joint_gap

    t = np.linspace(0, 2 * np.pi, 80)
    sim = np.stack([np.sin(t), 0.5 * np.cos(t)], axis=1)
    real = np.concatenate([sim[:3].copy() * 0 + sim[0], sim[:-3]])  # 3 periods late
    rows = joint_gap(real, sim, 0.05, ("a", "b"))
    assert [r["lag_ms"] for r in rows] == [150.0, 150.0]
    assert joint_gap(sim, sim, 0.05, ("a", "b"))[0]["rmse_rad"] == 0.0


def test_sim_gap_near_zero_on_hil_and_shows_injected_faults(tmp_path_factory, tmp_path):
    from pirl_robot.report.cli import main

    hil = shared_hil_recording(tmp_path_factory)
    out = {}
    for name, args in (("none", []), ("delay", ["--inject-delay-ticks", "2"]), ("gain", ["--inject-gain", "0.6"])):
        d = tmp_path / name
        assert main([hil["rec"], "--sim-gap", "--out", str(d), *args]) == 0
        out[name] = json.loads((d / "sim_gap.json").read_text())
        assert (d / "sim_gap.md").is_file() and all((d / e["plot"]).is_file() for e in out[name]["episodes"])
    summary = {k: {r["joint"]: (round(r["rmse_rad"], 5), r["lag_ms"]) for r in v["joints"]} for k, v in out.items()}
    print("\nsim gap (RMSE rad, lag ms) per joint:", json.dumps(summary, indent=1))
    moving = [r for r in out["delay"]["joints"] if r["max_dev_rad"] > 0.01]
    clean = {r["joint"]: r for r in out["none"]["joints"]}
    for r in out["none"]["joints"]:
        assert r["rmse_rad"] < 2e-3 and r["lag_ms"] == 0.0, r  # the twin reproduces the simulated arm
    assert moving, "the recorded commands moved the arm"
    for r in moving:
        assert r["lag_ms"] == pytest.approx(100.0, abs=50.0), r  # 2 ticks at 20 Hz
        assert r["rmse_rad"] > 10 * clean[r["joint"]]["rmse_rad"]
    assert max(r["rmse_rad"] for r in out["gain"]["joints"]) > 10 * max(r["rmse_rad"] for r in clean.values())
