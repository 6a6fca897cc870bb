"""Recording through the real deploy path: `pirl deploy --processes several` (deploy node + ManiSkill sim arm
node over loopback DDS) with record_dir set, episodes driven through the nodes' services, the safety filter of the
simulated Panda on, the e-stop pressed in episode 2, outcomes from the simulator and from the operator service.
The episodes must be LeRobotDatasets that lerobot's own LeRobotDataset reads, with what the node did in them.
"""

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_utils import shared_hil_recording  # noqa: E402

pytestmark = pytest.mark.sim


@pytest.fixture(scope="module")
def hil(tmp_path_factory):
    return shared_hil_recording(tmp_path_factory)


def rrd_rows(path: Path) -> dict[str, int]:
    """Rows per entity (non-static) of a .rrd, read with rerun's own reader."""
    from rerun.chunk import RrdReader

    rows: Counter = Counter()
    for c in RrdReader(path).stream().to_chunks():
        if not c.is_static:
            rows[c.entity_path] += c.num_rows
    return dict(rows)


def test_episodes_load_with_lerobot(hil):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from pirl_robot.bundle.format import read_manifest
    from pirl_robot.record.episodes import find_episodes

    eps = find_episodes([hil["rec"]])
    assert [e.meta["episode"] for e in eps] == [1, 2]
    manifest = read_manifest(hil["bundle"])
    for ep, result in zip(eps, hil["results"]):
        ds = LeRobotDataset("local/hil", root=ep.root)  # lerobot's reader, nothing of ours
        assert ds.num_episodes == 1 and len(ds) == ep.meta["frames"] > 10
        row = ds[0]
        assert row["observation.state"].shape == (35,) and row["policy.chunk_actions"].shape == (8, 8)
        assert ds.meta.features["observation.state"]["names"][:2] == ["qpos.panda_joint1", "qpos.panda_joint2"]
        assert ds.meta.features["command.applied"]["names"][-1] == "panda_finger_joint1"
        assert row["task"] == "push the cube to the goal region"
        assert ep.meta["bundle"] == {"id": manifest["bundle_id"], "content_sha256": manifest["content_sha256"],
                                     "path": hil["bundle"]}
        assert ep.meta["operator"] == "pytest" and "panda_maniskill.yaml" in ep.meta["params"]["safety_config"]
        c = ep.columns()
        assert np.all(np.diff(c["timing.tick"]) >= 1) and np.all(np.diff(c["timing.t_s"]) > 0)
        # the node seeds each episode's noise with seed + episode: recorded, and the noise of every chunk
        assert ep.meta["noise_seed"] == ep.meta["params"]["seed"] + ep.meta["episode"] == result["noise_seed"]
        chunks = c["policy.chunk_new"]
        assert chunks.sum() == ep.meta["chunks"] >= 2
        assert np.abs(c["policy.chunk_noise"][chunks]).sum() > 0 and not np.abs(c["policy.chunk_noise"][~chunks]).any()
        # every command the node sent is there, in command units (finger joint in m, not the normalised gripper)
        assert c["command.sent"].sum() >= 0.9 * c["policy.executing"].sum()
        assert np.all(np.abs(c["command.applied"][c["command.sent"], -1]) < 0.05)


def test_filter_and_operator_recorded(hil):
    from pirl_robot.record.episodes import find_episodes
    from pirl_robot.safety import load_safety_config
    from pirl_robot.spec import PolicySpec

    ep1, ep2 = find_episodes([hil["rec"]])
    # outcome 1 from the simulated arm's final status (same seed as the HIL client saw), 2 from the operator
    sim = hil["results"][0]
    assert ep1.outcome["source"] == "sim" and ep1.outcome["detail"]["seed"] == sim["seed"]
    assert ep1.outcome["result"] == ("success" if sim["success_once"] else "failure")
    assert ep1.outcome["detail"]["status"] == "done" and ep1.outcome["detail"]["step"] == 50
    assert ep2.outcome["result"] == "failure" and ep2.outcome["source"] == "operator"
    # the e-stop pressed 1 s into episode 2 ends it, and is in its events (whatever else the filter did: on a
    # loaded machine the watchdog may hold the start for stale joint states, which the events show too)
    causes2 = [e["cause"] for e in ep2.events if e["kind"] == "safety"]
    assert "estop" in causes2, causes2
    assert ep2.meta["frames"] < ep1.meta["frames"]
    # applied commands respect the limits the filter enforces (per tick, in policy units)
    cfg = load_safety_config(Path(ep1.meta["params"]["safety_config"]) if Path(
        ep1.meta["params"]["safety_config"]).is_absolute() else Path(__file__).resolve().parents[1] /
        ep1.meta["params"]["safety_config"], spec=PolicySpec.from_dict(ep1.meta["spec"]))
    max_step = cfg.vectors()["max_step"]
    for ep in (ep1, ep2):
        c = ep.columns()
        sent = c["command.sent"]
        applied = ep.schema.command_to_action(c["command.applied"][sent])
        steps = np.abs(np.diff(applied, axis=0))
        contiguous = np.diff(c["timing.tick"][sent]) == 1
        assert np.all(steps[contiguous] <= max_step + 1e-6), (steps.max(axis=0), max_step)


def test_rrd_files_hold_the_entities(hil):
    from pirl_robot.record.episodes import find_episodes

    for ep in find_episodes([hil["rec"]]):
        rows = rrd_rows(ep.rrd)
        c = ep.columns()
        assert rows["/joints/panda_joint1/policy"] == c["action.valid"].sum()
        assert rows["/joints/panda_joint1/applied"] == c["command.sent"].sum()
        assert rows["/joints/panda_joint1/measured"] == len(c["timing.tick"])
        assert rows["/plan"] == rows["/latency/policy_ms"] == ep.meta["chunks"]
        assert rows["/safety/events"] == len(ep.events)
        assert rows["/latency/tick_overhead_ms"] == len(c["timing.tick"])
    live = rrd_rows(Path(hil["rec"]).parent / "live.rrd")  # the deploy node's live stream (rerun=live.rrd)
    frames = sum(e.meta["frames"] for e in find_episodes([hil["rec"]]))
    assert live["/joints/panda_joint1/measured"] == frames
    assert {"/plan", "/safety/events", "/latency/policy_ms"} <= set(live)


def test_session_files(hil):
    session = next(Path(hil["rec"]).glob("*/session.json"))
    info = json.loads(session.read_text())
    assert info["outcome_source"] == "sim" and info["operator"] == "pytest"
    assert not list(session.parent.glob("journal/episode_*")), "journals left after the commits"
