"""`pirl report` on episodes recorded through the HIL deploy path: success per task and bundle with Wilson
intervals, the e-stop pressed in episode 2 counted, latency statistics matching the recorded columns, PNG plots
and the one-page summary; an outcome entered after the fact changes the rates.
"""

import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_utils import shared_hil_recording  # noqa: E402

pytestmark = pytest.mark.sim


def test_wilson_interval_known_values():
    from pirl_robot.report.stats import wilson_interval

    # textbook values (z = 1.96)
    for (k, n), (lo, hi) in {(0, 10): (0.0, 0.2775), (10, 10): (0.7225, 1.0), (5, 10): (0.2366, 0.7634),
                             (1, 2): (0.0945, 0.9055), (0, 0): (0.0, 1.0)}.items():
        assert wilson_interval(k, n) == pytest.approx((lo, hi), abs=1e-4)


def test_report_on_hil_episodes(tmp_path_factory, tmp_path):
    from pirl_robot.record.episodes import find_episodes
    from pirl_robot.report.cli import main
    from pirl_robot.report.stats import wilson_interval

    hil = shared_hil_recording(tmp_path_factory)
    eps = find_episodes([hil["rec"]])
    out = tmp_path / "report"
    assert main([hil["rec"], "--out", str(out)]) == 0
    data = json.loads((out / "report.json").read_text())
    k = sum(e.outcome["result"] == "success" for e in eps)
    (bundle,) = data["by_bundle"]
    assert bundle["group"] == eps[0].bundle_id and bundle["episodes"] == bundle["decided"] == 2
    assert bundle["successes"] == k and bundle["ci95"] == pytest.approx(wilson_interval(k, 2))
    assert data["by_task"][0]["group"] == "push the cube to the goal region"
    per_ep = {e["episode"]: e for e in data["per_episode"]}
    assert per_ep[2]["estops"] == 1 and per_ep[1]["estops"] == 0 and bundle["estops"] == 1
    assert per_ep[2]["result"] == "failure" and per_ep[2]["source"] == "operator"
    assert per_ep[1]["interventions"] == per_ep[1]["estops"] + per_ep[1]["holds"]
    lat = {r["key"]: r for r in data["latency"]}
    policy_ms = np.concatenate([e.columns()["policy.latency_ms"][e.columns()["policy.chunk_new"]] for e in eps])
    assert lat["policy_ms"]["n"] == len(policy_ms) and lat["policy_ms"]["p50"] == pytest.approx(
        np.percentile(policy_ms, 50), rel=1e-5)
    md = (out / "report.md").read_text()
    assert "## Success" in md and "## Latency" in md and "e-stops: 1" in md
    for name in ("success.png", "latency.png", "interventions.png", "episodes.png"):
        assert f"]({name})" in md
        img = cv2.imread(str(out / name))
        assert img is not None and img.shape[0] > 250 and img.std() > 5, name


def test_outcome_entered_later_changes_the_rates(tmp_path_factory, tmp_path):
    from pirl_robot.record.commit import append_outcome, refresh_outcome
    from pirl_robot.record.episodes import find_episodes
    from pirl_robot.report.cli import build_report

    rec = tmp_path / "rec"
    shutil.copytree(shared_hil_recording(tmp_path_factory)["rec"], rec)
    session = next(rec.glob("*/session.json")).parent
    append_outcome(session, {"episode": 1, "result": "success", "source": "operator", "detail": {}})
    append_outcome(session, {"episode": 2, "result": "unknown", "source": "operator", "detail": {}})
    refresh_outcome(session, 1)
    ep1 = find_episodes([rec])[0]
    assert ep1.outcome["result"] == ep1.meta["outcome"]["result"] == "success"  # the committed copy too
    (bundle,) = build_report([str(rec)], tmp_path / "out")["data"]["by_bundle"]
    assert (bundle["successes"], bundle["decided"], bundle["unknown"]) == (1, 1, 1)
