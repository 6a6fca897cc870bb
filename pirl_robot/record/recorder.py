"""The episode recorder: the deploy node's taps in, one crash-safe LeRobotDataset per episode out.

    rec = Recorder("recordings/", SessionInfo(...))       # record/ros.py builds it from the node's parameters
    node.taps.append(rec.tap)                             # typed records from the control loop (deploy/taps.py)
    rec.set_outcome("success", "operator")                # the open episode, else the last one
    rec.close()                                           # commits what is open, waits for the writer

Nothing heavy runs on the control loop: a tap only puts the record on a queue. A writer thread keeps the
episode's journal (record/journal.py: append-only, fsynced) and the live Rerun view; at the end of the episode
the journal is handed to a commit worker PROCESS (record/commit_pool.py runs record/commit.py: lerobot writer, then
one atomic rename), so video encoding and parquet writing never hold this process's GIL while the next episode runs.

Episodes follow the node: the first executing tick of node episode N opens episode_N; ticks after ~/stop are
recorded while the safety filter brings the arm to rest (at most `stop_grace_s`), then the episode closes.
On start, journals left by a crash (this session dir or any other under record_dir) are committed as interrupted
episodes, or discarded with a message when they hold no frame.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from pirl_robot.deploy.taps import ChunkRecord, SafetyRecord, TapRecord, TickRecord
from pirl_robot.process import wall_time
from pirl_robot.record.commit import CommitResult, append_outcome, refresh_outcome
from pirl_robot.record.commit_pool import CommitPool, commit_quietly, recover_quietly
from pirl_robot.record.files import JsonlAppender, write_json_atomic
from pirl_robot.record.journal import EpisodeJournal
from pirl_robot.record.schema import RecordSchema
from pirl_robot.safety.filter import IN_MOTION
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


class Recorder:
    def __init__(self, record_dir: str | Path | None, info: SessionInfo, *, video: bool = False, live: str = "",
                 rrd: bool = True, commit_in: str = "process", stop_grace_s: float = 5.0,
                 sync_every_s: float = 0.25, log: Callable[[str, str], None] | None = None):
        self.record_dir = None if record_dir is None else Path(record_dir)  # None: live view only
        self.info, self.video, self.live, self.rrd = info, video, live, rrd
        self.commit_in, self.sync_every_s = commit_in, sync_every_s
        self.grace_ticks = max(1, int(stop_grace_s * info.schema.fps))
        self.log = log or (lambda level, msg: print(f"[record] {msg}", flush=True))
        self.commits = CommitPool(commit_in, self.log)  # started on the writer thread
        self.session = self._make_session_dir()
        self.current_episode: int | None = None  # read by the operator's service (answers which episode)
        self.last_episode: int | None = None
        self.record_errors = 0
        self._q: queue.Queue = queue.Queue()
        self._ep: _Episode | None = None
        self._joint_names: tuple[str, ...] | None = None
        self._last_tick = 0
        self._early: list[tuple[ChunkRecord, float]] = []  # chunks of an episode not opened yet
        self._awaiting: list[_Episode] = []  # closed, waiting for the simulated arm's final status
        self._pending_events: list[dict] = []  # safety events waiting for the next command record
        self._session_events: JsonlAppender | None = None  # events outside any episode
        self._session_sync = 0.0
        self._live_log = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    @property
    def committed(self) -> list[CommitResult]:
        return self.commits.committed

    @property
    def errors(self) -> int:
        return self.record_errors + self.commits.errors

    # --- called from any thread ---------------------------------------------------------------------------
    def tap(self, rec: TapRecord) -> None:
        """node.taps entry: must be cheap, it runs on the control loop."""
        if isinstance(rec, TickRecord) and rec.obs is not None:  # the drivers reuse their image buffers
            obs = rec.obs
            rec = dataclasses.replace(rec, obs={**obs, "images": {k: np.array(v)
                                                                  for k, v in obs.get("images", {}).items()}})
        self._q.put((type(rec).__name__, rec, time.monotonic()))

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
                                 "time": wall_time(), "_answer": answer},
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
                "start_time": wall_time()})
        except OSError as e:
            raise ValueError(f"cannot record into {self.record_dir}: {e}") from e
        self.info.name = path.name
        return path

    def _run(self) -> None:
        self.commits.start()  # from this long-lived thread: the worker dies with it (PR_SET_PDEATHSIG)
        # Journals a crash left behind (any session under record_dir) go first, in the commit worker.
        if self.session is not None:
            self.commits.submit(recover_quietly, self.record_dir, self.rrd, self.session)
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
                    self.commits.wait()
                    rec.set()
                    continue
                {"TickRecord": self._on_tick, "ChunkRecord": self._on_chunk, "SafetyRecord": self._on_safety,
                 "status": self._on_status, "outcome": self._on_outcome}[kind](rec, t)
            except Exception as e:  # a recording problem must never stop the robot: log it, keep going
                self.record_errors += 1
                self.log("error", f"recorder: {kind} record failed: {type(e).__name__}: {e}")
        try:
            self._place_pending_events()
            if self._ep is not None:
                self._close_episode("shutdown")
            self._finish_awaiting(force=True)
            self.commits.wait()
        finally:
            if self._session_events is not None:
                self._session_events.close()
            self.commits.shutdown()
            if self._live_log is not None:
                self._live_log.close()

    # --- records ------------------------------------------------------------------------------------------
    def _on_tick(self, rec: TickRecord, t: float) -> None:
        self._last_tick = rec.tick
        if rec.joints is not None:
            self._joint_names = tuple(rec.joints.names)
        ep = self._ep
        if rec.executing:
            if ep is None or ep.number != rec.episode:
                if ep is not None:
                    self._close_episode("next episode started")
                ep = self._open_episode(rec)
            ep.stop_tick = None
            self._record_tick(ep, rec)
        elif ep is not None:
            if ep.stop_tick is None:
                ep.stop_tick = rec.tick
            if rec.mode in IN_MOTION and rec.tick - ep.stop_tick < self.grace_ticks:
                self._record_tick(ep, rec)  # the controlled stop belongs to the episode
            else:
                self._place_pending_events()  # "stopped" and the like, raised on this last tick
                self._close_episode("stopped")
        self._place_pending_events()

    def _open_episode(self, rec: TickRecord) -> _Episode:
        info, n = self.info, int(rec.episode)
        schema = info.schema
        if self._joint_names and self._joint_names != schema.joint_names:
            schema = RecordSchema.from_dict({**schema.to_dict(), "joint_names": self._joint_names})
            info.schema = schema
        header = {"session": self.info.name, "episode": n, "task": info.task, "robot": info.robot,
                  "operator": info.operator, "bundle": info.bundle, "spec": info.spec, "schema": schema.to_dict(),
                  "video": self.video, "params": info.params,
                  "noise_seed": info.noise_seed_base + n if info.noise_seed_base >= 0 else None,
                  "start_time": wall_time(), "t0": rec.t}
        journal = (EpisodeJournal(self.session / "journal" / f"episode_{n:06d}", header, self.sync_every_s)
                   if self.session is not None else _NoJournal())
        self._ep = ep = _Episode(n, journal, float(rec.t))
        self.current_episode = n
        if self.live:
            from pirl_robot.record.rerun_log import EpisodeLogger, episode_markdown

            if self._live_log is None:
                self._live_log = EpisodeLogger.open(schema, live=self.live, recording_id=self.info.name)
            self._live_log.info(episode_markdown({**header, "outcome": {"result": "running"}}))
        self.log("info", f"recording episode {n} -> {journal.root}")
        early, self._early = self._early, []
        for r, tt in early:
            if r.episode == n:
                self._on_chunk(r, tt)
        return ep

    def _record_tick(self, ep: _Episode, rec: TickRecord) -> None:
        ep.ticks += 1
        t = float(rec.t)
        obs = rec.obs
        if obs is None:
            ep.fault_ticks += 1
            text = rec.fault or "no observation"
            if text != ep.fault:
                ep.journal.event({"kind": "fault", "t": t, "tick": rec.tick, "detail": text})
                self._live_event(rec.tick, t - ep.t0, "fault", text)
            ep.fault = text
            return
        ep.fault = None
        joints = rec.joints
        jrec = None
        if joints is not None:
            names = self.info.schema.joint_names
            pos = joints.position if tuple(joints.names) == names else _pick(joints, names, "position")
            vel = joints.velocity if tuple(joints.names) == names else _pick(joints, names, "velocity")
            jrec = {"position": _list(pos), "velocity": _list(vel), "age_ms": (t - joints.stamp) * 1e3}
        # on disk (record/schema.py) the policy's action is "raw" and the command sent is "applied"
        frame = {"tick": rec.tick, "t": t, "executing": rec.executing, "mode": rec.mode,
                 "state": _list(obs["state"]), "joints": jrec, "raw": _list(rec.action),
                 "applied": _list(rec.command), "overhead_ms": 1e3 * rec.overhead_s, "wait_ms": 1e3 * rec.waited_s}
        ep.journal.frame(frame, obs.get("images", {}))
        if self._live_log is not None:
            self._live_log.frame(rec.tick, t - ep.t0, state=obs["state"], images=obs.get("images"),
                                 raw=rec.action, applied=rec.command,
                                 latencies={"tick_overhead_ms": frame["overhead_ms"], "chunk_wait_ms": frame["wait_ms"],
                                            "state_age_ms": jrec["age_ms"] if jrec else None})

    def _on_chunk(self, rec: ChunkRecord, t: float) -> None:
        ep = self._ep
        if ep is None or rec.episode != ep.number:
            # The first chunk of an episode usually arrives while its first tick waits for it, before that
            # tick's record opens the episode: keep it for the opening.
            if ep is None or rec.episode > ep.number:
                self._early = [(r, tt) for r, tt in self._early if r.episode == rec.episode]
                self._early.append((rec, t))
            return
        if rec.error:
            ep.journal.event({"kind": "policy_error", "t": t, "tick": rec.obs_tick,
                              "detail": rec.error.splitlines()[0]})
            self._live_event(rec.obs_tick, t - ep.t0, "policy_error", rec.error.splitlines()[0])
            return
        line = {"obs_tick": rec.obs_tick, "actions": _list(rec.actions), "noise": _list(rec.noise),
                "latency_ms": 1e3 * rec.latency_s}
        if rec.prefix is not None:  # real-time chunking: what the chunk was guided by (exact offline re-run)
            p = rec.prefix
            line["rtc_prefix"] = _list(p.actions)
            line["rtc"] = [len(p.actions), int(p.inference_delay), int(p.execution_horizon)]
        ep.journal.chunk(line)
        if self._live_log is not None:
            self._live_log.chunk(rec.obs_tick, t - ep.t0, rec.actions, 1e3 * rec.latency_s)

    def _on_safety(self, rec: SafetyRecord, t: float) -> None:
        for e in rec.events:
            line = {"kind": "safety", "cause": e.get("cause", ""), "mode": e.get("mode", ""),
                    "detail": e.get("detail", ""), "raw": e.get("raw"), "applied": e.get("applied"),
                    "t": float(e["time"]) if isinstance(e.get("time"), (int, float)) else t}
            if self._ep is None:
                # A tick's events come just before its tick record, which may open an episode ("start" on
                # the first executing tick): the next tick record decides where they belong.
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
                self.commits.submit(refresh_outcome, self.session, target)
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
        ep.journal.end({"reason": ep.close_reason, "wall_time": wall_time(),
                        "outcome": outcome, "sim": ep.sim, "ticks": ep.ticks, "fault_ticks": ep.fault_ticks})
        if outcome is not None:
            self._live_event(None, time.monotonic() - ep.t0, "outcome", f"{outcome['result']} ({outcome['source']})")
        if self.session is not None:
            self.log("info", f"episode {ep.number} closed ({ep.close_reason}, {ep.journal.n_frames} frames); "
                             f"committing")
            self.commits.submit(commit_quietly, ep.journal.root, self.rrd)

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


def _list(x):
    return None if x is None else np.asarray(x).tolist()


def _pick(joints, names, what):
    try:
        return joints.pick(names, what)
    except Exception:
        return None


__all__ = ["Recorder", "SessionInfo"]
