"""Simulator dispatch for the trainer: one place that maps an `env:` config to spec, vector env and demos.

The vector env comes from a registry keyed by (simulator, ``env.sim_backend``):

    maniskill, cpu         ChunkVectorEnv: CPU envs in worker processes (the default)
    maniskill, physx_cpu   BatchedManiSkillEnv on ManiSkill's CPU backend (num_envs=1; tests, debugging)
    maniskill, physx_cuda  BatchedManiSkillEnv: num_envs in one GPU simulation, tensors on the policy's device
    libero, cpu            LIBERO's ChunkVectorEnv

Adding a simulator or backend means registering a builder (``@vector_env("sim", "backend")``); the trainer never
imports a simulator directly.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from pirl_robot.spec import PolicySpec


SIMULATORS = ("maniskill", "libero")


def _sim(env_cfg: DictConfig) -> str:
    sim = env_cfg.get("simulator")
    if sim not in SIMULATORS:
        raise ValueError(f"unknown simulator {sim!r} in env config (known: {', '.join(SIMULATORS)})")
    return sim


def _maniskill_task(env_cfg: DictConfig, backend: str | None = None):
    """The task config; ManiSkill's sim_backend follows ``env.sim_backend`` unless `backend` is given."""
    from sim.maniskill.config import TaskConfig

    task = OmegaConf.to_container(env_cfg.maniskill, resolve=True)
    task["sim_backend"] = backend or str(env_cfg.get("sim_backend") or "cpu")
    return TaskConfig.from_dict(task)


def _libero_config(env_cfg: DictConfig):
    from sim.libero.config import LiberoConfig

    return LiberoConfig.from_dict(OmegaConf.to_container(env_cfg.libero, resolve=True))


def env_spec(env_cfg: DictConfig) -> PolicySpec:
    if _sim(env_cfg) == "libero":
        from sim.libero.env import task_spec as libero_spec

        return libero_spec(_libero_config(env_cfg))
    from sim.maniskill.env import task_spec

    return task_spec(_maniskill_task(env_cfg))


# (simulator, sim_backend) -> builder(env_cfg, num_envs, seed, device, **kwargs)
VECTOR_ENVS: dict[tuple[str, str], Callable[..., Any]] = {}


def vector_env(simulator: str, sim_backend: str):
    """Register a vector-env builder for env configs with this simulator and ``env.sim_backend``."""
    def register(builder: Callable[..., Any]) -> Callable[..., Any]:
        VECTOR_ENVS[(simulator, sim_backend)] = builder
        return builder
    return register


def sim_backend(env_cfg: DictConfig) -> str:
    """``env.sim_backend`` (default cpu), checked against the registered builders of the env's simulator."""
    sim, backend = _sim(env_cfg), str(env_cfg.get("sim_backend") or "cpu")
    if (sim, backend) not in VECTOR_ENVS:
        known = sorted(b for s, b in VECTOR_ENVS if s == sim)
        raise ValueError(f"env.sim_backend={backend!r} is not available for {sim} (known: {', '.join(known)})")
    return backend


def make_vector_env(env_cfg: DictConfig, seed: int = 0, num_envs: int | None = None, device: str = "cpu",
                    **kwargs):
    """The vector env of `env_cfg` (see the module docstring). device: the policy's, where a batched env keeps
    its tensors. kwargs go to the builder (LIBERO: cached_tasks, video_dir, video_episodes...)."""
    builder = VECTOR_ENVS[(_sim(env_cfg), sim_backend(env_cfg))]
    return builder(env_cfg, num_envs or env_cfg.num_envs, seed, device, **kwargs)


@vector_env("libero", "cpu")
def _libero_vector(env_cfg: DictConfig, num_envs: int, seed: int, device: str, **kwargs):
    from sim.libero.vector import ChunkVectorEnv as LiberoVectorEnv

    kwargs.setdefault("cached_tasks", env_cfg.get("cached_tasks", 1))
    return LiberoVectorEnv(_libero_config(env_cfg), num_envs=num_envs, seed=seed,
                           num_workers=env_cfg.get("num_workers"), **kwargs)


@vector_env("maniskill", "cpu")
def _maniskill_workers(env_cfg: DictConfig, num_envs: int, seed: int, device: str, **kwargs):
    from sim.maniskill.vector import ChunkVectorEnv

    return ChunkVectorEnv(_maniskill_task(env_cfg), num_envs=num_envs, seed=seed,
                          num_workers=env_cfg.get("num_workers"), **kwargs)


@vector_env("maniskill", "physx_cpu")
@vector_env("maniskill", "physx_cuda")
def _maniskill_batched(env_cfg: DictConfig, num_envs: int, seed: int, device: str, **kwargs):
    from sim.maniskill.batched import BatchedManiSkillEnv

    return BatchedManiSkillEnv(_maniskill_task(env_cfg), num_envs=num_envs, seed=seed, device=device, **kwargs)


