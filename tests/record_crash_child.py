"""Child process of tests/test_record_crash.py: a Recorder fed through its tap interface with deterministic
episodes, forever, until the test kills it with SIGKILL. The recorder is the real one (journal, commit worker
process, lerobot's writer, atomic rename); only the deploy node upstream is replaced by a generator, so that
thousands of ticks fit in seconds.

    python tests/record_crash_child.py RECORD_DIR SESSION_NAME
"""

from __future__ import annotations

import sys
import time

import numpy as np

from pirl_robot.deploy.taps import ChunkRecord, SafetyRecord, TickRecord
from pirl_robot.drivers.arms.base import JointSample
from pirl_robot.record.recorder import Recorder, SessionInfo
from pirl_robot.record.schema import RecordSchema

SCHEMA = RecordSchema(state_names=("s0", "s1", "s2"), action_names=("a0", "a1"), command_names=("c0", "c1"),
                      joint_names=("j0", "j1"), cameras=(("cam", 12, 12),), chunk_size=4,
                      action_state_index=(0, 1), fps=50.0)
TICK_S, PAUSE_S = 0.02, 0.3  # episodes of 0.2-0.6 s: kills land in episodes, pauses and commits alike


def frames_of(k: int) -> int:
    return 10 + (k * 7) % 21


def state_of(k: int, i: int) -> np.ndarray:
    return np.array([k, i, k * 1000 + i], np.float32)


def image_of(k: int, i: int) -> np.ndarray:
    return np.full((12, 12, 3), (k * 7 + i) % 256, np.uint8)


def run(record_dir: str, name: str) -> None:
    rec = Recorder(record_dir, SessionInfo(name=name, schema=SCHEMA, task="crash test", robot="toy",
                                           bundle={"id": "crash", "content_sha256": "0" * 64}),
                   log=lambda level, msg: print(f"[record] {msg}", file=sys.stderr, flush=True))
    rec.flush()  # the commit worker is up (and has committed what the previous run left behind)
    print("READY", flush=True)
    tick = 0
    for k in range(1, 10 ** 6):
        for i in range(frames_of(k)):
            t = time.monotonic()
            if i % 4 == 0:
                rec.tap(ChunkRecord(obs_tick=tick, episode=k, actions=np.full((4, 2), k + i, np.float32),
                                    noise=np.full((4, 2), -i, np.float32), latency_s=0.005, error=None))
            js = JointSample(("j0", "j1"), np.array([k, i], float), np.zeros(2), t)
            rec.tap(TickRecord(tick=tick, episode=k, t=t, executing=True, mode="running",
                               obs={"state": state_of(k, i), "images": {"cam": image_of(k, i)}}, joints=js,
                               action=np.array([k, i], float), command=np.array([k, i], float), events=[],
                               fault=None, overhead_s=0.0005, waited_s=0.0))
            if i == 3:
                rec.tap(SafetyRecord(episode=k, events=[{"cause": "velocity_limit", "time": t, "mode": "running",
                                                          "detail": "a0"}]))
            tick += 1
            time.sleep(TICK_S)
        rec.tap(TickRecord(tick=tick, episode=k, t=time.monotonic(), executing=False, mode="stopped", obs=None,
                           joints=None, action=None, command=None, events=[], fault=None, overhead_s=0.0,
                           waited_s=0.0))
        tick += 1
        rec.set_outcome("success" if k % 2 else "failure", wait_s=0.0)
        time.sleep(PAUSE_S)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2])
