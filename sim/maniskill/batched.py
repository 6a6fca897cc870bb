"""N ManiSkill envs in one batched, device-resident simulation: one process, torch tensors end to end.

    env = BatchedManiSkillEnv(TaskConfig(task="PushCube-v1", sim_backend="physx_cuda"), num_envs=1024, seed=0,
                              device="cuda")
    obs = env.reset(seeds=[7] * 1024)        # {"state": (N, S) tensor, "images": {cam: (N, H, W, 3) uint8}}
    res = env.step_chunk(actions)            # actions (N, H, 8) tensor on the device -> ChunkResult of tensors
    res.reward, res.done, res.final_obs, res.episodes

The same protocol and result types as the worker-process ``ChunkVectorEnv`` (``sim.vector_types``), so the
trainer, GRPO groups and evaluation do not know which one runs; here the arrays are torch tensors on ``device``
(the policy's). ManiSkill's own vector wrapper (``ManiSkillVectorEnv``) drives the batch; a chunk is H batched
``step`` calls with no host round trip; envs whose episode ended inside the chunk are partially reset at its end
(``env_idx``), seeded like the worker envs (``reset(seeds)``, ``set_next_seeds``, else each env's own seed
stream), and their episode metrics (return, length, success once / at end) are reported as ``EpisodeStats``.
The host sees one small copy per chunk, and only when an episode ended (which envs, their seeds and stats).

Backends: ``sim_backend="physx_cuda"`` runs hundreds of envs on a GPU; ``"physx_cpu"`` runs this very code with
num_envs=1 (ManiSkill's CPU backend takes one env per process), which is what the tests exercise: there it
reproduces ``ChunkVectorEnv``'s seeded states, rewards and episode metrics exactly.

Seeds on the GPU: ManiSkill 3.0.1 initialises a batch of episodes from one torch stream seeded by the first seed
of the reset call, so a seed fixes an initial state exactly only where envs reset one at a time (num_envs=1, the
CPU backend). Envs that share a seed within one reset call (a GRPO group) still start identically: the first of
them is reset and the others are reset to its state (``reset_to_env_states``).
"""

from __future__ import annotations

from typing import Any, Self, Sequence

import numpy as np
import torch

from sim.maniskill.config import TaskConfig
from sim.maniskill.env import CONTROL_HZ, cameras, check_layout, gym_kwargs, state_fields, task_spec, twin_hooks
from sim.vector_types import ChunkResult, EpisodeStats, Obs, per_env

BATCHED_BACKENDS = ("physx_cpu", "physx_cuda")


class PhysXGpuMissing(RuntimeError):
    """SAPIEN's PhysX GPU library (libPhysXGpu_64.so) is not installed and could not be downloaded."""