def eval_tasks(env_cfg: DictConfig) -> list[tuple[str, DictConfig]]:
    """(label, single-task env config) for each task an evaluation reports separately: one per LIBERO task id,
    the env itself for ManiSkill."""
    if _sim(env_cfg) != "libero":
        return [(str(env_cfg.name), env_cfg)]
    out = []
    for t in _libero_config(env_cfg).task_ids:
        one = OmegaConf.create(OmegaConf.to_container(env_cfg, resolve=True))
        one.libero.task_ids = [t]
        out.append((f"{env_cfg.libero.suite}/{t}", one))
    return out


def max_episode_steps(env_cfg: DictConfig) -> int:
    task = _libero_config(env_cfg) if _sim(env_cfg) == "libero" else _maniskill_task(env_cfg)
    return int(task.max_episode_steps)


def max_chunks(env_cfg: DictConfig) -> int:
    """Chunk decisions that cover one whole episode (the time limit), so episode collection always ends."""
    task = _libero_config(env_cfg) if _sim(env_cfg) == "libero" else _maniskill_task(env_cfg)
    return math.ceil(task.max_episode_steps / task.exec_horizon) + 1


def ensure_demos(env_cfg: DictConfig, episodes: int, root: Path, seed: int, progress: bool = True) -> Path:
    """Record `episodes` successful expert demos as a LeRobotDataset at `root`, unless already there.
    LIBERO with ``env.dataset.root`` set: that user-provided dataset, as is (nothing is recorded)."""
    if _sim(env_cfg) == "libero":
        return _libero_demos(env_cfg, episodes, root, seed, progress)
    from sim.maniskill.demos import SIDECAR, record_demos

    sidecar = root / SIDECAR
    if sidecar.exists() and json.loads(sidecar.read_text()).get("kept", 0) >= episodes:
        return root
    if root.exists():  # an interrupted recording: demos are regenerable, so start that directory afresh
        print(f"[demos] {root} is incomplete (interrupted recording?); recording it again")
        shutil.rmtree(root)
    record_demos(_maniskill_task(env_cfg, backend="cpu"), episodes, root, seed=seed,  # experts: one CPU env
                 log=print if progress else (lambda *a: None))
    return root


def load_demos(root: Path, spec: PolicySpec, env_cfg: DictConfig | None = None):
    """SFT arrays of the demos at `root`. For a user-provided LIBERO dataset (env.dataset.root) its cameras,
    names and tasks are adapted to the spec as env.dataset says (sim/libero/dataset.py)."""
    dataset = _user_dataset(env_cfg)
    if dataset is not None and Path(dataset["root"]) == Path(root):
        from sim.libero.dataset import load_user_dataset
        from sim.libero.suites import task_info

        cfg = _libero_config(env_cfg)
        return load_user_dataset(root, spec, [task_info(cfg.suite, t).instruction for t in cfg.task_ids],
                                 cameras=dataset.get("cameras") or {}, match_names=dataset.get("match_names", True),
                                 filter_tasks=dataset.get("filter_tasks", True))
    from pirl_robot.data.demos import load_demos as load

    return load(root, chunk_size=spec.chunk_size, spec=spec)


def _user_dataset(env_cfg: DictConfig | None) -> dict | None:
    if env_cfg is None or _sim(env_cfg) != "libero" or env_cfg.get("dataset") is None:
        return None
    dataset = OmegaConf.to_container(env_cfg.dataset, resolve=True)
    return dataset if dataset.get("root") else None


def _libero_demos(env_cfg: DictConfig, episodes: int, root: Path, seed: int, progress: bool) -> Path:
    from sim.libero.demos import SIDECAR, record_demos

    dataset = _user_dataset(env_cfg)
    if dataset is not None:
        path = Path(dataset["root"]).expanduser()
        if not (path / "meta" / "info.json").is_file():
            raise FileNotFoundError(f"env.dataset.root={path} is not a LeRobotDataset v3 (no meta/info.json)")
        return path
    cfg = _libero_config(env_cfg)
    data_keys = ("suite", "task_ids", "obs_mode", "cameras", "image_size", "object_slots", "settle_steps")
    wanted = {k: v for k, v in cfg.to_dict().items() if k in data_keys}
    sidecar = root / SIDECAR
    if sidecar.exists():
        side = json.loads(sidecar.read_text())
        recorded = {k: v for k, v in side.get("task_config", {}).items() if k in data_keys}
        if recorded != wanted:  # demos of other tasks / observations: keep them, record this setup next to them
            digest = hashlib.sha1(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:8]
            print(f"[demos] {root} holds demos of another LIBERO setup ({recorded}); using {root}_{digest}")
            root = root.with_name(f"{root.name}_{digest}")
            sidecar = root / SIDECAR
    if sidecar.exists() and json.loads(sidecar.read_text()).get("kept", 0) >= episodes:
        return root
    if root.exists():
        if (root / "meta" / "info.json").exists() and not sidecar.exists():
            raise FileExistsError(f"{root} holds a LeRobotDataset that pirl did not record; not overwriting it "
                                  "(to train on it, set env.dataset.root)")
        print(f"[demos] {root} is incomplete (interrupted recording?); recording it again")
        shutil.rmtree(root)
    record_demos(cfg, episodes, root, seed=seed, log=print if progress else (lambda *a: None))
    return root
