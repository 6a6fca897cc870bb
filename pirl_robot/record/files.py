"""Durable file writes: what survives kill -9 (and a power cut) is either the old file or the new one."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterator


def _clean(x: Any) -> Any:
    """JSON has no NaN/inf: write them as strings, which the reader turns back into floats."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def dumps(obj: Any) -> str:
    return json.dumps(_clean(obj), default=_default, separators=(",", ":"))


def _default(x: Any) -> Any:
    import numpy as np

    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, np.generic):
        return _clean(x.item())
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write to a temporary file, fsync it, rename it over `path`, fsync the directory."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(_clean(obj), default=_default, indent=1))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under root (before the rename that publishes it)."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(dirpath))


class JsonlAppender:
    """Append-only JSON lines; `sync` forces them to disk. A crash can cut only the last line short."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._f = open(self.path, "a", buffering=1 << 16)

    def write(self, obj: Any, sync: bool = False) -> None:
        """sync: fsync now (survives a power cut); otherwise the line still reaches the OS at once, so a kill -9
        of this process cannot lose it."""
        self._f.write(dumps(obj) + "\n")
        if sync:
            self.sync()
        else:
            self._f.flush()

    def sync(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            self.sync()
            self._f.close()


def append_jsonl(path: Path, obj: Any) -> None:
    """One line, appended and fsynced (small logs written rarely: outcomes, session events)."""
    with open(path, "a") as f:
        f.write(dumps(obj) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _restore(x: Any) -> Any:
    if isinstance(x, str) and x in ("nan", "inf", "-inf"):
        return float(x)
    if isinstance(x, dict):
        return {k: _restore(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_restore(v) for v in x]
    return x


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """(records, lines dropped): a line cut short by a crash (or otherwise unreadable) is dropped, not fatal."""
    path = Path(path)
    if not path.is_file():
        return [], 0
    out, dropped = [], 0
    for line in _lines(path):
        try:
            out.append(_restore(json.loads(line)))
        except json.JSONDecodeError:
            dropped += 1
    return out, dropped


def _lines(path: Path) -> Iterator[str]:
    data = path.read_bytes()
    for raw in data.split(b"\n"):
        if raw.strip():
            yield raw.decode("utf-8", errors="replace")
