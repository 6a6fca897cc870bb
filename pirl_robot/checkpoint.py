"""Policy checkpoints on disk: a directory with ``policy.json`` (spec, stats, model kind and config, sampler)
and ``model.safetensors`` (weights). No pickle is involved in loading a policy.

Loading is strict: a checkpoint whose tensor names or shapes differ from the model its config builds is refused
with an error naming the first mismatches (lerobot only warns and returns a partly random model).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pirl_robot.flow.sampler import ChainConfig
from pirl_robot.models.base import FlowPolicyModel
from pirl_robot.models.factory import build_model, model_config
from pirl_robot.spec import PolicySpec
from pirl_robot.transforms import PolicyTransforms

POLICY_JSON = "policy.json"
WEIGHTS = "model.safetensors"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not match the model it claims to be."""


def save_policy(policy, path: str | Path, state_dict: dict | None = None) -> Path:
    """state_dict: the model's full weights where its own state_dict holds shards (FSDP2 under torchrun)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    meta = {
        "format_version": FORMAT_VERSION,
        "model_kind": policy.model_kind,
        "model_config": model_config(policy.model),
        "spec": policy.spec.to_dict(),
        "stats": policy.transforms.to_dict(),
        "sampler": asdict(policy.sampler),
    }
    state = {k: v.detach().contiguous().cpu() for k, v in (state_dict or policy.model.state_dict()).items()}
    tmp = path / (WEIGHTS + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(path / WEIGHTS)  # atomic: an interrupted save never leaves a half-written weights file
    (path / (POLICY_JSON + ".tmp")).write_text(json.dumps(meta, indent=2))
    (path / (POLICY_JSON + ".tmp")).replace(path / POLICY_JSON)
    return path


def read_policy_meta(path: str | Path) -> dict:
    f = Path(path) / POLICY_JSON
    if not f.exists():
        raise CheckpointError(f"{path} is not a policy checkpoint: {POLICY_JSON} not found")
    try:
        meta = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f} is not valid JSON ({e})") from e
    for key in ("model_kind", "model_config", "spec", "stats"):
        if key not in meta:
            raise CheckpointError(f"{f} lacks the field {key!r}")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{f} has format_version {meta['format_version']}, this pirl-robot reads up to "
                              f"{FORMAT_VERSION}: upgrade pirl-robot")
    return meta


def load_state_dict_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into `model`, refusing any missing, unexpected or mis-shaped tensor."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        def first(xs):
            return ", ".join(xs[:5]) + (f" (+{len(xs) - 5} more)" if len(xs) > 5 else "")
        lines = [f"checkpoint {source} does not match the model:"]
        if missing:
            lines.append(f"  missing {len(missing)}: {first(missing)}")
        if unexpected:
            lines.append(f"  unexpected {len(unexpected)}: {first(unexpected)}")
        if shapes:
            lines.append(f"  shape mismatch {len(shapes)}: {first(shapes)}")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state, strict=True)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise CheckpointError(f"weights file {path} not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"weights file {path} is corrupt or not safetensors ({e})") from e


def load_policy(path: str | Path, device: str = "cpu"):
    from pirl_robot.policy import Policy

    path = Path(path)
    meta = read_policy_meta(path)
    spec = PolicySpec.from_dict(meta["spec"])
    model: FlowPolicyModel = build_model(meta["model_kind"], meta["model_config"], spec)
    load_state_dict_strict(model, load_weights(path / WEIGHTS), str(path / WEIGHTS))
    try:
        sampler = ChainConfig.for_inference(meta.get("sampler", {}))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path / POLICY_JSON}: bad sampler settings: {e}") from e
    return Policy(spec=spec, model=model.to(device).eval(), transforms=PolicyTransforms.from_dict(spec, meta["stats"]),
                  sampler=sampler, model_kind=meta["model_kind"])
