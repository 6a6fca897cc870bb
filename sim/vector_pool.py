"""The simulator-independent half of a chunked vector env: N envs spread over worker processes.

A simulator's ``ChunkVectorEnv`` subclasses ``ChunkVectorPool`` and supplies a ``ChunkRunner`` subclass (which env
a worker builds and how it resets); the pool owns the workers, seeding and the public API (reset /
set_next_seeds / step_chunk / close). Each worker holds a contiguous block of the envs and steps them one after
the other; each env runs a whole chunk inside its worker (one pipe round trip per chunk and worker, not per
step), stops early when its episode ends, and then resets itself for the next episode.

Seeds: every episode starts from an explicit seed, so a run is reproducible from ``seed``. ``reset(seeds)`` seeds
the episodes it starts; after an episode ends, the env's next seed is the one set with ``set_next_seeds`` (used
once), else the next draw of the env's own seed stream (derived from ``seed`` and the env index).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import traceback
from typing import Any, Self, Sequence

import numpy as np

from pirl_robot.process import die_with_parent
from sim.vector_types import ChunkResult, EpisodeStats, Obs, WorkerError, per_env, stack_obs


class ChunkRunner:
    """One env plus the chunk loop, auto-reset and seed stream; runs inside a worker (or in-process).

    Subclasses build the env and implement ``_reset_env`` (which leaves the env to step in ``self.env``) and
    ``close``; ``_after_step`` and ``_episode_ended`` are optional hooks."""

    env: Any

    def __init__(self, index: int, base_seed: int):
        self.index = index
        self.seed_stream = np.random.default_rng([base_seed, index])
        self.next_seed: int | None = None
        self.obs: Obs | None = None

    @staticmethod
    def prepare_worker() -> None:
        """Process-wide setup, run once in each worker process before its runners are built."""

    def _reset_env(self, seed: int) -> Obs:
        raise NotImplementedError

    def _after_step(self) -> None:
        """Called after every env step."""

    def _episode_ended(self, success: bool) -> None:
        """Called when an episode ends, before the auto-reset."""

    def reset(self, seed: int | None) -> Obs:
        self.seed = int(seed) if seed is not None else int(self.seed_stream.integers(2**31 - 1))
        self.obs = self._reset_env(self.seed)
        self.episode_return, self.episode_length, self.success_once = 0.0, 0, False
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
                self._after_step()
                out.update(terminated=term, truncated=trunc, success=bool(info["success"]), steps=h + 1)
                self.success_once = self.success_once or out["success"]
                if term or trunc:
                    break
            self.episode_return += float(rewards.sum())
            self.episode_length += out["steps"]
        out.update(step_rewards=rewards, final_obs=self.obs)
        if out["terminated"] or out["truncated"]:
            out["episode"] = EpisodeStats(self.index, self.seed, self.episode_return, self.episode_length,
                                          self.success_once, out["success"])
            self._episode_ended(self.success_once)
            self.reset(self.next_seed)
            self.next_seed = None
        out["obs"] = self.obs
        return out

    def close(self) -> None:
        raise NotImplementedError


class _EnvGroup:
    """The envs of one worker process (or of the parent, in-process); calls fan out over them in order."""

    def __init__(self, runner_cls: type[ChunkRunner], indices: Sequence[int], runner_kwargs: dict[str, Any]):
        self.runners: list[ChunkRunner] = []
        try:
            for i in indices:
                self.runners.append(runner_cls(index=i, **runner_kwargs))
        except BaseException:
            self.close()
            raise

    def call(self, method: str, args: list[tuple]) -> list[Any]:
        return [getattr(r, method)(*a) for r, a in zip(self.runners, args)]

    def close(self) -> None:
        for r in self.runners:
            r.close()


def _worker(conn, runner_cls: type[ChunkRunner], indices: list[int], runner_kwargs: dict[str, Any]) -> None:
    """Worker process loop: serve ("call", method, per-env args) until "close" or until the parent goes away."""
    die_with_parent()  # a crashed trainer leaves no orphan sims (build the env in a long-lived thread)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    runner_cls.prepare_worker()
    group = None
    try:
        group = _EnvGroup(runner_cls, indices, runner_kwargs)
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


class ChunkVectorPool:
    """N envs with chunked stepping over worker processes. See the module docstring for the protocol.

    A subclass calls ``super().__init__`` (argument checks), does its own checks, sets ``self.spec`` (a PolicySpec:
    the action size is checked against it), then ``_start`` to build the envs."""

    spec: Any
    device = "cpu"  # where observations and results live (numpy on the host)

    def __init__(self, num_envs: int, seed: int, num_workers: int | None, in_process: bool | None):
        """num_workers: processes to spread the envs over (default one per env; at most num_envs).
        in_process: step all envs in this process, no workers (default: only when num_envs == 1)."""
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if num_workers is not None and num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.num_envs, self.seed = num_envs, seed
        self.in_process = num_envs == 1 if in_process is None else in_process
        self.num_workers = 0 if self.in_process else min(num_workers or num_envs, num_envs)
        self._closed = False
        self._local: _EnvGroup | None = None
        self._blocks: list[list[int]] = []  # env indices of each worker, contiguous and in order
        self._procs: list[Any] = []
        self._conns: list[Any] = []

    def _start(self, runner_cls: type[ChunkRunner], runner_kwargs: dict[str, Any], start_timeout_s: float,
               worker_name: str) -> None:
        """Build the envs: runner_cls(index=i, **runner_kwargs) for env i, in this process or in the workers
        (runner_cls and runner_kwargs must pickle)."""
        if self.in_process:
            self._local = _EnvGroup(runner_cls, range(self.num_envs), runner_kwargs)
            return
        self._blocks = [b.tolist() for b in np.array_split(np.arange(self.num_envs), self.num_workers)]
        # spawn: fresh interpreters, so no forked torch/MuJoCo/GL state and no inherited pipe ends
        ctx = mp.get_context("spawn")
        try:
            for w, block in enumerate(self._blocks):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_worker, args=(child, runner_cls, block, runner_kwargs), daemon=True,
                                   name=f"{worker_name}-{w}")
                proc.start()
                child.close()
                self._procs.append(proc)
                self._conns.append(parent)
            self._gather(timeout_s=start_timeout_s)
        except WorkerError as e:
            self.close()
            raise WorkerError(f"{e}\n(if the worker's stderr mentions the 'bootstrapping phase': workers are "
                              f"spawned, so a script that builds a {type(self).__name__} needs an "
                              "`if __name__ == '__main__':` guard)") from None
        except BaseException:
            self.close()
            raise

    # --- public API -------------------------------------------------------------------------------------------
    def reset(self, seeds: Sequence[int | None] | None = None) -> Obs:
        """Start a new episode in every env; seeds[i] (None: the env's seed stream). Returns the batched obs."""
        seeds = self._per_env(seeds, "seeds")
        self._call_each("set_next_seed", [(None,)] * self.num_envs)
        return stack_obs(self._call_each("reset", [(s,) for s in seeds]))

    def set_next_seeds(self, seeds: Sequence[int | None]) -> None:
        """Seeds for each env's next auto-reset (used once; None keeps the env's seed stream)."""
        self._call_each("set_next_seed", [(s,) for s in self._per_env(seeds, "seeds")])

    def step_chunk(self, actions: np.ndarray, active: Sequence[bool] | np.ndarray | None = None) -> ChunkResult:
        """Execute actions (N, H, A) chunk-wise; envs with active[i] False do not step (obs unchanged)."""
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

    def __enter__(self) -> Self:
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
        return per_env(values, self.num_envs, what)

    def _call_each(self, method: str, args: list[tuple]) -> list[Any]:
        """Call method(*args[i]) on env i, for every env; results in env order."""
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")
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
