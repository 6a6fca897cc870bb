"""The bundle layout on disk and its manifest; every check that needs no model lives here.

    <bundle>/manifest.json     format, versions, source checkpoint hash, sha256 + size of every other file
    <bundle>/model.safetensors weights (safetensors only: a bundle is never unpickled)
    <bundle>/model.json        model kind, model config, sampler settings
    <bundle>/spec.json         the PolicySpec (cameras, joint names and order, units, action type, rates, horizons)
    <bundle>/stats.json        normalisation statistics
    <bundle>/calibration_<camera>.yaml   optional: the camera calibration the policy was trained with
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

FORMAT = "pirl-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
MODEL_JSON = "model.json"
SPEC_JSON = "spec.json"
STATS_JSON = "stats.json"
PAYLOAD = (WEIGHTS, MODEL_JSON, SPEC_JSON, STATS_JSON)
CALIBRATION_FILE = "calibration_{}.yaml"  # optional, one per camera, listed in manifest["camera_calibrations"]
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol >= 2, and torch.save's zip container


class BundleError(RuntimeError):
    """A bundle is missing, modified, of an unknown format, unsafe to load, or does not fit the robot."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_dir(path: Path, names: list[str]) -> str:
    """One hash over several files of a directory: name, size and content of each, in name order."""
    h = hashlib.sha256()
    for name in sorted(names):
        p = path / name
        h.update(name.encode() + b"\0" + str(p.stat().st_size).encode() + b"\0")
        h.update(bytes.fromhex(sha256_file(p)))
    return h.hexdigest()


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path} is not readable JSON ({e})") from e
    if not isinstance(data, dict):
        raise BundleError(f"{path} must hold a JSON object")
    return data


def read_manifest(bundle_dir: str | Path) -> dict:
    """The manifest, after checking format and version (not the checksums: see verify_files)."""
    d = Path(bundle_dir)
    if not d.is_dir():
        raise BundleError(f"bundle {d} does not exist or is not a directory")
    if not (d / MANIFEST).exists():
        raise BundleError(f"{d} is not a pirl bundle: {MANIFEST} not found (export one with `pirl export`)")
    m = read_json(d / MANIFEST)
    if m.get("format") != FORMAT:
        raise BundleError(f"{d / MANIFEST}: format is {m.get('format')!r}, expected {FORMAT!r}")
    v = m.get("format_version")
    if not isinstance(v, int) or not 1 <= v <= FORMAT_VERSION:
        raise BundleError(f"{d}: bundle format_version {v!r} is not supported by this pirl-robot "
                          f"(reads 1..{FORMAT_VERSION}); re-export it or upgrade pirl-robot")
    if not isinstance(m.get("files"), dict):
        raise BundleError(f"{d / MANIFEST} lacks the 'files' table")
    return m


def verify_files(bundle_dir: Path, manifest: dict) -> None:
    """Every listed file present with its recorded size and sha256, and nothing else in the directory."""
    listed = manifest["files"]
    missing = [n for n in PAYLOAD if n not in listed]
    if missing:
        raise BundleError(f"{bundle_dir}: manifest does not list {missing}")
    on_disk = {p.name for p in bundle_dir.iterdir()} - {MANIFEST}
    absent = sorted(set(listed) - on_disk)
    if absent:
        raise BundleError(f"{bundle_dir}: file(s) {absent} listed in the manifest are missing")
    extra = sorted(on_disk - set(listed))
    if extra:
        raise BundleError(f"{bundle_dir}: unexpected file(s) {extra} not in the manifest; a bundle holds only "
                          f"its listed files (re-export instead of adding files by hand)")
    for name, entry in listed.items():
        p = bundle_dir / name
        if not p.is_file():
            raise BundleError(f"{bundle_dir}: {name} is not a regular file")
        if p.stat().st_size != entry.get("bytes"):
            raise BundleError(f"{bundle_dir}: {name} has {p.stat().st_size} bytes, the manifest says "
                              f"{entry.get('bytes')}: the bundle was modified or truncated")
        if sha256_file(p) != entry.get("sha256"):
            raise BundleError(f"{bundle_dir}: checksum mismatch for {name}: the bundle was modified or corrupted")


def check_safetensors_header(path: Path) -> None:
    """Refuse anything that is not a safetensors file before a loader looks at it (pickles above all)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if any(head.startswith(m) for m in _PICKLE_MAGIC):
        raise BundleError(f"{path} is a pickle / torch.save payload; bundles load safetensors only and are "
                          f"never unpickled")
    if len(head) < 9 or head[8:9] != b"{" or struct.unpack("<Q", head[:8])[0] > path.stat().st_size:
        raise BundleError(f"{path} is not a safetensors file")
