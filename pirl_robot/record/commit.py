"""Journal -> LeRobotDataset (lerobot's own v3 writer), published with one atomic rename; crash recovery.

    python -m pirl_robot.record.commit recordings/          # commit what crashes left behind, without a recorder

Commit steps, each safe to interrupt: read the journal -> write the dataset into episodes/.tmp_<name> -> add the
sidecars (meta/pirl_episode.json, meta/pirl_events.jsonl) -> read it back with LeRobotDataset and write the .rrd
from it -> fsync every file -> rename to episodes/<name> -> delete the journal. A crash before the rename leaves
the journal (committed again on the next start); after it, only the journal's deletion is repeated. Completed
episodes are never written again: an outcome entered later is appended to the session's outcomes.jsonl (and
copied into pirl_episode.json by an atomic replace).
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pirl_robot.process import wall_time
from pirl_robot.record.episodes import EPISODE_EVENTS, EPISODE_META, OUTCOMES, RRD, RecordedEpisode
from pirl_robot.record.files import (append_jsonl, dumps, fsync_dir, fsync_tree, read_jsonl,
                                     write_json_atomic)
from pirl_robot.record.journal import JournalContents, load_images, read_journal
from pirl_robot.record.schema import FORMAT, IMAGE_PREFIX, RecordSchema, features, rtc_prefix, vec

SAFETY_COUNTED = "safety"


@dataclass
class CommitResult:
    name: str
    status: str  # committed | recovered | discarded | already_committed
    message: str
    path: Path | None = None


def commit_journal(journal: Path, rrd: bool = True, log=print) -> CommitResult:
    """Turn one journal into a committed episode (see the module docstring). Returns what happened."""
    journal = Path(journal)
    session = journal.parent.parent
    name = journal.name
    final = session / "episodes" / name
    if final.exists():  # crashed after the rename: only the journal's deletion was left
        shutil.rmtree(journal, ignore_errors=True)
        return CommitResult(name, "already_committed", f"{name}: already committed; removed its journal", final)
    try:
        j = read_journal(journal)
    except (OSError, ValueError, KeyError) as e:
        return _discard(journal, f"unreadable journal ({type(e).__name__}: {e})", log)
    if not j.frames:
        why = "no frame was recorded" + ("" if j.complete else " before the crash")
        return _discard(journal, why, log)
    tmp = session / "episodes" / f".tmp_{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    written = _write_dataset(j, tmp)
    meta = episode_meta(j, written, session)
    write_json_atomic(tmp / EPISODE_META, meta)
    with open(tmp / EPISODE_EVENTS, "w") as f:
        for e in _timed_events(j):
            f.write(dumps(e) + "\n")
    episode = RecordedEpisode(tmp)
    if len(episode.dataset()) != written:  # read back with lerobot before publishing
        raise RuntimeError(f"{name}: the written dataset has {len(episode.dataset())} rows, expected {written}")
    if rrd:
        from pirl_robot.record.rerun_log import log_recorded_episode

        log_recorded_episode(episode, tmp / RRD)
    fsync_tree(tmp)
    tmp.rename(final)
    fsync_dir(final.parent)
    shutil.rmtree(journal)
    status = "committed" if j.complete else "recovered"
    msg = (f"{name}: committed {written} frames, outcome {meta['outcome']['result']}" if j.complete else
           f"{name}: recovered {written} frames of an episode interrupted by a crash "
           f"(outcome '{meta['outcome']['result']}'; {j.dropped_lines} cut-short lines and "
           f"{len(j.missing_images)} frames without images dropped)")
    return CommitResult(name, status, msg, final)


def _discard(journal: Path, why: str, log) -> CommitResult:
    """Keep the header and events (the safety record) under discarded/, drop the rest."""
    dest = journal.parent.parent / "discarded" / journal.name
    dest.mkdir(parents=True, exist_ok=True)
    for f in ("header.json", "events.jsonl"):
        if (journal / f).is_file():
            shutil.copy2(journal / f, dest / f)
    fsync_tree(dest)
    shutil.rmtree(journal)
    msg = f"{journal.name}: discarded ({why}); its header and events are kept in {dest}"
    return CommitResult(journal.name, "discarded", msg, dest)


def _write_dataset(j: JournalContents, root: Path) -> int:
    import datasets
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    datasets.disable_progress_bars()
    h = j.header
    schema = RecordSchema.from_dict(h["schema"])
    video = bool(h.get("video", False))
    ds = LeRobotDataset.create(f"pirl/{h['session']}-{j.root.name}", fps=max(1, round(schema.fps)),
                               features=features(schema, video), root=root, robot_type=h.get("robot"),
                               use_videos=video)
    chunks = {int(c["obs_tick"]): c for c in j.chunks if c.get("actions") is not None}
    cams = [c[0] for c in schema.cameras]
    t0 = j.frames[0]["t"]
    n_a, n_j, n_c, hz = schema.action_dim, len(schema.joint_names), len(schema.command_names), schema.chunk_size
    task = h.get("task") or ""
    written = 0
    for fr in j.frames:
        images = load_images(j.root, fr["tick"], cams) if cams else {}
        if images is None:
            j.missing_images.append(fr["tick"])
            continue
        ch = chunks.get(int(fr["tick"]))
        joints = fr.get("joints") or {}
        row = {
            "observation.state": vec(fr["state"], len(schema.state_names)),
            "observation.joints.position": vec(joints.get("position"), n_j),
            "observation.joints.velocity": vec(joints.get("velocity"), n_j),
            "action": vec(fr.get("raw"), n_a),
            "action.valid": np.array([fr.get("raw") is not None]),
            "command.applied": vec(fr.get("applied"), n_c),
            "command.sent": np.array([fr.get("applied") is not None]),
            "policy.chunk_new": np.array([ch is not None]),
            "policy.chunk_actions": np.zeros((hz, n_a), np.float32) if ch is None else
            np.asarray(ch["actions"], np.float32).reshape(hz, n_a),
            "policy.chunk_noise": np.zeros((hz, schema.noise_width), np.float32) if ch is None else
            np.asarray(ch["noise"], np.float32).reshape(hz, schema.noise_width),
            "policy.rtc_prefix": rtc_prefix(ch, hz, n_a),
            "policy.rtc": np.asarray((ch or {}).get("rtc", (0, 0, 0)), np.int32),
            "policy.latency_ms": np.array([0.0 if ch is None else ch["latency_ms"]], np.float32),
            "policy.executing": np.array([bool(fr.get("executing", True))]),
            "timing.tick": np.array([int(fr["tick"])], np.int64),
            "timing.t_s": np.array([fr["t"] - t0], np.float64),
            "timing.state_age_ms": np.array([joints.get("age_ms", 0.0)], np.float32),
            "timing.tick_overhead_ms": np.array([fr.get("overhead_ms", 0.0)], np.float32),
            "timing.wait_ms": np.array([fr.get("wait_ms", 0.0)], np.float32),
            "task": task,
        }
        for cam in cams:
            row[IMAGE_PREFIX + cam] = images[cam]
        ds.add_frame(row)
        written += 1
    if written:
        ds.save_episode()
    ds.finalize()
    if not written:
        raise RuntimeError(f"{j.root.name}: no frame with readable images")
    return written


def _timed_events(j: JournalContents) -> list[dict]:
    """Events with t_s (seconds since the first frame) and the tick they fell on."""
    t0 = j.frames[0]["t"]
    ticks = np.array([f["tick"] for f in j.frames])
    times = np.array([f["t"] for f in j.frames])
    out = []
    for e in j.events:
        t = e.get("t", t0)
        i = max(0, int(np.searchsorted(times, t, side="right")) - 1)
        out.append({**e, "t_s": float(t - t0), "tick": int(e.get("tick", ticks[i]))})
    return out


def episode_meta(j: JournalContents, frames: int, session: Path) -> dict:
    h, end = j.header, j.end or {}
    causes: dict[str, int] = {}
    for e in j.events:
        key = e.get("cause") if e.get("kind") == SAFETY_COUNTED else e.get("kind")
        causes[key] = causes.get(key, 0) + 1
    outcome = end.get("outcome")
    entered = [e for e in j.events if e.get("kind") == "outcome"]
    if entered:  # the operator's (or the simulator's) word during the episode
        outcome = {k: entered[-1].get(k) for k in ("result", "source", "detail", "time")}
    later = [o for o in read_jsonl(session / OUTCOMES)[0] if o.get("episode") == h["episode"]]
    if later:
        outcome = later[-1]
    if outcome is None:
        outcome = {"result": "interrupted" if not j.complete else "unknown",
                   "source": "recovery" if not j.complete else "none", "detail": {}}
    chunk_lat = [c["latency_ms"] for c in j.chunks if c.get("latency_ms") is not None]
    return {
        "format": FORMAT, "session": h["session"], "episode": h["episode"], "task": h.get("task", ""),
        "robot": h.get("robot"), "operator": h.get("operator", ""), "bundle": h.get("bundle", {}),
        "outcome": outcome, "interrupted": not j.complete, "end_reason": end.get("reason", "crash"),
        "start_time": h.get("start_time"), "end_time": end.get("wall_time"),
        "duration_s": float(j.frames[-1]["t"] - j.frames[0]["t"]),
        "frames": frames, "chunks": sum(1 for c in j.chunks if c.get("actions") is not None),
        "policy_errors": causes.get("policy_error", 0), "input_faults": causes.get("fault", 0),
        "event_counts": causes, "noise_seed": h.get("noise_seed"), "params": h.get("params", {}),
        "schema": h["schema"], "spec": h.get("spec"), "video": bool(h.get("video", False)),
        "sim": end.get("sim"), "policy_latency_ms_mean": float(np.mean(chunk_lat)) if chunk_lat else None,
        "committed_time": wall_time(),
    }


def append_outcome(session: Path, outcome: dict) -> None:
    """An outcome entered after its episode ended: appended to the session's outcomes.jsonl and fsynced (what
    readers trust: the latest entry for an episode wins), before the committed copy is refreshed."""
    append_jsonl(Path(session) / OUTCOMES, outcome)


def refresh_outcome(session: Path, episode: int) -> CommitResult:
    """Copy the latest outcome of outcomes.jsonl into the committed episode's pirl_episode.json (atomic replace);
    an episode not committed yet picks it up when it is."""
    session = Path(session)
    entries = [o for o in read_jsonl(session / OUTCOMES)[0] if o.get("episode") == episode]
    final = session / "episodes" / f"episode_{episode:06d}"
    if entries and (final / EPISODE_META).is_file():
        write_json_atomic(final / EPISODE_META, {**RecordedEpisode(final).meta, "outcome": entries[-1]})
    result = entries[-1]["result"] if entries else "?"
    return CommitResult(final.name, "outcome", f"episode {episode}: outcome {result} recorded", final)


def recover(record_dir: str | Path, rrd: bool = True, log=print, exclude: Path | None = None) -> list[CommitResult]:
    """Commit (or discard, with a message) every journal under a record dir or one session dir; `exclude`: the
    session being recorded now (its journal is in use)."""
    root = Path(record_dir)
    journals = sorted(root.glob("journal/episode_*")) + sorted(root.glob("*/journal/episode_*"))
    if exclude is not None:
        journals = [j for j in journals if j.parent.parent.resolve() != Path(exclude).resolve()]
    out = []
    for jdir in journals:
        try:
            res = commit_journal(jdir, rrd=rrd, log=log)
        except Exception as e:  # keep the journal: nothing is lost, and the next start tries again
            res = CommitResult(jdir.name, "failed", f"{jdir}: recovery failed ({type(e).__name__}: {e}); the "
                                                    f"journal is kept")
        log(f"[record] {res.message}")
        out.append(res)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    results = [r for d in args for r in recover(d)]
    if not results:
        print("nothing to recover")
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
