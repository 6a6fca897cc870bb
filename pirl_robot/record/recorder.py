"""The episode recorder: the deploy node's taps in, one crash-safe LeRobotDataset per episode out.

    rec = Recorder("recordings/", SessionInfo(...))       # record/ros.py builds it from the node's parameters
    node.taps.append(rec.tap)                             # fn(kind, record) from the control loop
    rec.set_outcome("success", "operator")                # the open episode, else the last one
    rec.close()                                           # commits what is open, waits for the writer

Nothing heavy runs on the control loop: a tap only puts the record on a queue. A writer thread keeps the
episode's journal (record/journal.py: append-only, fsynced) and the live Rerun view; at the end of the episode
the journal is handed to a commit worker PROCESS (record/commit.py: lerobot writer, then one atomic rename), so
video encoding and parquet writing never hold this process's GIL while the next episode runs.

Episodes follow the node: the first executing tick of node episode N opens episode_N; ticks after ~/stop are
recorded while the safety filter brings the arm to rest (at most `stop_grace_s`), then the episode closes.
On start, journals left by a crash (this session dir or any other under record_dir) are committed as interrupted
episodes, or discarded with a message when they hold no frame.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from pirl_robot.record.commit import CommitResult, append_outcome, commit_journal, recover, refresh_outcome
from pirl_robot.record.files import JsonlAppender, write_json_atomic
from pirl_robot.record.journal import EpisodeJournal
from pirl_robot.record.schema import RecordSchema

MOVING_MODES = ("starting", "running", "hold", "stopping")  # the filter still commands motion (as in deploy/node.py)
RESULTS = ("success", "failure", "unknown")
SIM_STATUS_WAIT_S = 3.0  # how long a closed episode waits for the simulated arm's final status


@dataclass
class SessionInfo:
    """What every episode of this run shares (written to session.json and each episode's header)."""

    name: str
    schema: RecordSchema
    task: str = ""
    robot: str = ""
    operator: str = ""
    bundle: dict = field(default_factory=dict)  # {"id", "content_sha256", "path"}
    spec: dict | None = None
    params: dict = field(default_factory=dict)
    noise_seed_base: int = -1  # the node reseeds the noise with base + episode when >= 0
    outcome_source: str = "operator"  # or "sim" (the simulated arm's episode status)


@dataclass
class _Episode:
    number: int
    journal: EpisodeJournal
    t0: float
    stop_tick: int | None = None
    sim_episode: int | None = None
    sim: dict | None = None
    fault: str | None = None
    fault_ticks: int = 0
    ticks: int = 0
    close_reason: str = ""
    deadline: float = 0.0
    sim_final: bool = False


def _commit_worker_init() -> None:
    """In the commit process: die with the recorder (a kill -9 of the node must not leave a writer behind) and
    load lerobot once."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.nice(10)  # below the control loop: commits may take their time, ticks may not
    import lerobot.datasets.lerobot_dataset  # noqa: F401


def _quiet_commit(journal: Path, rrd: bool) -> CommitResult:
    return commit_journal(journal, rrd=rrd, log=lambda *a: None)


def _quiet_recover(record_dir: Path, rrd: bool, exclude: Path) -> list[CommitResult]:
    return recover(record_dir, rrd=rrd, log=lambda *a: None, exclude=exclude)


class Recorder:
    def __init__(self, record_dir: str | Path | None, info: SessionInfo, *, video: bool = False, live: str = "",
                 rrd: bool = True, commit_in: str = "process", stop_grace_s: float = 5.0,
                 sync_every_s: float = 0.25, log: Callable[[str, str], None] | None = None):
        if commit_in not in ("process", "thread"):
            raise ValueError("commit_in must be 'process' or 'thread'")
        self.record_dir = None if record_dir is None else Path(record_dir)  # None: live view only
        self.info, self.video, self.live, self.rrd = info, video, live, rrd
        self.commit_in, self.sync_every_s = commit_in, sync_every_s
        self.grace_ticks = max(1, int(stop_grace_s * info.schema.fps))
        self.log = log or (lambda level, msg: print(f"[record] {msg}", flush=True))
        self.session = self._make_session_dir()
        self.current_episode: int | None = None  # read by the operator's service (answers which episode)
        self.last_episode: int | None = None
        self.committed: list[CommitResult] = []
        self.errors = 0
        self._q: queue.Queue = queue.Queue()
        self._futures: list[Future] = []
        self._jobs: dict[Future, tuple] = {}  # what each commit job was (redone if its worker dies)
        self._ep: _Episode | None = None
        self._joint_names: tuple[str, ...] | None = None
        self._last_tick = 0
        self._early: list[tuple[dict, float]] = []  # chunks of an episode not opened yet
        self._awaiting: list[_Episode] = []  # closed, waiting for the simulated arm's final status
        self._pending_events: list[dict] = []  # safety events waiting for the next command record
        self._session_events: JsonlAppender | None = None  # events outside any episode
        self._session_sync = 0.0
        self._live_log = None
        self._pool: Executor | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    # --- called from any thread ---------------------------------------------------------------------------
    def tap(self, kind: str, rec: dict) -> None:
        """node.taps entry: must be cheap, it runs on the control loop."""
        if kind == "command" and rec.get("obs") is not None:
            obs = rec["obs"]
            rec = {**rec, "obs": {**obs, "images": {k: np.array(v) for k, v in obs.get("images", {}).items()}}}
        self._q.put((kind, rec, time.monotonic()))

    def sim_status(self, status: dict) -> None:
        self._q.put(("status", status, time.monotonic()))

    def set_outcome(self, result: str, source: str = "operator", detail: dict | None = None,
                    wait_s: float = 2.0) -> str:
        """The outcome of the open episode, else of the last one (as of the records queued before this call).
        Returns which episode it went to (or that it is queued, if the writer is busy for longer than wait_s)."""
        if result not in RESULTS:
            raise ValueError(f"outcome must be one of {RESULTS}, got {result!r}")
        answer: dict = {"done": threading.Event()}
        self._q.put(("outcome", {"result": result, "source": source, "detail": detail or {},
                                 "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "_answer": answer},
                     time.monotonic()))
        if not answer["done"].wait(wait_s):
            return f"outcome {result} queued"
        return answer["message"]

    def close(self, timeout: float = 180.0) -> list[CommitResult]:
        """Commit the open episode and wait for the commit worker (a kill -9 instead is recovered on restart)."""
        if not self._closed:
            self._closed = True
            self._q.put(("close", None, time.monotonic()))
            self._thread.join(timeout)
        return self.committed

    def flush(self, timeout: float = 120.0) -> list[CommitResult]:
        """Wait until every queued record is journaled and every closed episode committed (tests, shutdown)."""
        done = threading.Event()
        self._q.put(("flush", done, time.monotonic()))
        done.wait(timeout)
        return self.committed

    # --- the writer thread --------------------------------------------------------------------------------
    def _make_session_dir(self) -> Path | None:
        if self.record_dir is None:
            return None
        try:
            self.record_dir.mkdir(parents=True, exist_ok=True)
            base = self.record_dir / self.info.name
            path, k = base, 1
            while path.exists():
                k += 1
                path = base.with_name(f"{base.name}-{k}")
            (path / "episodes").mkdir(parents=True)
            write_json_atomic(path / "session.json", {
                "session": path.name, "task": self.info.task, "robot": self.info.robot,
                "operator": self.info.operator, "bundle": self.info.bundle, "params": self.info.params,
                "outcome_source": self.info.outcome_source, "host": os.uname().nodename, "pid": os.getpid(),
                "start_time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        except OSError as e:
            raise ValueError(f"cannot record into {self.record_dir}: {e}") from e
        self.info.name = path.name
        return path

    def _new_pool(self) -> Executor:
        # Created (and its worker spawned) from this long-lived thread: PR_SET_PDEATHSIG follows the creator.
        return (ProcessPoolExecutor(1, mp_context=_spawn(), initializer=_commit_worker_init)
                if self.commit_in == "process" else ThreadPoolExecutor(1, thread_name_prefix="commit"))

    def _run(self) -> None:
        self._pool = self._new_pool()
        # Journals a crash left behind (any session under record_dir) go first, in the commit worker.
        if self.session is not None:
            self._submit(_quiet_recover, self.record_dir, self.rrd, self.session)
        while True:
            try:
                kind, rec, t = self._q.get(timeout=0.1)
            except queue.Empty:
                self._finish_awaiting()
                continue
            try:
                if kind == "close":
                    break
                if kind == "flush":
                    self._finish_awaiting(force=True)
                    self._wait_commits()
                    rec.set()
                    continue
                {"command": self._on_command, "chunk": self._on_chunk, "safety": self._on_safety,
                 "status": self._on_status, "outcome": self._on_outcome}[kind](rec, t)
            except Exception as e:  # a recording problem must never stop the robot: log it, keep going
                self.errors += 1
                self.log("error", f"recorder: {kind} record failed: {type(e).__name__}: {e}")
        try:
            self._place_pending_events()
            if self._ep is not None:
                self._close_episode("shutdown")
            self._finish_awaiting(force=True)
            self._wait_commits()
        finally:
            if self._session_events is not None:
                self._session_events.close()
            self._pool.shutdown(wait=True)
            if self._live_log is not None:
                self._live_log.close()

    def _submit(self, fn, *args) -> None:
        try:
            fut = self._pool.submit(fn, *args)
        except BrokenProcessPool:
            self._redo_broken()
            fut = self._pool.submit(fn, *args)
        fut.add_done_callback(self._on_committed)
        self._futures.append(fut)
        self._jobs[fut] = (fn, *args)

    def _redo_broken(self) -> None:
        """The commit worker died (killed, out of memory): start another and redo the jobs it dropped."""
        lost = [(f, job) for f, job in self._jobs.items() if f.done() and isinstance(f.exception(), BrokenProcessPool)]
        if not lost and not getattr(self._pool, "_broken", False):
            return
        self.log("warn", f"the commit worker died; starting a new one and redoing {len(lost)} job(s)")
        self._pool.shutdown(wait=False)
        self._pool = self._new_pool()
        for f, job in lost:
            del self._jobs[f]
            self._futures.remove(f)
            self._submit(*job)

    def _on_committed(self, fut: Future) -> None:
        try:
            res = fut.result()
        except BrokenProcessPool:
            return  # redone by a new worker (_redo_broken)
        except Exception as e:
            self.errors += 1
            self.log("error", f"commit failed: {type(e).__name__}: {e} (the journal is kept and committed on the "
                              f"next start)")
            return
        for r in res if isinstance(res, list) else [res]:
            self.committed.append(r)
            self.log("warn" if r.status in ("recovered", "discarded", "failed") else "info", r.message)

    def _wait_commits(self) -> None:
        for _ in range(2):  # a worker that died while we waited is replaced once
            for fut in list(self._futures):
                try:
                    fut.result()
                except Exception:
                    pass  # logged by _on_committed
            if not any(isinstance(f.exception(), BrokenProcessPool) for f in self._futures if f.done()):
                break
            self._redo_broken()
        self._futures = [f for f in self._futures if not f.done()]
        self._jobs = {f: j for f, j in self._jobs.items() if not f.done() or
                      isinstance(f.exception(), BrokenProcessPool)}

    # --- records ------------------------------------------------------------------------------------------
    def _on_command(self, rec: dict, t: float) -> None:
        self._last_tick = rec["tick"]
        if rec.get("joints") is not None:
            self._joint_names = tuple(rec["joints"].names)
        ep = self._ep
        if rec.get("executing"):
            if ep is None or ep.number != rec["episode"]:
                if ep is not None:
                    self._close_episode("next episode started")
                ep = self._open_episode(rec)
            ep.stop_tick = None
            self._record_tick(ep, rec)
        elif ep is not None:
            if ep.stop_tick is None:
                ep.stop_tick = rec["tick"]
            if rec.get("mode") in MOVING_MODES and rec["tick"] - ep.stop_tick < self.grace_ticks:
                self._record_tick(ep, rec)  # the controlled stop belongs to the episode
            else:
                self._place_pending_events()  # "stopped" and the like, raised on this last tick
                self._close_episode("stopped")
        self._place_pending_events()

    def _open_episode(self, rec: dict) -> _Episode:
        info, n = self.info, int(rec["episode"])
        schema = info.schema
        if self._joint_names and self._joint_names != schema.joint_names:
            schema = RecordSchema.from_dict({**schema.to_dict(), "joint_names": self._joint_names})
            info.schema = schema
        header = {"session": self.info.name, "episode": n, "task": info.task, "robot": info.robot,
                  "operator": info.operator, "bundle": info.bundle, "spec": info.spec, "schema": schema.to_dict(),
                  "video": self.video, "params": info.params,
                  "noise_seed": info.noise_seed_base + n if info.noise_seed_base >= 0 else None,
                  "start_time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "t0": rec.get("t")}
        journal = (EpisodeJournal(self.session / "journal" / f"episode_{n:06d}", header, self.sync_every_s)
                   if self.session is not None else _NoJournal())
        self._ep = ep = _Episode(n, journal, float(rec.get("t") or time.monotonic()))
        self.current_episode = n
        if self.live:
            from pirl_robot.record.rerun_log import EpisodeLogger, episode_markdown

            if self._live_log is None:
                self._live_log = EpisodeLogger.open(schema, live=self.live, recording_id=self.info.name)
            self._live_log.info(episode_markdown({**header, "outcome": {"result": "running"}}))
        self.log("info", f"recording episode {n} -> {journal.root}")
        early, self._early = self._early, []
        for r, tt in early:
            if r.get("episode") == n:
                self._on_chunk(r, tt)
        return ep

    def _record_tick(self, ep: _Episode, rec: dict) -> None:
        ep.ticks += 1
        t = float(rec.get("t") or time.monotonic())
        obs = rec.get("obs")
        if obs is None:
            ep.fault_ticks += 1
            text = str(rec.get("fault") or "no observation")
            if text != ep.fault:
                ep.journal.event({"kind": "fault", "t": t, "tick": rec["tick"], "detail": text})
                self._live_event(rec["tick"], t - ep.t0, "fault", text)
            ep.fault = text
            return
        ep.fault = None
        joints = rec.get("joints")
        jrec = None
        if joints is not None:
            names = self.info.schema.joint_names
            pos = joints.position if tuple(joints.names) == names else _pick(joints, names, "position")
            vel = joints.velocity if tuple(joints.names) == names else _pick(joints, names, "velocity")
            jrec = {"position": _list(pos), "velocity": _list(vel), "age_ms": (t - joints.stamp) * 1e3}
        frame = {"tick": rec["tick"], "t": t, "executing": bool(rec.get("executing")), "mode": rec.get("mode", ""),
                 "state": _list(obs["state"]), "joints": jrec, "raw": _list(rec.get("raw")),
                 "applied": _list(rec.get("applied")), "overhead_ms": 1e3 * float(rec.get("overhead_s") or 0.0),
                 "wait_ms": 1e3 * float(rec.get("waited_s") or 0.0)}
        ep.journal.frame(frame, obs.get("images", {}))
        if self._live_log is not None:
            self._live_log.frame(rec["tick"], t - ep.t0, state=obs["state"], images=obs.get("images"),
                                 raw=rec.get("raw"), applied=rec.get("applied"),
                                 latencies={"tick_overhead_ms": frame["overhead_ms"], "chunk_wait_ms": frame["wait_ms"],
                                            "state_age_ms": jrec["age_ms"] if jrec else None})

    def _on_chunk(self, rec: dict, t: float) -> None:
        ep = self._ep
        if ep is None or rec.get("episode") != ep.number:
            # The first chunk of an episode usually arrives while its first tick waits for it, before that
            # tick's command record opens the episode: keep it for the opening.
            if ep is None or rec.get("episode", 0) > ep.number:
                self._early = [(r, tt) for r, tt in self._early if r.get("episode") == rec.get("episode")]
                self._early.append((rec, t))
            return
        if rec.get("error"):
            ep.journal.event({"kind": "policy_error", "t": t, "tick": rec["tick"],
                              "detail": str(rec["error"]).splitlines()[0]})
            self._live_event(rec["tick"], t - ep.t0, "policy_error", str(rec["error"]).splitlines()[0])
            return
        ep.journal.chunk({"obs_tick": rec["tick"], "actions": _list(rec["actions"]), "noise": _list(rec["noise"]),
                          "latency_ms": 1e3 * float(rec.get("latency_s") or 0.0)})
        if self._live_log is not None:
            self._live_log.chunk(rec["tick"], t - ep.t0, rec["actions"], 1e3 * float(rec.get("latency_s") or 0.0))

    def _on_safety(self, rec: dict, t: float) -> None:
        for e in rec["events"]:
            line = {"kind": "safety", "cause": e.get("cause", ""), "mode": e.get("mode", ""),
                    "detail": e.get("detail", ""), "raw": e.get("raw"), "applied": e.get("applied"),
                    "t": float(e["time"]) if isinstance(e.get("time"), (int, float)) else t}
            if self._ep is None:
                # A tick's events come just before its command record, which may open an episode ("start" on
                # the first executing tick): the next command record decides where they belong.
                self._pending_events.append(line)
            else:
                self._event(self._ep, line)

    def _event(self, ep: _Episode, line: dict) -> None:
        ep.journal.event(line)
        self._live_event(None, line["t"] - ep.t0, line["cause"], line["detail"])

    def _place_pending_events(self) -> None:
        pending, self._pending_events = self._pending_events, []
        for line in pending:
            if self._ep is not None:
                self._event(self._ep, line)
            elif self.session is not None:  # outside any episode (an e-stop while idle): still evidence
                if self._session_events is None:
                    self._session_events = JsonlAppender(self.session / "session_events.jsonl")
                urgent = line["cause"] in ("estop", "estop_reset") or time.monotonic() - self._session_sync > 1.0
                self._session_events.write({**line, "wall_time": time.time()}, sync=urgent)
                self._session_sync = time.monotonic() if urgent else self._session_sync

    def _on_status(self, st: dict, t: float) -> None:
        for w in self._awaiting:  # statuses of one topic arrive in order: a later episode means no more news
            if st.get("episode") == w.sim_episode and st.get("status") in ("running", "done"):
                w.sim = st
            w.sim_final = w.sim_final or st.get("status") == "done" and st.get("episode") == w.sim_episode or (
                w.sim_episode is not None and st.get("episode", -1) > w.sim_episode)
        self._finish_awaiting()
        ep = self._ep
        if ep is None or st.get("status") not in ("running", "done"):
            return
        if ep.sim_episode is None:
            ep.sim_episode = st.get("episode")
        if st.get("episode") == ep.sim_episode:
            ep.sim = st

    def _on_outcome(self, o: dict, t: float) -> None:
        answer = o.pop("_answer", None)
        ep = self._ep
        target = ep.number if ep is not None else self.last_episode
        if target is None:
            message = "no episode recorded yet: outcome ignored"
        else:
            o["episode"] = target
            if ep is not None:
                ep.journal.event({"kind": "outcome", "t": t, **o})
                self._live_event(None, t - ep.t0, "outcome", f"{o['result']} ({o['source']})")
            elif self.session is not None:  # after the episode: outcomes.jsonl (fsynced now), then the copy
                append_outcome(self.session, o)
                self._submit(refresh_outcome, self.session, target)
            message = f"episode {target}: {o['result']} ({o['source']})"
        self.log("info", f"outcome: {message}")
        if answer is not None:
            answer["message"] = message
            answer["done"].set()

    def _close_episode(self, reason: str) -> None:
        ep, self._ep = self._ep, None
        self.current_episode, self.last_episode = None, ep.number
        ep.close_reason = reason
        if self.info.outcome_source == "sim" and (ep.sim is None or ep.sim.get("status") != "done") \
                and reason != "shutdown":
            # The final status can trail the stop (another topic): wait for it, or for the next sim episode.
            ep.deadline = time.monotonic() + SIM_STATUS_WAIT_S
            self._awaiting.append(ep)
            return
        self._finish(ep)

    def _finish(self, ep: _Episode) -> None:
        outcome = None
        if self.info.outcome_source == "sim" and ep.sim is not None:
            s = ep.sim
            outcome = {"result": "success" if s.get("success_once") else "failure", "source": "sim",
                       "detail": {k: s.get(k) for k in ("episode", "seed", "step", "success", "success_once",
                                                         "max_steps", "task", "status")}}
        ep.journal.end({"reason": ep.close_reason, "wall_time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "outcome": outcome, "sim": ep.sim, "ticks": ep.ticks, "fault_ticks": ep.fault_ticks})
        if outcome is not None:
            self._live_event(None, time.monotonic() - ep.t0, "outcome", f"{outcome['result']} ({outcome['source']})")
        if self.session is not None:
            self.log("info", f"episode {ep.number} closed ({ep.close_reason}, {ep.journal.n_frames} frames); "
                             f"committing")
            self._submit(_quiet_commit, ep.journal.root, self.rrd)

    def _finish_awaiting(self, force: bool = False) -> None:
        now = time.monotonic()
        for ep in [e for e in self._awaiting if force or now > e.deadline or e.sim_final]:
            self._awaiting.remove(ep)
            self._finish(ep)

    def _live_event(self, tick: int | None, t_s: float, cause: str, text: str) -> None:
        if self._live_log is not None:
            self._live_log.event(tick if tick is not None else self._last_tick, t_s, cause, text)


class _NoJournal:
    """Live view without recording."""

    root = None
    n_frames = 0

    def frame(self, rec, images):
        self.n_frames += 1

    def chunk(self, rec):
        pass

    def event(self, rec):
        pass

    def end(self, info):
        pass


def _spawn():
    import multiprocessing

    return multiprocessing.get_context("spawn")


def _list(x):
    return None if x is None else np.asarray(x).tolist()


def _pick(joints, names, what):
    try:
        return joints.pick(names, what)
    except Exception:
        return None


__all__ = ["Recorder", "SessionInfo"]
