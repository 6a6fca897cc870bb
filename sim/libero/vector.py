"""N LIBERO envs stepped one action chunk at a time, spread over worker processes.

The same protocol as the ManiSkill ``ChunkVectorEnv`` (and the same ``ChunkResult`` / ``EpisodeStats`` types),
so the trainer and ``pirl eval`` drive either simulator unchanged:

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

import multiprocessing as mp
import os
import signal
import traceback
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sim.libero.config import LiberoConfig
from sim.maniskill.vector import ChunkResult, EpisodeStats, WorkerError, stack_obs

__all__ = ["ChunkResult", "ChunkVectorEnv", "EpisodeStats", "LiberoRunner", "WorkerError"]

Obs = dict[str, Any]


class LiberoRunner:
    """The envs of one worker plus the chunk loop, auto-reset and seed stream (in a worker, or in-process)."""

    def __init__(self, cfg: LiberoConfig, index: int, base_seed: int, cached_tasks: int = 1,
                 video_dir: str | None = None, video_episodes: int = 0, video_size: int = 256):
        self.cfg, self.index, self.cached_tasks = cfg, index, max(1, cached_tasks)
        self.video_dir, self.video_left, self.video_size = video_dir, video_episodes if video_dir else 0, video_size
        self.envs: OrderedDict[int, Any] = OrderedDict()
        self.seed_stream = np.random.default_rng([base_seed, index])
        self.next_seed: int | None = None
        self.obs: Obs | None = None
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

    def reset(self, seed: int | None) -> Obs:
        self.seed = int(seed) if seed is not None else int(self.seed_stream.integers(2**31 - 1))
        self.env = self._env_for(self.cfg.task_of(self.seed))
        self.obs, self.info = self.env.reset(seed=self.seed)
        self.episode_return, self.episode_length = 0.0, 0
        self.frames = [self.env.render("agentview")] if self.video_left > 0 else None
        return self.obs

    def set_next_seed(self, seed: int | None) -> None:
        self.next_seed = seed

    def step_chunk(self, actions: np.ndarray, active: bool = True) -> dict[str, Any]:
        if self.obs is None:
            raise RuntimeError("step_chunk before reset")
        rewards = np.zeros(len(actions), dtype=np.float32)
        out = dict(terminated=False, truncated=False, success=False, steps=0, episode=None)
        if active:
            for h, action in enumerate(actions):
                self.obs, rewards[h], term, trunc, info = self.env.step(action)
                if self.frames is not None:
                    self.frames.append(self.env.render("agentview"))
                out.update(terminated=term, truncated=trunc, success=bool(info["success"]), steps=h + 1)
                if term or trunc:
                    break
            self.episode_return += float(rewards.sum())
            self.episode_length += out["steps"]
        out.update(step_rewards=rewards, final_obs=self.obs)
        if out["terminated"] or out["truncated"]:
            out["episode"] = EpisodeStats(self.index, self.seed, self.episode_return, self.episode_length,
                                          out["success"])
            self._write_video(out["success"])
            self.reset(self.next_seed)
            self.next_seed = None
        out["obs"] = self.obs
        return out

    def _write_video(self, success: bool) -> None:
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


class _EnvGroup:
    """The envs of one worker process (or of the parent, in-process); calls fan out over them in order."""

    def __init__(self, indices: Sequence[int], runner_kwargs: dict[str, Any]):
        self.runners: list[LiberoRunner] = []
        try:
            for i in indices:
                self.runners.append(LiberoRunner(index=i, **runner_kwargs))
        except BaseException:
            self.close()
            raise

    def call(self, method: str, args: list[tuple]) -> list[Any]:
        return [getattr(r, method)(*a) for r, a in zip(self.runners, args)]

    def close(self) -> None:
        for r in self.runners:
            r.close()


def _worker(conn, indices: list[int], runner_kwargs: dict[str, Any]) -> None:
    """Worker process loop: serve ("call", method, per-env args) until "close" or until the parent goes away."""
    _die_with_parent()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    group = None
    try:
        group = _EnvGroup(indices, runner_kwargs)
        conn.send(("ok", None))
        while True:
            try:
                cmd, *args = conn.recv()
            except (EOFError, KeyboardInterrupt):  # parent closed the pipe or died
                break
            if cmd == "close":
                conn.send(("ok", None))
                break
            try:
                conn.send(("ok", group.call(*args)))
            except Exception:
                conn.send(("error", traceback.format_exc()))
    except Exception:
        try:
            conn.send(("error", traceback.format_exc()))
        except (BrokenPipeError, OSError):
            pass
    finally:
        if group is not None:
            group.close()
        conn.close()


def _die_with_parent() -> None:
    """SIGKILL this worker when its parent thread exits (Linux), so a crashed trainer leaves no orphan sims."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the pipe EOF in the worker loop still ends it
        pass


