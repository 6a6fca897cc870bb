"""`pirl replay` on episodes recorded through the HIL deploy path (tests/record_utils.py): the offline re-run
through the bundle that ran them, with the recorded noise, reproduces every recorded chunk bit for bit; fresh noise
or another bundle diverge, and the divergence table and plots are written; a bundle that reads another observation
is refused; `view` writes a .rrd with the live view's entities.
"""

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_utils import shared_hil_recording, tiny_bundle  # noqa: E402
from test_record_hil import rrd_rows  # noqa: E402

pytestmark = pytest.mark.sim


@pytest.fixture(scope="module")
def hil(tmp_path_factory):
    return shared_hil_recording(tmp_path_factory)


@pytest.fixture(scope="module")
def episodes(hil):
    from pirl_robot.record.episodes import find_episodes

    return find_episodes([hil["rec"]])


def test_same_bundle_and_noise_reproduce_the_recorded_actions_exactly(hil, episodes):
    from pirl_robot.bundle import load_bundle
    from pirl_robot.replay.offline import rerun_episode

    policy = load_bundle(hil["bundle"])
    for ep in episodes:
        res = rerun_episode(ep, policy, "same bundle")
        assert res.noise == "recorded" and len(res.ticks) == ep.meta["chunks"] >= 2
        assert res.identical, np.abs(res.diff).max()
        assert all(r["max_abs"] == 0.0 for r in res.table())
        # and the recorded chunk is what the arm executed: its first action is the tick's raw action
        c = ep.columns()
        rows = np.flatnonzero(c["policy.chunk_new"] & c["action.valid"])
        np.testing.assert_array_equal(c["action"][rows], c["policy.chunk_actions"][rows, 0])


def test_fresh_noise_and_another_bundle_diverge(hil, episodes, tmp_path):
    from pirl_robot.bundle import load_bundle
    from pirl_robot.replay.cli import main
    from pirl_robot.replay.offline import rerun_episode

    ep = episodes[0]
    fresh = rerun_episode(ep, load_bundle(hil["bundle"]), noise_seed=123)
    assert fresh.noise == "seed 123" and not fresh.identical and np.abs(fresh.diff).max() > 1e-3
    other = tiny_bundle(tmp_path / "other", seed=7)
    out = tmp_path / "replay"
    assert main(["rerun", str(ep.root), "--bundle", str(other), "--out", str(out)]) == 0
    data = json.loads((out / "divergence.json").read_text())
    assert not data["identical"] and data["noise"] == "recorded" and data["chunks"] == ep.meta["chunks"]
    assert [r["joint"] for r in data["per_joint"]] == list(ep.schema.action_names)
    assert all(r["max_abs"] > 0 for r in data["per_joint"])
    assert "| panda_joint1 |" in (out / "divergence.md").read_text()
    for png in ("actions.png", "divergence.png"):
        img = cv2.imread(str(out / png))
        assert img is not None and img.shape[0] > 200 and img.std() > 5


def test_bundle_for_another_observation_is_refused(episodes, tmp_path, capsys):
    from deploy_utils import save_tiny_checkpoint
    from pirl_robot.bundle import export_bundle
    from pirl_robot.replay.cli import main

    export_bundle(save_tiny_checkpoint(tmp_path / "ckpt"), tmp_path / "panda9")  # 9 joint states, not 35
    assert main(["rerun", str(episodes[0].root), "--bundle", str(tmp_path / "panda9")]) == 2
    assert "state_names" in capsys.readouterr().err


def test_view_writes_the_episode_rrd(episodes, tmp_path):
    from pirl_robot.replay.cli import main

    ep = episodes[1]
    out = tmp_path / "ep2.rrd"
    assert main(["view", str(ep.session_dir), "--episode", "2", "--out", str(out)]) == 0
    rows, c = rrd_rows(out), ep.columns()
    assert rows["/joints/panda_joint3/measured"] == len(c["timing.tick"])
    assert rows["/joints/gripper/applied"] == c["command.sent"].sum()
    assert rows["/plan"] == ep.meta["chunks"] and rows["/safety/events"] == len(ep.events)
    assert main(["view", str(ep.session_dir)]) == 2  # two episodes there: which one?


def test_real_time_chunking_episode_replays_exactly_with_its_recorded_prefixes(tmp_path):
    """Under `chunking: rtc` every chunk after the first is guided by the plan it continues; the recording keeps
    that prefix (policy.rtc_prefix / policy.rtc), so the offline re-run reproduces each chunk bit for bit, and
    re-running without the prefixes does not."""
    from pirl_robot.bundle import load_bundle
    from pirl_robot.record.episodes import find_episodes
    from pirl_robot.replay.offline import rerun_episode
    from record_utils import record_hil

    bundle = tiny_bundle(tmp_path / "bundle")
    record_hil(tmp_path / "rec", bundle, episodes=1, params={"chunking": "rtc", "lead_ticks": 2,
                                                              "rtc_inference_delay": 2})
    ep, = find_episodes([tmp_path / "rec"])
    chunks = ep.chunks()
    guided = [ch for ch in chunks if ch["prefix"] is not None]
    assert chunks[0]["prefix"] is None and len(guided) >= 1 and len(guided) == len(chunks) - 1
    assert all(ch["prefix"].inference_delay == 2 and len(ch["prefix"].actions) >= 2 for ch in guided)
    policy = load_bundle(bundle)
    res = rerun_episode(ep, policy, "same bundle")
    assert res.identical, np.abs(res.diff).max()
    ch = guided[0]  # the same chunk without its guidance comes out otherwise
    c = ep.columns()
    obs = {"state": c["observation.state"][ch["row"]], "images": {}, "instruction": ep.task}
    assert not np.array_equal(policy.infer(obs, noise=ch["noise"])["actions"], ch["actions"])
