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
from pirl_robot.bundle.format import (FORMAT, FORMAT_VERSION, MANIFEST, MODEL_JSON, PAYLOAD, SPEC_JSON, STATS_JSON,
                                      WEIGHTS, BundleError, sha256_dir, sha256_file)
from pirl_robot.checkpoint import POLICY_JSON, CheckpointError, load_policy
from pirl_robot.checkpoint import WEIGHTS as CKPT_WEIGHTS
from pirl_robot.models.factory import model_config


def export_bundle(checkpoint_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write a self-contained bundle for the policy checkpoint at `checkpoint_dir`; returns `out_dir`."""
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
        _write_manifest(tmp, source=src)
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


def _write_manifest(d: Path, source: Path) -> None:
    files = {n: {"sha256": sha256_file(d / n), "bytes": (d / n).stat().st_size} for n in PAYLOAD}
    content = sha256_dir(d, list(PAYLOAD))
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
    }
    (d / MANIFEST).write_text(json.dumps(manifest, indent=2))
