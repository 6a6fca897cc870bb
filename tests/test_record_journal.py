"""The journal -> LeRobotDataset commit and its recovery paths, deterministically (the random kills are in
test_record_crash.py): a journal cut short by a crash is recovered as an interrupted episode without its broken
tail; one without frames is discarded with its events kept; a commit interrupted after the rename is finished;
bad recording parameters are refused with a reason.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_crash_child import SCHEMA, image_of, state_of  # noqa: E402

from pirl_robot.deploy.taps import TickRecord  # noqa: E402
from pirl_robot.record.commit import commit_journal, recover  # noqa: E402
from pirl_robot.record.episodes import RecordedEpisode  # noqa: E402
from pirl_robot.record.journal import EpisodeJournal  # noqa: E402


def _journal(session: Path, k: int, frames: int, end: bool) -> Path:
    header = {"session": session.name, "episode": k, "task": "t", "robot": "toy", "schema": SCHEMA.to_dict(),
              "bundle": {"id": "b"}, "params": {}, "video": False}
    j = EpisodeJournal(session / "journal" / f"episode_{k:06d}", header)
    for i in range(frames):
        j.frame({"tick": i, "t": 100.0 + 0.02 * i, "executing": True, "mode": "running",
                 "state": state_of(k, i).tolist(), "joints": {"position": [0.0, 1.0], "velocity": None, "age_ms": 1.0},
                 "raw": [0.1, 0.2], "applied": [0.1, 0.2], "overhead_ms": 0.3, "wait_ms": 0.0},
                {"cam": image_of(k, i)})
    j.chunk({"obs_tick": 0, "actions": np.ones((4, 2)).tolist(), "noise": np.zeros((4, 2)).tolist(),
             "latency_ms": 3.0})
    j.event({"kind": "safety", "cause": "estop", "mode": "estop", "detail": "", "t": 100.05})
    if end:
        j.end({"reason": "stopped", "outcome": {"result": "success", "source": "operator", "detail": {}}})
    else:
        j.sync()
        j.close()
    return j.root


def test_crash_cut_journal_is_recovered_without_its_broken_tail(tmp_path):
    root = _journal(tmp_path / "s", 3, frames=6, end=False)
    with open(root / "frames.jsonl", "a") as f:
        f.write('{"tick": 6, "t": 100.12, "state": [1, 2')  # a line the crash cut short
    (root / "images" / "cam" / "5.png").write_bytes(b"\x89PNG\r\n")  # an image half written
    messages = []
    (res,) = recover(tmp_path, log=messages.append)
    assert res.status == "recovered" and "interrupted by a crash" in res.message and "1 cut-short" in res.message
    ep = RecordedEpisode(res.path)
    assert ep.meta["interrupted"] and ep.outcome["result"] == "interrupted" and ep.meta["frames"] == 5
    np.testing.assert_array_equal(ep.columns()["observation.state"], np.stack([state_of(3, i) for i in range(5)]))
    assert [e["cause"] for e in ep.events] == ["estop"] and ep.events[0]["tick"] == 2
    assert not root.exists() and messages == [f"[record] {res.message}"]


def test_journal_without_frames_is_discarded_keeping_its_events(tmp_path):
    root = _journal(tmp_path / "s", 4, frames=0, end=True)
    res = commit_journal(root)
    assert res.status == "discarded" and "no frame was recorded" in res.message
    kept = tmp_path / "s" / "discarded" / "episode_000004"
    assert (kept / "header.json").is_file() and "estop" in (kept / "events.jsonl").read_text()
    assert not root.exists()


def test_commit_interrupted_after_the_rename_is_finished(tmp_path):
    root = _journal(tmp_path / "s", 5, frames=3, end=True)
    res = commit_journal(root, rrd=False)
    assert res.status == "committed" and RecordedEpisode(res.path).outcome["result"] == "success"
    (root / "header.json").parent.mkdir(parents=True)  # as if the crash came before the journal's deletion
    (root / "header.json").write_text("{}")
    again = commit_journal(root)
    assert again.status == "already_committed" and not root.exists()
    assert RecordedEpisode(res.path).meta["frames"] == 3


def test_bad_recording_parameters_are_refused(tmp_path):
    from pirl_robot.deploy.params import validate
    from pirl_robot.record.recorder import Recorder, SessionInfo

    errors = validate({"record_outcome": "simulator", "rerun": "http://x"})
    assert any(e.startswith("record_outcome:") for e in errors) and any(e.startswith("rerun:") for e in errors)
    assert validate({"record_outcome": "sim:/sim_arm_node/episode", "rerun": "rerun+http://127.0.0.1:9876/proxy"}) \
        == []
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ValueError, match="cannot record into"):
        Recorder(tmp_path / "file" / "rec", SessionInfo(name="x", schema=SCHEMA))


def _episode(rec, k: int, tick: int) -> int:
    import time

    from pirl_robot.drivers.arms.base import JointSample

    for i in range(10):
        t = time.monotonic()
        rec.tap(TickRecord(tick=tick, episode=k, t=t, executing=True, mode="running",
                           obs={"state": state_of(k, i), "images": {"cam": image_of(k, i)}},
                           joints=JointSample(("j0", "j1"), np.zeros(2), None, t), action=np.array([k, i], float),
                           command=np.array([k, i], float), events=[], fault=None, overhead_s=0.0, waited_s=0.0))
        tick += 1
    rec.tap(TickRecord(tick=tick, episode=k, t=time.monotonic(), executing=False, mode="stopped", obs=None,
                       joints=None, action=None, command=None, events=[], fault=None, overhead_s=0.0, waited_s=0.0))
    return tick + 1


@pytest.mark.slow
def test_a_killed_commit_worker_is_replaced_and_its_jobs_redone(tmp_path):
    """The commit process dies (OOM killer, kill -9) while committing: a new one redoes its jobs."""
    import multiprocessing
    import os
    import signal
    import time

    from pirl_robot.record.recorder import Recorder, SessionInfo

    messages = []
    rec = Recorder(tmp_path, SessionInfo(name="s", schema=SCHEMA), log=lambda level, m: messages.append(m))
    rec.flush()  # the worker is up
    tick = _episode(rec, 1, 0)
    time.sleep(0.3)  # episode 1's commit has started
    (worker,) = multiprocessing.active_children()
    os.kill(worker.pid, signal.SIGKILL)
    _episode(rec, 2, tick)
    results = rec.close()
    assert sorted(r.name for r in results if r.status == "committed") == ["episode_000001", "episode_000002"]
    assert any("commit worker died" in m for m in messages), messages
    for k in (1, 2):
        ep = RecordedEpisode(tmp_path / "s" / "episodes" / f"episode_{k:06d}")
        np.testing.assert_array_equal(ep.columns()["observation.state"], np.stack([state_of(k, i) for i in range(10)]))
