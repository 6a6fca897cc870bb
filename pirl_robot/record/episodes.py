"""Reading recorded episodes back: the LeRobotDataset, its columns and images, the sidecars, the final outcome.

    eps = find_episodes(["recordings/"])             # record dirs, session dirs or episode dirs
    ep = eps[0]
    ep.dataset()                                     # lerobot's LeRobotDataset over the episode
    cols = ep.columns()                              # {"observation.state": (N, S), "timing.t_s": (N,), ...}
    ep.images("base_camera")                         # (N, H, W, 3) uint8
    ep.outcome                                       # {"result": "success", "source": "operator", ...}

Layout of a record dir (see record/recorder.py):

    <record_dir>/<session>/session.json
                          /episodes/episode_000001/   LeRobotDataset v3 + meta/pirl_episode.json, pirl_events.jsonl
                                                      + rerun/episode.rrd
                          /outcomes.jsonl            outcomes entered after an episode ended (latest wins)
                          /session_events.jsonl      safety events outside any episode
                          /journal/episode_000002/   the episode being recorded (or left by a crash)
                          /discarded/episode_...     what was kept of episodes that could not be committed
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import numpy as np

from pirl_robot.record.files import _restore, read_jsonl
from pirl_robot.record.schema import IMAGE_PREFIX, RecordSchema

EPISODE_META = "meta/pirl_episode.json"
EPISODE_EVENTS = "meta/pirl_events.jsonl"
RRD = "rerun/episode.rrd"
OUTCOMES = "outcomes.jsonl"


class RecordingError(ValueError):
    """A path that is not a recorded episode, or an episode that cannot be read."""


class RecordedEpisode:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta = self.root / EPISODE_META
        if not meta.is_file():
            raise RecordingError(f"{self.root} is not a recorded episode (no {EPISODE_META})")
        self.meta: dict = _restore(json.loads(meta.read_text()))
        self.events, _ = read_jsonl(self.root / EPISODE_EVENTS)
        self._columns: dict[str, np.ndarray] | None = None

    def __repr__(self) -> str:
        return f"RecordedEpisode({self.root}, {self.outcome['result']})"

    @property
    def name(self) -> str:
        return f"{self.meta['session']}/{self.root.name}"

    @property
    def session_dir(self) -> Path:
        return self.root.parent.parent

    @property
    def schema(self) -> RecordSchema:
        return RecordSchema.from_dict(self.meta["schema"])

    @property
    def task(self) -> str:
        return self.meta.get("task", "")

    @property
    def bundle_id(self) -> str:
        return (self.meta.get("bundle") or {}).get("id", "")

    @property
    def rrd(self) -> Path:
        return self.root / RRD

    @property
    def outcome(self) -> dict:
        """The recorded outcome, unless one was entered later for this episode (outcomes.jsonl: latest wins)."""
        later, _ = read_jsonl(self.session_dir / OUTCOMES)
        mine = [o for o in later if o.get("episode") == self.meta["episode"]]
        return mine[-1] if mine else self.meta["outcome"]

    def dataset(self):
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        try:
            return LeRobotDataset(f"local/{self.meta['session']}-{self.root.name}", root=self.root,
                                  return_uint8=True)
        except Exception as e:
            raise RecordingError(f"cannot read the dataset of {self.root}: {type(e).__name__}: {e}") from e

    @cached_property
    def _ds(self):
        return self.dataset()

    def columns(self) -> dict[str, np.ndarray]:
        """Every non-image feature as a numpy array over the episode's rows (scalars as (N,))."""
        if self._columns is None:
            self._columns = self._read_columns()
        return self._columns

    def _read_columns(self) -> dict[str, np.ndarray]:
        ds = self._ds
        keys = [k for k, f in ds.meta.features.items() if f["dtype"] not in ("image", "video")]
        cols = ds.hf_dataset.with_format("numpy", columns=keys)[:]
        out = {}
        for k in keys:
            v = np.asarray(cols[k]) if not isinstance(cols[k], list) else np.stack(cols[k])
            if v.dtype == object:
                v = np.stack(list(v))
            out[k] = v.reshape(len(v)) if v.ndim == 2 and v.shape[1] == 1 else v
        return out

    def images(self, cam: str) -> np.ndarray:
        ds, key = self._ds, IMAGE_PREFIX + cam
        if key not in ds.meta.features:
            raise RecordingError(f"{self.root} has no camera {cam!r}")
        if ds.meta.features[key]["dtype"] == "image":
            col = ds.hf_dataset.with_format("numpy", columns=[key])[:][key]
            return np.stack([np.asarray(x) for x in col]) if col.dtype == object else np.asarray(col)
        return np.stack([ds[i][key].numpy().transpose(1, 2, 0) for i in range(len(ds))])

    def chunks(self) -> list[dict]:
        """The policy chunks of the episode: {"row", "tick", "actions" (H, A), "noise" (H, N), "latency_ms",
        "prefix"}: prefix is the flow.rtc.ChunkPrefix a real-time-chunking chunk was guided by, else None
        (always None in recordings made before the policy.rtc columns)."""
        c = self.columns()
        rows = np.flatnonzero(c["policy.chunk_new"])
        return [{"row": int(r), "tick": int(c["timing.tick"][r]), "actions": c["policy.chunk_actions"][r],
                 "noise": c["policy.chunk_noise"][r], "latency_ms": float(c["policy.latency_ms"][r]),
                 "prefix": _rtc_prefix(c, r)} for r in rows]


def _rtc_prefix(columns: dict, row: int):
    if "policy.rtc" not in columns or int(columns["policy.rtc"][row][0]) == 0:
        return None
    from pirl_robot.flow.rtc import ChunkPrefix

    n, delay, horizon = (int(x) for x in columns["policy.rtc"][row])
    return ChunkPrefix(columns["policy.rtc_prefix"][row][:n].astype(np.float32), delay, horizon)


def find_episodes(paths: list[str | Path]) -> list[RecordedEpisode]:
    """Recorded episodes under each path (a record dir, a session dir, or an episode dir), in path order."""
    out: list[RecordedEpisode] = []
    for p in map(Path, paths):
        if (p / EPISODE_META).is_file():
            out.append(RecordedEpisode(p))
            continue
        if not p.is_dir():
            raise RecordingError(f"{p} does not exist")
        metas = sorted(p.glob(f"episodes/episode_*/{EPISODE_META}")) + sorted(
            p.glob(f"*/episodes/episode_*/{EPISODE_META}"))
        out += [RecordedEpisode(m.parent.parent) for m in metas]
    return out


def pending_journals(paths: list[str | Path]) -> list[Path]:
    """Journals not yet committed (an episode in progress, or left by a crash: the next recorder start commits
    them; `pirl_robot.record.commit.recover` does it without one)."""
    out = []
    for p in map(Path, paths):
        out += sorted(p.glob("journal/episode_*")) + sorted(p.glob("*/journal/episode_*"))
    return out
