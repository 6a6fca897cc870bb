"""Simulator dispatch for the trainer: one place that maps an `env:` config to spec, vector env and demos.

Adding a simulator (LIBERO, ...) means adding a branch here; the trainer never imports a simulator directly.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pirl_robot.spec import PolicySpec


def _sim(env_cfg: DictConfig) -> str:
    sim = env_cfg.get("simulator")
    if sim not in ("maniskill",):
        raise ValueError(f"unknown simulator {sim!r} in env config (known: maniskill)")
    return sim


def _maniskill_task(env_cfg: DictConfig):
    from sim.maniskill.config import TaskConfig

    return TaskConfig.from_dict(OmegaConf.to_container(env_cfg.maniskill, resolve=True))


def env_spec(env_cfg: DictConfig) -> PolicySpec:
    _sim(env_cfg)
    from sim.maniskill.env import task_spec

    return task_spec(_maniskill_task(env_cfg))


def make_vector_env(env_cfg: DictConfig, seed: int = 0, num_envs: int | None = None):
    _sim(env_cfg)
    from sim.maniskill.vector import ChunkVectorEnv

    return ChunkVectorEnv(_maniskill_task(env_cfg), num_envs=num_envs or env_cfg.num_envs, seed=seed,
                          num_workers=env_cfg.get("num_workers"))


def max_chunks(env_cfg: DictConfig) -> int:
    """Chunk decisions that cover one whole episode (the time limit), so episode collection always ends."""
    task = _maniskill_task(env_cfg)
    return math.ceil(task.max_episode_steps / task.exec_horizon) + 1


def ensure_demos(env_cfg: DictConfig, episodes: int, root: Path, seed: int, progress: bool = True) -> Path:
    """Record `episodes` successful expert demos as a LeRobotDataset at `root`, unless already there."""
    _sim(env_cfg)
    from sim.maniskill.demos import SIDECAR, record_demos

    sidecar = root / SIDECAR
    if sidecar.exists() and json.loads(sidecar.read_text()).get("kept", 0) >= episodes:
        return root
    if root.exists():  # an interrupted recording: demos are regenerable, so start that directory afresh
        print(f"[demos] {root} is incomplete (interrupted recording?); recording it again")
        shutil.rmtree(root)
    record_demos(_maniskill_task(env_cfg), episodes, root, seed=seed, log=print if progress else (lambda *a: None))
    return root


def load_demos(root: Path, spec: PolicySpec):
    from pirl_robot.data.demos import load_demos as load

    return load(root, chunk_size=spec.chunk_size, spec=spec)
