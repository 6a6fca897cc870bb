"""Hydra composition of the configs in <repo>/configs, and their conversion into typed, validated objects."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


class ConfigError(ValueError):
    """A config is malformed: unknown key, wrong type, or a value out of range."""


def compose(name: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose configs/<name>.yaml with Hydra overrides (``algo=grpo rl.iterations=5``)."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.errors import HydraException

    if not CONFIG_DIR.is_dir():
        raise ConfigError(f"config directory {CONFIG_DIR} not found (pirl-robot must be installed from its "
                          "source tree: pip install -e .)")
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return hydra_compose(config_name=name, overrides=list(overrides or []))
    except HydraException as e:
        raise ConfigError(f"cannot compose config {name!r} with overrides {overrides}: {e}") from e


def run_verb(verb: str, config_name: str, doc: str, run: Callable[[DictConfig], Any], argv: list[str],
             errors: tuple[type[Exception], ...] = (ConfigError,),
             check: Callable[[DictConfig], None] | None = None) -> int:
    """The shared main of a Hydra-configured verb (`pirl train`, `pirl eval`): -h/--help prints the module doc,
    --cfg prints the composed config, a config error (or one of `errors`) exits 2 with the reason."""
    if argv and argv[0] in ("-h", "--help"):
        print(doc)
        return 0
    show = "--cfg" in argv
    argv = [a for a in argv if a != "--cfg"]
    try:
        cfg = compose(config_name, argv)
        if show:
            print(OmegaConf.to_yaml(cfg, resolve=True))
            return 0
        if check is not None:
            check(cfg)
        run(cfg)
    except (ConfigError, *errors) as e:
        print(f"pirl {verb}: {e}", file=sys.stderr)
        return 2
    return 0


def check_keys(data: Any, allowed, where: str, error: type[ValueError] | None = None) -> None:
    """Refuse a non-mapping or keys outside `allowed`, naming the section and the keys it knows.

    Every config reader (Hydra dataclasses, the safety YAML, the simulator task configs) uses this one check, so
    a typo reads the same everywhere: "<where>: unknown keys ['x']; known: [...]"."""
    error = error or ConfigError
    if not isinstance(data, Mapping):
        raise error(f"{where}: expected a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise error(f"{where}: unknown keys {unknown}; known: {sorted(allowed)}")


def to_dataclass(cls, data: Any, where: str = ""):
    """Build dataclass `cls` from a mapping, recursing into dataclass-typed fields; unknown keys are errors."""
    if isinstance(data, DictConfig):
        data = OmegaConf.to_container(data, resolve=True)
    if data is None:
        data = {}
    known = {f.name: f for f in fields(cls)}
    check_keys(data, known, where or cls.__name__)
    kwargs = {}
    for k, v in data.items():
        default = getattr(cls, k, None) if not callable(getattr(cls, k, None)) else None
        ftype = type(default) if is_dataclass(default) else None
        kwargs[k] = to_dataclass(ftype, v, f"{where}.{k}" if where else k) if ftype else v
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from e
