"""Strict loading of lerobot pi0 / pi0.5 directories (config.json + model.safetensors) and of their statistics.

lerobot's from_pretrained only prints missing or unexpected keys and returns a partly random model. Here the same
key repairs lerobot applies (its own `_fix_pytorch_state_dict_keys`, for openpi-converted files, then the "model."
prefix) are followed by pirl_robot.checkpoint.load_state_dict_strict, which refuses any missing, unexpected or
mis-shaped tensor and names the first ones.
"""

from __future__ import annotations

import json
import logging
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping

import torch

from pirl_robot.checkpoint import CheckpointError, load_state_dict_strict, load_weights
from pirl_robot.models.pi0 import KINDS, PiVLA, PiVLAConfig
from pirl_robot.spec import PolicySpec
from pirl_robot.transforms import Stats

log = logging.getLogger(__name__)

# lerobot config.json field -> PiVLAConfig field (the ones that decide tensor shapes or tokenisation)
_FROM_LEROBOT = {"paligemma_variant": "paligemma_variant", "action_expert_variant": "action_expert_variant",
                 "max_state_dim": "max_state_dim", "max_action_dim": "max_action_dim", "dtype": "dtype",
                 "tokenizer_max_length": "tokenizer_max_length"}
# Output heads pi0 / pi0.5 never run (they generate no text). openpi conversions may omit them; a file without them
# loads with them left at their initial values, and says so. Any other absent tensor is refused.
UNUSED_HEADS = ("model.paligemma_with_expert.paligemma.lm_head.weight",
                "model.paligemma_with_expert.gemma_expert.lm_head.weight")
SHAPE_FIELDS = ("paligemma_variant", "action_expert_variant", "max_state_dim", "max_action_dim", "image_resolution")


def read_lerobot_config(path: str | Path) -> dict[str, Any]:
    f = Path(path) / "config.json"
    if not f.exists():
        raise CheckpointError(f"{path} is not a lerobot policy directory: config.json not found")
    try:
        raw = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f} is not valid JSON ({e})") from e
    if raw.get("type") not in KINDS:
        raise CheckpointError(f"{f}: policy type {raw.get('type')!r} is not one of {KINDS}")
    return raw


def load_lerobot_pretrained(path: str | Path, spec: PolicySpec, **options: Any) -> PiVLA:
    """Our pi0 / pi0.5 model with a lerobot directory's weights, loaded strictly.

    Shapes come from the directory's config.json; `options` set our own fields (tokenizer, heads, RL switches).
    The noise net and value head are not part of a lerobot checkpoint and start fresh. The model is built on the
    default device: `with torch.device("cuda"): load_lerobot_pretrained(...)` builds a 4B model on the GPU directly.
    """
    path = Path(path)
    raw = read_lerobot_config(path)
    cfg: dict[str, Any] = {ours: raw[theirs] for theirs, ours in _FROM_LEROBOT.items() if theirs in raw}
    if "image_resolution" in raw:
        cfg["image_resolution"] = int(raw["image_resolution"][0])
    known = {f.name for f in fields(PiVLAConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown options {unknown}; known: {sorted(known)}")
    clash = sorted(k for k in SHAPE_FIELDS if k in options and k in cfg and options[k] != cfg[k])
    if clash:
        raise ValueError(f"options {clash} contradict {path / 'config.json'}, which fixes the weights' shapes")
    model = PiVLA(PiVLAConfig(kind=raw["type"], **{**cfg, **options}), spec)
    weights = load_weights(path / "model.safetensors")
    fixed = model.policy._fix_pytorch_state_dict_keys(weights, model.policy.config)  # lerobot's own repairs
    fixed = {k if k.startswith("model.") else f"model.{k}": v for k, v in fixed.items()}
    expected = model.policy.state_dict()
    absent = [k for k in UNUSED_HEADS if k in expected and k not in fixed]
    if absent:
        log.warning("%s lacks %s (never used by %s); kept at initial values", path, ", ".join(absent), raw["type"])
        fixed.update({k: expected[k] for k in absent})
    load_state_dict_strict(model.policy, fixed, str(path / "model.safetensors"))
    return model


def stats_from_lerobot(mode: str, stats: Mapping[str, Any]) -> Stats | None:
    """lerobot's per-feature normalisation as our Stats: every lerobot mode but IDENTITY is affine.

    MEAN_STD: (x - mean) / std; QUANTILES: 2 (x - q01) / (q99 - q01) - 1 = (x - mid) / half-range (likewise
    QUANTILE10 with q10 / q90, MIN_MAX with min / max).
    """
    mode = str(getattr(mode, "value", mode)).upper()

    def get(key: str) -> torch.Tensor:
        if key not in stats:
            raise ValueError(f"normalisation mode {mode} needs the statistic {key!r}; have {sorted(stats)}")
        return torch.as_tensor(stats[key], dtype=torch.float32).flatten()

    if mode == "IDENTITY":
        return None
    if mode == "MEAN_STD":
        return Stats(get("mean"), get("std"))
    bounds = {"QUANTILES": ("q01", "q99"), "QUANTILE10": ("q10", "q90"), "MIN_MAX": ("min", "max")}
    if mode not in bounds:
        raise ValueError(f"unsupported lerobot normalisation mode {mode}")
    lo, hi = get(bounds[mode][0]), get(bounds[mode][1])
    return Stats((lo + hi) / 2, (hi - lo) / 2)
