"""N ManiSkill CPU envs stepped one action chunk at a time, spread over worker processes.

ManiSkill refuses num_envs > 1 on the CPU backend, so parallelism comes from processes: ``num_workers`` of them
(default: one per env), each holding a block of the envs and stepping them one after the other; each env runs a
whole chunk per call, stops early when its episode ends, and then resets itself for the next episode:

    with ChunkVectorEnv(TaskConfig(task="PushCube-v1"), num_envs=4, seed=0) as venv:
        obs = venv.reset(seeds=[7, 7, 7, 7])         # identical initial states (a GRPO group)
        res = venv.step_chunk(actions)               # actions (N, H, 8): absolute joint targets + gripper
        res.reward, res.done, res.final_obs, res.episodes

The worker pool, the seeding rules and this API live in ``sim.vector_pool``; this module says which env a worker
builds.
"""

from __future__ import annotations

from sim.maniskill.config import TaskConfig
from sim.vector_pool import ChunkRunner, ChunkVectorPool
from sim.vector_types import ChunkResult, EpisodeStats, Obs, WorkerError, stack_obs

__all__ = ["ChunkResult", "ChunkVectorEnv", "EnvRunner", "EpisodeStats", "Obs", "WorkerError", "stack_obs"]


class EnvRunner(ChunkRunner):
    """One ManiSkill env plus the chunk loop, auto-reset and seed stream (in a worker, or in-process)."""

    def __init__(self, cfg: TaskConfig, index: int, base_seed: int):
        from sim.maniskill.env import ManiSkillEnv

        self.env = ManiSkillEnv(cfg)
        super().__init__(index, base_seed)

    @staticmethod
    def prepare_worker() -> None:
        import torch

        torch.set_num_threads(1)  # workers share the machine's cores; torch's default would oversubscribe them

    def _reset_env(self, seed: int) -> Obs:
        obs, _ = self.env.reset(seed=seed)
        return obs

    def close(self) -> None:
        self.env.close()


class ChunkVectorEnv(ChunkVectorPool):
    """N CPU ManiSkill envs with chunked stepping. See the module docstring for the protocol."""

    def __init__(self, cfg: TaskConfig, num_envs: int, seed: int = 0, num_workers: int | None = None,
                 in_process: bool | None = None, start_timeout_s: float = 300.0):
        """num_workers: processes to spread the envs over (default one per env; at most num_envs).
        in_process: step all envs in this process, no workers (default: only when num_envs == 1)."""
        super().__init__(num_envs, seed, num_workers, in_process)
        if cfg.sim_backend != "cpu":
            raise ValueError("ChunkVectorEnv runs CPU envs (sim_backend='cpu'); there is no GPU variant yet")
        from sim.maniskill.env import task_spec

        self.cfg, self.spec = cfg, task_spec(cfg)
        self._start(EnvRunner, dict(cfg=cfg, base_seed=seed), start_timeout_s, worker_name="maniskill-worker")