class ChunkVectorEnv:
    """N LIBERO envs with chunked stepping; see the module docstring."""

    def __init__(self, cfg: LiberoConfig, num_envs: int, seed: int = 0, num_workers: int | None = None,
                 in_process: bool | None = None, cached_tasks: int = 1, video_dir: str | Path | None = None,
                 video_episodes: int = 0, video_size: int = 256, start_timeout_s: float = 600.0):
        """num_workers: processes to spread the envs over (default one per env; at most num_envs); a worker steps
        its envs one after the other, and shares its imports (~1 GB with robosuite) between them.
        in_process: step all envs in this process, no workers (default: only when num_envs == 1)."""
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if num_workers is not None and num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        from sim.libero.env import task_spec

        self.cfg, self.num_envs, self.seed = cfg, num_envs, seed
        self.spec = task_spec(cfg)
        self.in_process = num_envs == 1 if in_process is None else in_process
        self.num_workers = 0 if self.in_process else min(num_workers or num_envs, num_envs)
        if video_dir is not None:
            Path(video_dir).mkdir(parents=True, exist_ok=True)
        kwargs = dict(cfg=cfg, base_seed=seed, cached_tasks=cached_tasks,
                      video_dir=None if video_dir is None else str(video_dir), video_episodes=video_episodes,
                      video_size=video_size)
        self._closed = False
        self._local: _EnvGroup | None = None
        self._blocks: list[list[int]] = []  # env indices of each worker, contiguous and in order
        self._procs: list[Any] = []
        self._conns: list[Any] = []
        if self.in_process:
            self._local = _EnvGroup(range(num_envs), kwargs)
            return
        self._blocks = [b.tolist() for b in np.array_split(np.arange(num_envs), self.num_workers)]
        ctx = mp.get_context("spawn")  # fresh interpreters: no forked MuJoCo/GL state, no inherited pipe ends
        try:
            for w, block in enumerate(self._blocks):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_worker, args=(child, block, kwargs), daemon=True,
                                   name=f"libero-worker-{w}")
                proc.start()
                child.close()
                self._procs.append(proc)
                self._conns.append(parent)
            self._gather(timeout_s=start_timeout_s)
        except WorkerError as e:
            self.close()
            raise WorkerError(f"{e}\n(if the worker's stderr mentions the 'bootstrapping phase': workers are "
                              "spawned, so a script that builds a ChunkVectorEnv needs an "
                              "`if __name__ == '__main__':` guard)") from None
        except BaseException:
            self.close()
            raise

    # --- public API (the ManiSkill ChunkVectorEnv's) -----------------------------------------------------------
    def reset(self, seeds: Sequence[int | None] | None = None) -> Obs:
        """Start a new episode in every env; seeds[i] (None: the env's seed stream). Returns the batched obs."""
        seeds = self._per_env(seeds, "seeds")
        self._call_each("set_next_seed", [(None,)] * self.num_envs)
        return stack_obs(self._call_each("reset", [(s,) for s in seeds]))

    def set_next_seeds(self, seeds: Sequence[int | None]) -> None:
        """Seeds for each env's next auto-reset (used once; None keeps the env's seed stream)."""
        self._call_each("set_next_seed", [(s,) for s in self._per_env(seeds, "seeds")])

    def step_chunk(self, actions: np.ndarray, active: Sequence[bool] | np.ndarray | None = None) -> ChunkResult:
        """Execute actions (N, H, 7) chunk-wise; envs with active[i] False do not step (obs unchanged)."""
        actions = np.asarray(actions, dtype=np.float32)
        a = self.spec.action_dim
        if actions.ndim != 3 or actions.shape[0] != self.num_envs or actions.shape[2] != a or actions.shape[1] < 1:
            raise ValueError(f"actions must have shape (num_envs={self.num_envs}, H, {a}), got {actions.shape}")
        if not np.isfinite(actions).all():
            bad = sorted(set(np.nonzero(~np.isfinite(actions))[0].tolist()))
            raise ValueError(f"non-finite actions for envs {bad}")
        active = np.ones(self.num_envs, bool) if active is None else np.asarray(active, dtype=bool)
        if active.shape != (self.num_envs,):
            raise ValueError(f"active must have shape ({self.num_envs},), got {active.shape}")
        outs = self._call_each("step_chunk", [(actions[i], bool(active[i])) for i in range(self.num_envs)])
        return ChunkResult(
            obs=stack_obs([o["obs"] for o in outs]),
            final_obs=stack_obs([o["final_obs"] for o in outs]),
            reward=np.array([o["step_rewards"].sum() for o in outs], dtype=np.float32),
            step_rewards=np.stack([o["step_rewards"] for o in outs]),
            terminated=np.array([o["terminated"] for o in outs], dtype=bool),
            truncated=np.array([o["truncated"] for o in outs], dtype=bool),
            success=np.array([o["success"] for o in outs], dtype=bool),
            steps=np.array([o["steps"] for o in outs], dtype=np.int32),
            episodes=[o["episode"] for o in outs if o["episode"] is not None],
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._local is not None:
            self._local.close()
        for conn, proc in zip(self._conns, self._procs):
            try:
                if proc.is_alive():
                    conn.send(("close",))
            except (BrokenPipeError, OSError):
                pass
        for conn, proc in zip(self._conns, self._procs):
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
            conn.close()

    def __enter__(self) -> "ChunkVectorEnv":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # --- plumbing ---------------------------------------------------------------------------------------------
    def _per_env(self, values: Sequence[Any] | None, what: str) -> list[Any]:
        if values is None:
            return [None] * self.num_envs
        values = list(values)
        if len(values) != self.num_envs:
            raise ValueError(f"{what} needs one entry per env ({self.num_envs}), got {len(values)}")
        return values

    def _call_each(self, method: str, args: list[tuple]) -> list[Any]:
        """Call method(*args[i]) on env i, for every env; results in env order."""
        if self._closed:
            raise RuntimeError("ChunkVectorEnv is closed")
        if self._local is not None:
            return self._local.call(method, args)
        for conn, block in zip(self._conns, self._blocks):
            try:
                conn.send(("call", method, [args[i] for i in block]))
            except OSError:  # a dead worker's pipe; _gather reports it with its exit code
                pass
        return [r for per_worker in self._gather() for r in per_worker]

    def _gather(self, timeout_s: float | None = None) -> list[Any]:
        """One reply per worker, in worker order; a worker error or death becomes a WorkerError."""
        results, errors = [], []
        for i, (conn, proc) in enumerate(zip(self._conns, self._procs)):
            waited = 0.0
            while not conn.poll(1.0):
                waited += 1.0
                if not proc.is_alive():
                    errors.append(f"env worker {i} (envs {self._blocks[i]}) died (exit code {proc.exitcode})")
                    break
                if timeout_s is not None and waited >= timeout_s:
                    errors.append(f"env worker {i} (envs {self._blocks[i]}) did not answer within {timeout_s:.0f} s")
                    break
            else:
                try:
                    status, payload = conn.recv()
                except (EOFError, OSError):
                    proc.join(timeout=5)
                    errors.append(f"env worker {i} (envs {self._blocks[i]}) died (exit code {proc.exitcode})")
                    continue
                if status == "error":
                    errors.append(f"env worker {i} (envs {self._blocks[i]}) failed:\n{payload}")
                results.append(payload)
        if errors:
            raise WorkerError("\n".join(errors))
        return results