class BatchedManiSkillEnv:
    """N ManiSkill envs in one batched simulation with chunked stepping. See the module docstring."""

    def __init__(self, cfg: TaskConfig, num_envs: int, seed: int = 0, device: str | torch.device | None = None):
        """device: where observations and results live (the policy's device); default the simulator's."""
        if cfg.sim_backend not in BATCHED_BACKENDS:
            raise ValueError(f"BatchedManiSkillEnv runs sim_backend in {BATCHED_BACKENDS}, got {cfg.sim_backend!r} "
                             "(the worker-process ChunkVectorEnv runs 'cpu')")
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if cfg.sim_backend == "physx_cpu" and num_envs != 1:
            raise ValueError(f"ManiSkill's CPU backend runs one env per process, got num_envs={num_envs}: use "
                             "sim_backend=cpu (worker processes) or physx_cuda for more")
        self.cfg, self.spec, self.num_envs, self.seed = cfg, task_spec(cfg), num_envs, seed
        # The twin of the real robot, as ManiSkillEnv runs it: the calibrated camera (rendered, then warped through
        # its distortion on the device) and the robot's SafetyFilter per env (on the host: one copy of the
        # actions and joints per step, only where env.maniskill.safety_config is set).
        self.twins, self.limits = twin_hooks(cfg, num_envs)
        gpu = torch.device(device) if device is not None and cfg.sim_backend == "physx_cuda" else None
        self.venv = _make(cfg, num_envs, gpu, self.twins)
        self.base = self.venv.base_env
        if self.base.control_freq != CONTROL_HZ:
            raise RuntimeError(f"{cfg.task} runs at {self.base.control_freq} Hz, task_spec assumes {CONTROL_HZ}")
        self.sim_device = torch.device(self.venv.device)
        self.device = torch.device(device) if device is not None else self.sim_device
        space = self.base.single_action_space
        self.action_low = torch.as_tensor(space.low, dtype=torch.float32, device=self.sim_device)
        self.action_high = torch.as_tensor(space.high, dtype=torch.float32, device=self.sim_device)
        self.cameras = cameras(cfg)
        self.seed_streams = [np.random.default_rng([seed, i]) for i in range(num_envs)]  # as ChunkRunner's
        self.next_seeds: list[int | None] = [None] * num_envs
        self.seeds = np.zeros(num_envs, dtype=np.int64)
        z = lambda dtype: torch.zeros(num_envs, dtype=dtype, device=self.device)  # noqa: E731
        self.episode_return, self.episode_length, self.success_once = z(torch.float64), z(torch.int64), z(torch.bool)
        self.obs: Obs | None = None
        self._checked, self._closed = False, False

    # --- public API (as ChunkVectorEnv) ---------------------------------------------------------------------
    def reset(self, seeds: Sequence[int | None] | None = None) -> Obs:
        """Start a new episode in every env; seeds[i] (None: the env's seed stream). Returns the batched obs."""
        seeds = self._per_env(seeds, "seeds")
        self.next_seeds = [None] * self.num_envs
        self.obs = None
        self._reset_envs(list(range(self.num_envs)), seeds)
        return self.obs

    def set_next_seeds(self, seeds: Sequence[int | None]) -> None:
        """Seeds for each env's next auto-reset (used once; None keeps the env's seed stream)."""
        self.next_seeds = self._per_env(seeds, "seeds")

    def step_chunk(self, actions: np.ndarray | torch.Tensor,
                   active: Sequence[bool] | np.ndarray | torch.Tensor | None = None) -> ChunkResult:
        """Execute actions (N, H, A) chunk-wise; envs with active[i] False report no change (their simulation
        is stepped with the batch but ignored). Ended episodes are reset at the chunk's end."""
        if self.obs is None:
            raise RuntimeError("step_chunk before reset")
        n, a = self.num_envs, self.spec.action_dim
        actions = torch.as_tensor(actions, dtype=torch.float32).to(self.sim_device, non_blocking=True)
        if actions.ndim != 3 or actions.shape[0] != n or actions.shape[2] != a or actions.shape[1] < 1:
            raise ValueError(f"actions must have shape (num_envs={n}, H, {a}), got {tuple(actions.shape)}")
        finite = torch.isfinite(actions).flatten(1).all(1)
        if not bool(finite.all()):
            raise ValueError(f"non-finite actions for envs {torch.nonzero(~finite).flatten().tolist()}")
        actions = torch.maximum(torch.minimum(actions, self.action_high), self.action_low)  # the joint limits
        running = (torch.ones(n, dtype=torch.bool) if active is None
                   else torch.as_tensor(np.asarray(active, dtype=bool) if not torch.is_tensor(active) else active))
        if running.shape != (n,):
            raise ValueError(f"active must have shape ({n},), got {tuple(running.shape)}")
        running = running.to(self.device)
        horizon = actions.shape[1]
        step_rewards = torch.zeros(n, horizon, device=self.device)
        steps = torch.zeros(n, dtype=torch.int64, device=self.device)
        terminated, truncated, success = (torch.zeros(n, dtype=torch.bool, device=self.device) for _ in range(3))
        final = self.obs  # per env: the observation after its last executed step
        for h in range(horizon):
            step = actions[:, h]
            if self.limits is not None:  # the deploy node's SafetyFilter between the policy and each arm
                qpos = self.base.agent.robot.get_qpos().cpu().numpy().astype(np.float64)
                step = torch.as_tensor(self.limits.filter_batch(step.cpu().numpy(), qpos), device=self.sim_device)
            raw, reward, term, trunc, info = self.venv.step(step)
            reward, term, trunc, succ = (self._to(x) for x in (reward, term, trunc, info["success"]))
            reward = self._credit(reward.float(), term)
            step_rewards[:, h] = torch.where(running, reward, 0.0)
            steps += running
            terminated = torch.where(running, term.bool(), terminated)
            truncated = torch.where(running, trunc.bool(), truncated)
            success = torch.where(running, succ.bool(), success)
            self.success_once |= running & succ.bool()
            final = _where(running, self._convert(raw), final)
            running = running & ~(term.bool() | trunc.bool())
        self.episode_return += step_rewards.sum(1)
        self.episode_length += steps
        done = terminated | truncated
        self.obs = final
        episodes: list[EpisodeStats] = []
        if bool(done.any()):  # the chunk's one host copy: which envs ended, their stats
            ended = torch.nonzero(done).flatten().tolist()
            ret, length, once, end = (x[done].cpu().tolist() for x in
                                      (self.episode_return, self.episode_length, self.success_once, success))
            episodes = [EpisodeStats(i, int(self.seeds[i]), ret[k], length[k], once[k], end[k])
                        for k, i in enumerate(ended)]
            seeds = [self.next_seeds[i] for i in ended]
            for i in ended:
                self.next_seeds[i] = None
            self._reset_envs(ended, seeds)
        return ChunkResult(obs=self.obs, final_obs=final, reward=step_rewards.sum(1), step_rewards=step_rewards,
                           terminated=terminated, truncated=truncated, success=success,
                           steps=steps.to(torch.int32), episodes=episodes)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.venv.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- plumbing ---------------------------------------------------------------------------------------------
    def _reset_envs(self, envs: list[int], seeds: list[int | None]) -> None:
        """Partial reset of `envs` (their new obs rows replace self.obs's); equal seeds -> identical states."""
        drawn = [int(s) if s is not None else int(self.seed_streams[i].integers(2**31 - 1))
                 for i, s in zip(envs, seeds)]
        leader: dict[int, int] = {}  # seed -> first env reset with it
        for i, s in zip(envs, drawn):
            leader.setdefault(s, i)
        firsts = sorted(leader.values())
        idx = torch.tensor(firsts, dtype=torch.long, device=self.sim_device)
        raw, _ = self.venv.reset(seed=[int(drawn[envs.index(i)]) for i in firsts], options=dict(env_idx=idx))
        copies = [(leader[s], i) for i, s in zip(envs, drawn) if leader[s] != i]
        if copies:  # only where several envs reset with one seed (GPU): they take the first one's state
            src = torch.tensor([c[0] for c in copies], device=self.sim_device)
            dst = torch.tensor([c[1] for c in copies], device=self.sim_device)
            raw = self.copy_states(src, dst)
        if not self._checked:
            check_layout(self.cfg, raw)
            for twin in self.twins:
                from sim.maniskill.twin import check_base_pose

                check_base_pose(twin, self.base.agent.robot.pose.raw_pose[0].cpu().numpy().astype(np.float64))
            self._checked = True
        if self.limits is not None:
            qpos = self.base.agent.robot.get_qpos().cpu().numpy().astype(np.float64)
            for i in envs:
                self.limits.reset(qpos[i], i)
        for i, s in zip(envs, drawn):
            self.seeds[i] = s
        fresh = self._convert(raw)
        rows = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        rows[envs] = True
        self.obs = fresh if self.obs is None else _where(rows, fresh, self.obs)
        self.episode_return[rows], self.episode_length[rows], self.success_once[rows] = 0.0, 0, False

    def copy_states(self, src: torch.Tensor, dst: torch.Tensor) -> dict[str, Any]:
        """Reset envs dst to the current simulation states of envs src (ManiSkill's ``reset_to_env_states``);
        returns ManiSkill's observation of the whole batch."""
        state = _rows(self.base.get_state_dict(), src)
        raw, _ = self.venv.reset(options=dict(env_idx=dst, reset_to_env_states=dict(env_states=state)))
        return raw

    def _credit(self, reward: torch.Tensor, term: torch.Tensor) -> torch.Tensor:
        """As ManiSkillEnv.step: with dense rewards, success pays the episode's remaining steps."""
        if self.cfg.reward_mode == "sparse" or not self.cfg.credit_remaining_steps:
            return reward
        remaining = (self.cfg.max_episode_steps - self._to(self.base.elapsed_steps)).clamp_min(0)
        return torch.where(term.bool(), reward * (1 + remaining), reward)

    def _convert(self, raw: dict[str, Any]) -> Obs:
        n = self.num_envs
        state = torch.cat([self._to(raw[g][k]).reshape(n, -1).float() for g, k, _ in state_fields(self.cfg)], 1)
        images = {c: raw["sensor_data"][c]["rgb"] for c in self.cameras}
        for twin in self.twins:  # warped where it was rendered, then moved
            if twin.uid in images:
                images[twin.uid] = twin.distort_batch(torch.as_tensor(images[twin.uid]))
        return {"state": state, "images": {c: self._to(x) for c, x in images.items()}}

    def _to(self, x: Any) -> torch.Tensor:
        return torch.as_tensor(x).to(self.device, non_blocking=True)

    def _per_env(self, values: Sequence[Any] | None, what: str) -> list[Any]:
        return per_env(values, self.num_envs, what)


