"""Build a policy model from its kind and config dict (the form stored in checkpoints and bundles)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Callable

from pirl_robot.models.base import FlowPolicyModel
from pirl_robot.spec import PolicySpec

_BUILDERS: dict[str, Callable[[dict[str, Any], PolicySpec], FlowPolicyModel]] = {}


def register(kind: str):
    def deco(fn):
        _BUILDERS[kind] = fn
        return fn
    return deco


def build_model(kind: str, config: dict[str, Any], spec: PolicySpec) -> FlowPolicyModel:
    if kind not in _BUILDERS:
        _import_builtin(kind)
    if kind not in _BUILDERS:
        raise ValueError(f"unknown policy model kind {kind!r}; known: {sorted(_BUILDERS)}")
    return _BUILDERS[kind](dict(config), spec)


def _import_builtin(kind: str) -> None:
    # Heavy backends (lerobot's pi0) register themselves on import; import them only when asked for.
    if kind in ("pi0", "pi05"):
        import pirl_robot.models.pi0  # noqa: F401


@register("flow_mlp")
def _flow_mlp(config: dict[str, Any], spec: PolicySpec) -> FlowPolicyModel:
    from pirl_robot.models.flow_mlp import FlowMLP, FlowMLPConfig

    cams = tuple(c.name for c in spec.cameras)
    image_size = spec.cameras[0].height if spec.cameras else 64
    cfg = FlowMLPConfig(state_dim=spec.state_dim, action_dim=spec.action_dim, chunk_size=spec.chunk_size,
                        cameras=cams, image_size=image_size, **config)
    return FlowMLP(cfg)


def model_config(model: FlowPolicyModel) -> dict[str, Any]:
    """The config dict that rebuilds `model` with build_model (derived fields from the spec left out)."""
    cfg = asdict(model.cfg)
    for derived in ("state_dim", "action_dim", "chunk_size", "cameras", "image_size"):
        cfg.pop(derived, None)
    return cfg
