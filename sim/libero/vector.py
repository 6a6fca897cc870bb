"""N LIBERO envs stepped one action chunk at a time, spread over worker processes.

The same protocol as the ManiSkill ``ChunkVectorEnv`` (both are ``sim.vector_pool.ChunkVectorPool``s, with the
same ``ChunkResult`` / ``EpisodeStats`` types), so the trainer and ``pirl eval`` drive either simulator unchanged:

    with ChunkVectorEnv(LiberoConfig(suite="libero_object", task_ids=(0,)), num_envs=4, seed=0) as venv:
        obs = venv.reset(seeds=[7, 7, 7, 7])         # identical initial scenes (a GRPO group)
        res = venv.step_chunk(actions)               # actions (N, H, 7): OSC_POSE deltas + gripper
        res.reward, res.done, res.final_obs, res.episodes

Seeds select (task, standard init state) as documented in ``sim.libero.config``. After an episode ends, the
env's next seed is the one set with ``set_next_seeds`` (used once), else the next draw of its own seed stream.

A worker keeps one MuJoCo env per task it has run, up to ``cached_tasks`` (an env holds a few hundred MB and
takes seconds to build); a seed for another task then replaces the least recently used one.

Videos: with ``video_dir`` set, each env renders the agentview camera at ``video_size`` px for its first
``video_episodes`` episodes and writes each as an MP4 named after task, init state, seed and outcome.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from sim.libero.config import LiberoConfig
from sim.vector_pool import ChunkRunner, ChunkVectorPool
from sim.vector_types import ChunkResult, EpisodeStats, Obs, WorkerError

__all__ = ["ChunkResult", "ChunkVectorEnv", "EpisodeStats", "LiberoRunner", "WorkerError"]


class LiberoRunner(ChunkRunner):
    """One env slot (a MuJoCo env per task it has run, LRU-cached) plus the chunk loop, auto-reset, seed stream
    and episode videos (in a worker, or in-process)."""

    def __init__(self, cfg: LiberoConfig, index: int, base_seed: int, cached_tasks: int = 1,
                 video_dir: str | None = None, video_episodes: int = 0, video_size: int = 256):
        super().__init__(index, base_seed)
        self.cfg, self.cached_tasks = cfg, max(1, cached_tasks)
        self.video_dir, self.video_left, self.video_size = video_dir, video_episodes if video_dir else 0, video_size
        self.envs: OrderedDict[int, Any] = OrderedDict()
        self.frames: list[np.ndarray] | None = None
        self._env_for(cfg.task_ids[0])  # build now: a broken setup fails at construction, not mid-rollout

    def _env_for(self, task_id: int):
        from sim.libero.env import LiberoEnv

        if task_id in self.envs:
            self.envs.move_to_end(task_id)
        else:
            while len(self.envs) >= self.cached_tasks:
                self.envs.popitem(last=False)[1].close()
            self.envs[task_id] = LiberoEnv(self.cfg, task_id, video_size=self.video_size if self.video_left else 0)
        return self.envs[task_id]

    def _reset_env(self, seed: int) -> Obs:
        self.env = self._env_for(self.cfg.task_of(seed))
        obs, self.info = self.env.reset(seed=seed)
        self.frames = [self.env.render("agentview")] if self.video_left > 0 else None
        return obs

    def _after_step(self) -> None:
        if self.frames is not None:
            self.frames.append(self.env.render("agentview"))

    def _episode_ended(self, success: bool) -> None:
        if self.frames is None:
            return
        from pirl_robot.utils.video import write_mp4

        name = (f"{self.cfg.suite}_task{self.env.task.task_id}_init{self.env.init_index}_seed{self.seed}_"
                f"{'success' if success else 'fail'}.mp4")
        write_mp4(Path(self.video_dir) / name, self.frames, fps=20)
        self.frames, self.video_left = None, self.video_left - 1

    def close(self) -> None:
        for env in self.envs.values():
            env.close()
        self.envs.clear()


class ChunkVectorEnv(ChunkVectorPool):
    """N LIBERO envs with chunked stepping; see the module docstring."""

    def __init__(self, cfg: LiberoConfig, num_envs: int, seed: int = 0, num_workers: int | None = None,
                 in_process: bool | None = None, cached_tasks: int = 1, video_dir: str | Path | None = None,
                 video_episodes: int = 0, video_size: int = 256, start_timeout_s: float = 600.0):
        """num_workers: processes to spread the envs over (default one per env; at most num_envs); a worker steps
        its envs one after the other, and shares its imports (~1 GB with robosuite) between them.
        in_process: step all envs in this process, no workers (default: only when num_envs == 1)."""
        super().__init__(num_envs, seed, num_workers, in_process)
        from sim.libero.env import task_spec

        self.cfg, self.spec = cfg, task_spec(cfg)
        if video_dir is not None:
            Path(video_dir).mkdir(parents=True, exist_ok=True)
        kwargs = dict(cfg=cfg, base_seed=seed, cached_tasks=cached_tasks,
                      video_dir=None if video_dir is None else str(video_dir), video_episodes=video_episodes,
                      video_size=video_size)
        self._start(LiberoRunner, kwargs, start_timeout_s, worker_name="libero-worker")
