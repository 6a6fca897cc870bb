"""The journal of the episode being recorded: append-only files, so a crash loses at most the last moment.

    journal/episode_000007/
        header.json      what the episode is (bundle, spec, schema, operator, parameters), written first
        frames.jsonl     one line per tick with an observation (state, joints, raw action, applied command, timing)
        images/<cam>/<tick>.png   the frame's camera images, written BEFORE its line (a line implies its images)
        chunks.jsonl     one line per policy chunk: the observation tick, actions, noise, latency
        events.jsonl     safety events, faults, policy errors, outcomes, and the final "end" line (fsynced each)

At the end of the episode the journal becomes a LeRobotDataset (record/commit.py) and is deleted. A journal left
behind by a crash is committed on the next start as an interrupted episode (or discarded, with a message, when it
holds no frame). Every line reaches the OS when written (a kill -9 of the process loses nothing written);
frames and chunks are fsynced in batches (`sync_every_s`, against power cuts), events at once.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from pirl_robot.record.files import JsonlAppender, _restore, read_jsonl, write_json_atomic

HEADER = "header.json"


class EpisodeJournal:
    def __init__(self, root: Path, header: dict, sync_every_s: float = 0.25):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=False)
        write_json_atomic(self.root / HEADER, header)
        self.frames = JsonlAppender(self.root / "frames.jsonl")
        self.chunks = JsonlAppender(self.root / "chunks.jsonl")
        self.events = JsonlAppender(self.root / "events.jsonl")
        self.sync_every_s = sync_every_s
        self._last_sync = time.monotonic()
        self.n_frames = self.n_chunks = self.n_events = 0

    def frame(self, rec: dict, images: dict[str, np.ndarray]) -> None:
        for cam, img in images.items():
            d = self.root / "images" / cam
            d.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(d / f"{rec['tick']}.png"), np.ascontiguousarray(img[..., ::-1]),
                               [cv2.IMWRITE_PNG_COMPRESSION, 1]):
                raise OSError(f"could not write the {cam} image of tick {rec['tick']} to {d}")
        self.frames.write(rec)
        self.n_frames += 1
        self._maybe_sync()

    def chunk(self, rec: dict) -> None:
        self.chunks.write(rec)
        self.n_chunks += 1
        self._maybe_sync()

    def event(self, rec: dict) -> None:
        self.events.write(rec, sync=True)
        self.n_events += 1

    def _maybe_sync(self) -> None:
        if time.monotonic() - self._last_sync >= self.sync_every_s:
            self.sync()

    def sync(self) -> None:
        self.frames.sync()
        self.chunks.sync()
        self._last_sync = time.monotonic()

    def end(self, info: dict) -> None:
        """The episode is complete: everything to disk, then the "end" line (its presence means complete)."""
        self.sync()
        self.events.write({"kind": "end", **info}, sync=True)
        self.close()

    def close(self) -> None:
        for f in (self.frames, self.chunks, self.events):
            f.close()


@dataclass
class JournalContents:
    root: Path
    header: dict
    frames: list[dict]
    chunks: list[dict]
    events: list[dict]
    end: dict | None  # the "end" line, None when the episode was interrupted
    dropped_lines: int = 0
    missing_images: list[int] = field(default_factory=list)  # ticks whose images are unreadable (dropped)

    @property
    def complete(self) -> bool:
        return self.end is not None


def read_journal(root: Path) -> JournalContents:
    """Everything readable in a journal; lines cut short and frames with unreadable images are dropped."""
    root = Path(root)
    header = _restore(json.loads((root / HEADER).read_text()))
    frames, d1 = read_jsonl(root / "frames.jsonl")
    chunks, d2 = read_jsonl(root / "chunks.jsonl")
    events, d3 = read_jsonl(root / "events.jsonl")
    end = next((e for e in reversed(events) if e.get("kind") == "end"), None)
    events = [e for e in events if e.get("kind") != "end"]
    cams = [c[0] for c in header["schema"]["cameras"]]
    kept, missing = [], []
    for fr in frames:
        if all((root / "images" / cam / f"{fr['tick']}.png").is_file() for cam in cams):
            kept.append(fr)
        else:
            missing.append(fr["tick"])
    return JournalContents(root, header, kept, chunks, events, end, d1 + d2 + d3, missing)


def load_images(root: Path, tick: int, cams: list[str]) -> dict[str, np.ndarray] | None:
    """The frame's camera images (RGB uint8), or None when one is missing or corrupt (cut short by a crash)."""
    out = {}
    for cam in cams:
        img = cv2.imread(str(Path(root) / "images" / cam / f"{tick}.png"), cv2.IMREAD_COLOR)
        if img is None:
            return None
        out[cam] = np.ascontiguousarray(img[..., ::-1])
    return out
