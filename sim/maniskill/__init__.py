"""ManiSkill3 side of pirl-robot: task config, env adapter + PolicySpec, chunked vector env.

Experts (``sim.maniskill.experts``) and demo recording (``sim.maniskill.demos``) are imported explicitly.
"""

from sim.maniskill.config import TaskConfig
from sim.maniskill.env import ManiSkillEnv, state_names, task_spec
from sim.maniskill.vector import ChunkResult, ChunkVectorEnv, EpisodeStats, WorkerError, stack_obs

__all__ = ["ChunkResult", "ChunkVectorEnv", "EpisodeStats", "ManiSkillEnv", "TaskConfig", "WorkerError",
           "stack_obs", "state_names", "task_spec"]