def _make(cfg: TaskConfig, num_envs: int, device: torch.device | None, twins: tuple = ()):
    """ManiSkill's batched env behind its own vector wrapper (resets are ours: per-env seeds)."""
    import gymnasium as gym
    import mani_skill.envs  # noqa: F401  (registers the tasks)
    from mani_skill.vector.wrappers.gymnasium import ManiSkillVectorEnv

    if cfg.sim_backend == "physx_cuda" and not torch.cuda.is_available():
        raise PhysXGpuMissing("sim_backend=physx_cuda needs a CUDA GPU and none is visible to torch; "
                              "use env.sim_backend=cpu (worker processes) on this machine")
    kwargs = gym_kwargs(cfg, twins)
    if device is not None and device.type == "cuda" and device.index is not None:  # this rank's GPU (torchrun)
        kwargs["sim_backend"] = f"physx_cuda:{device.index}"
        if cfg.render_backend in ("gpu", "cuda", "sapien_cuda"):
            kwargs["render_backend"] = f"cuda:{device.index}"
    try:
        env = gym.make(cfg.task, num_envs=num_envs, **kwargs)
    except Exception as e:
        if cfg.sim_backend == "physx_cuda" and _physx_gpu_missing(e):
            raise PhysXGpuMissing(
                "PhysX GPU library missing: SAPIEN needs libPhysXGpu_64.so for sim_backend=physx_cuda and downloads "
                "it from GitHub on first use, which failed here. Put the file into ~/.sapien/physx/<version>/ "
                f"(see SAPIEN's docs) or use sim_backend=cpu. ({type(e).__name__}: {e})") from e
        raise
    return ManiSkillVectorEnv(env, auto_reset=False, ignore_terminations=False, record_metrics=False)


def _physx_gpu_missing(e: BaseException) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    return any(k in text for k in ("physxgpu", "physx gpu", "urlopen", "urlerror", "connection", "download",
                                   "name resolution", "cuda"))


def _where(mask: torch.Tensor, a: Obs, b: Obs) -> Obs:
    """Per env row: a where mask, else b (state and every camera)."""
    def pick(x, y):
        return torch.where(mask.view(-1, *([1] * (x.ndim - 1))), x, y)
    return {"state": pick(a["state"], b["state"]), "images": {c: pick(a["images"][c], b["images"][c])
                                                              for c in a["images"]}}


def _rows(state: dict, idx: torch.Tensor) -> dict:
    """Rows idx of a ManiSkill state dict (nested dicts of (N, ...) tensors)."""
    return {k: _rows(v, idx) if isinstance(v, dict) else v[idx] for k, v in state.items()}
