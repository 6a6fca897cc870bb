"""checkpoint -> bundle. The checkpoint is loaded strictly first, so a broken checkpoint never becomes a bundle."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import safetensors
import torch
from safetensors.torch import save_file

import pirl_robot
from pirl_robot.bundle.format import (CALIBRATION_FILE, FORMAT, FORMAT_VERSION, MANIFEST, MODEL_JSON, PAYLOAD, SPEC_JSON, STATS_JSON,
                                      WEIGHTS, BundleError, sha256_dir, sha256_file)
from pirl_robot.checkpoint import POLICY_JSON, CheckpointError, load_policy
from pirl_robot.checkpoint import WEIGHTS as CKPT_WEIGHTS
from pirl_robot.models.factory import model_config


def export_bundle(checkpoint_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False,
                  calibrations: dict[str, str | Path] | None = None) -> Path:
    """Write a self-contained bundle for the policy checkpoint at `checkpoint_dir`; returns `out_dir`.

    calibrations: camera name -> calibration YAML (pirl calibrate) the policy was trained with; copied into the
    bundle (checked and checksummed like the rest) for the deploy node to compare with the live camera."""
    src, out = Path(checkpoint_dir), Path(out_dir)
    try:
        policy = load_policy(src)
    except (CheckpointError, ValueError, KeyError, TypeError) as e:
        raise BundleError(f"cannot export {src}: {e}") from e
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise BundleError(f"{out} exists and is not empty (pass overwrite=True / --overwrite)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write_payload(policy, tmp)
        extra = _write_calibrations(policy.spec, calibrations or {}, tmp)
        _write_manifest(tmp, source=src, extra=extra)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)  # a crash mid-export leaves a hidden temp dir, never a half-written bundle
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def _write_payload(policy, d: Path) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in policy.model.state_dict().items()}
    save_file(state, str(d / WEIGHTS), metadata={"format": "pt", "model_kind": policy.model_kind})
    model = {"model_kind": policy.model_kind, "model_config": model_config(policy.model),
             "sampler": asdict(policy.sampler)}
    (d / MODEL_JSON).write_text(json.dumps(model, indent=2))
    (d / SPEC_JSON).write_text(json.dumps(policy.spec.to_dict(), indent=2))
    (d / STATS_JSON).write_text(json.dumps(policy.transforms.to_dict(), indent=2))


def _write_calibrations(spec, calibrations: dict[str, str | Path], d: Path) -> dict[str, str]:
    """Camera name -> bundle file name of each calibration (validated first: a bad file never gets in)."""
    from calibration.calib_file import CalibrationFileError, load_calibration

    cams = [c.name for c in spec.cameras]
    out = {}
    for name, path in calibrations.items():
        if name not in cams:
            raise BundleError(f"calibration for camera {name!r}, but the policy's cameras are {cams}")
        try:
            cal = load_calibration(path)
        except CalibrationFileError as e:
            raise BundleError(f"cannot bundle {path}: {e}") from e
        out[name] = CALIBRATION_FILE.format(name)
        cal.save(d / out[name])
    return out


def _write_manifest(d: Path, source: Path, extra: dict[str, str] | None = None) -> None:
    names = list(PAYLOAD) + sorted((extra or {}).values())
    files = {n: {"sha256": sha256_file(d / n), "bytes": (d / n).stat().st_size} for n in names}
    content = sha256_dir(d, names)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "bundle_id": content[:16],
        "content_sha256": content,
        "pirl_robot_version": pirl_robot.__version__,
        "torch_version": torch.__version__,
        "safetensors_version": safetensors.__version__,
        "created_unix": time.time(),
        "source_checkpoint": {"path": str(source.resolve()),
                              "sha256": sha256_dir(source, [POLICY_JSON, CKPT_WEIGHTS])},
        "files": files,
        "camera_calibrations": dict(extra or {}),
    }
    (d / MANIFEST).write_text(json.dumps(manifest, indent=2))
