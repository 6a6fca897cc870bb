"""kill -9 at random moments of recording loses no completed episode.

A child process records deterministic episodes through the real Recorder (journal -> commit worker process ->
lerobot's LeRobotDataset writer -> atomic rename) and is killed with SIGKILL at a random time: while journaling,
while committing (lerobot writing parquet/PNG, the .rrd), between the rename and the journal's deletion... The
next child's start recovers what the previous one left. At the end every episode that was complete at the kill
(committed, or its journal's "end" line on disk) must load with lerobot's LeRobotDataset with every frame and
the generator's exact values; committed episodes must be byte-identical to what they were before the kill; the
episode in progress is recovered (a prefix of its frames, flagged interrupted) or discarded with its events kept.

    pytest tests/test_record_crash.py                       # 2 trials
    PIRL_CRASH_TRIALS=5 PIRL_CRASH_SEED=1 pytest tests/test_record_crash.py -k loses   # more, other kill times
    pytest -m slow tests/test_record_crash.py               # 15 trials
"""

import hashlib
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pirl_robot.record.commit import recover
from pirl_robot.record.episodes import RecordedEpisode
from pirl_robot.record.files import read_jsonl

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from record_crash_child import frames_of, image_of, state_of  # noqa: E402


def _digest(ep_dir: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(ep_dir.rglob("*")):
        if p.is_file() and p.name != "pirl_episode.json":  # the outcome copy may be refreshed (atomic replace)
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def _snapshot(session: Path) -> dict:
    """What was on disk at the kill: committed episodes (digests), complete journals, the open journal."""
    committed = {int(p.name.split("_")[1]): _digest(p) for p in session.glob("episodes/episode_*")}
    complete, open_ = [], []
    for j in session.glob("journal/episode_*"):
        k = int(j.name.split("_")[1])
        events, _ = read_jsonl(j / "events.jsonl")
        (complete if any(e.get("kind") == "end" for e in events) else open_).append(k)
    committing = sorted(int(p.name.split("_")[-1]) for p in session.glob("episodes/.tmp_episode_*"))
    return {"committed": committed, "complete": sorted(set(complete) - set(committed)), "open": sorted(open_),
            "mid_commit": committing}  # killed while lerobot was writing these


def _check_complete(ep: RecordedEpisode, k: int) -> None:
    c = ep.columns()
    n = frames_of(k)
    assert not ep.meta["interrupted"] and ep.meta["frames"] == n == len(ep.dataset())
    np.testing.assert_array_equal(c["observation.state"], np.stack([state_of(k, i) for i in range(n)]))
    np.testing.assert_array_equal(ep.images("cam"), np.stack([image_of(k, i) for i in range(n)]))
    assert c["policy.chunk_new"].sum() == len(range(0, n, 4))
    assert ep.outcome["result"] in ("success" if k % 2 else "failure", "unknown")
    assert [e["cause"] for e in ep.events if e["kind"] == "safety"] == ["velocity_limit"]


def run_trials(tmp_path: Path, trials: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    record_dir = tmp_path / "rec"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    kills = []
    for trial in range(trials):
        name = f"trial{trial:02d}"
        child = subprocess.Popen([sys.executable, str(HERE / "record_crash_child.py"), str(record_dir), name],
                                 stdout=subprocess.PIPE, stderr=open(tmp_path / f"{name}.log", "w"), text=True,
                                 env=env)
        ready, _, _ = select.select([child.stdout], [], [], 180)
        line = child.stdout.readline().strip() if ready else ""
        if line != "READY":
            child.kill()
            raise AssertionError(f"the recorder child did not start (got {line!r})")
        delay = rng.uniform(0.2, 3.0)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        time.sleep(0.3)  # the commit worker dies with its parent (PR_SET_PDEATHSIG)
        kills.append({"trial": name, "after_s": round(delay, 2), **_snapshot(record_dir / name)})
    messages: list[str] = []
    results = recover(record_dir, log=messages.append)  # what the next start does
    for trial in range(trials):  # the children's own start-up recoveries
        messages += (tmp_path / f"trial{trial:02d}.log").read_text().splitlines()
    assert not list(record_dir.glob("*/journal/episode_*")), "journals left after recovery"
    assert not list(record_dir.glob("*/episodes/.tmp_*")), "temporary datasets left after recovery"

    stats = {"trials": trials, "complete": 0, "committed_before_kill": 0, "interrupted_recovered": 0,
             "interrupted_discarded": 0, "losses": 0, "lost": [],
             "killed_mid_commit": sum(bool(k["mid_commit"]) for k in kills)}
    for kill in kills:
        session = record_dir / kill["trial"]
        for k, digest in kill["committed"].items():  # committed before the kill: untouched since
            ep_dir = session / "episodes" / f"episode_{k:06d}"
            stats["committed_before_kill"] += 1
            if not ep_dir.is_dir() or _digest(ep_dir) != digest:
                stats["lost"].append((kill["trial"], k, "committed episode changed or vanished"))
        for k in sorted(kill["committed"]) + kill["complete"]:  # complete at the kill: all there, exact
            stats["complete"] += 1
            try:
                _check_complete(RecordedEpisode(session / "episodes" / f"episode_{k:06d}"), k)
            except Exception as e:
                stats["lost"].append((kill["trial"], k, f"{type(e).__name__}: {e}"))
        for k in kill["open"]:  # in progress at the kill: recovered prefix, or discarded with its events
            ep_dir = session / "episodes" / f"episode_{k:06d}"
            if ep_dir.is_dir():
                ep = RecordedEpisode(ep_dir)
                n = ep.meta["frames"]
                assert ep.meta["interrupted"] and ep.outcome["result"] in ("interrupted", "success", "failure")
                assert 0 < n <= frames_of(k)
                np.testing.assert_array_equal(ep.columns()["observation.state"],
                                              np.stack([state_of(k, i) for i in range(n)]))
                stats["interrupted_recovered"] += 1
            else:
                assert (session / "discarded" / f"episode_{k:06d}" / "header.json").is_file()
                assert any(f"episode_{k:06d}: discarded" in m for m in messages), messages
                stats["interrupted_discarded"] += 1
    stats["losses"] = len(stats["lost"])
    stats["kills"] = [{k: v for k, v in x.items() if k != "committed"} | {"committed": sorted(x["committed"])}
                      for x in kills]
    stats["recovery"] = [r.status for r in results]
    return stats


def _report(stats: dict) -> None:
    print(f"\nkill -9 trials: {stats['trials']}, episodes complete at the kill: {stats['complete']} "
          f"({stats['committed_before_kill']} already committed), in progress: recovered "
          f"{stats['interrupted_recovered']}, discarded {stats['interrupted_discarded']}; kills during a commit: "
          f"{stats['killed_mid_commit']}; LOSSES: {stats['losses']}")
    for k in stats["kills"]:
        print(f"  {k['trial']}: killed after {k['after_s']} s; committed {k['committed']}, complete journals "
              f"{k['complete']} (being committed: {k['mid_commit']}), open {k['open']}")


def test_kill_9_loses_no_completed_episode(tmp_path):
    stats = run_trials(tmp_path, trials=int(os.environ.get("PIRL_CRASH_TRIALS", 2)),
                       seed=int(os.environ.get("PIRL_CRASH_SEED", 0)))
    _report(stats)
    assert stats["losses"] == 0, stats["lost"]
    assert stats["complete"] > 0, "no episode completed before the kills: the test measured nothing"


@pytest.mark.slow
def test_kill_9_many_trials(tmp_path):
    stats = run_trials(tmp_path, trials=15, seed=1)
    _report(stats)
    assert stats["losses"] == 0, stats["lost"]
    assert stats["interrupted_recovered"] + stats["interrupted_discarded"] > 0
