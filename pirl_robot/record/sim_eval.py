"""The deploy node's Rerun layout in simulated evaluation: `pirl eval ... rerun.dir=DIR` writes one .rrd per
episode (DIR/<task>/seed_<seed>.rrd) with the same entities, so a sim run and a real run look the same.

    results = evaluate_policy(policy, env_cfg, episodes, observers=[RerunEvalObserver("out/rrd", policy.spec)])

It plugs into pirl_robot/evaluate.py's observer hook (on_task_start / on_chunk / on_task_end). The simulator
hands over the observation at each chunk's start and the executed actions, so camera frames and measured joints
appear once per chunk; actions, rewards and the outcome once per step. There is no safety filter in
simulation: the applied command is the policy's action.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pirl_robot.record.rerun_log import EpisodeLogger, entity_name
from pirl_robot.record.schema import RecordSchema


class RerunEvalObserver:
    def __init__(self, out_dir: str | Path, spec, episodes_per_task: int | None = None):
        self.out = Path(out_dir)
        self.spec = spec
        self.limit = episodes_per_task
        self.schema = RecordSchema(
            state_names=tuple(spec.state_names), action_names=tuple(spec.action_names),
            command_names=tuple(spec.action_names), joint_names=(), chunk_size=spec.chunk_size,
            cameras=tuple((c.name, c.height, c.width) for c in spec.cameras),
            action_state_index=tuple(spec.action_state_index), fps=float(spec.control_hz))
        self.files: list[Path] = []

    def on_task_start(self, task: str, instruction: str, seeds) -> None:
        self._task, self._instruction, self._seeds = task, instruction, list(seeds)
        self._start, self._new_batch = 0, True
        self._logs: dict[int, EpisodeLogger] = {}
        self._steps: dict[int, int] = {}
        self._returns: dict[int, float] = {}

    def _open(self, i: int, seed: int) -> None:
        path = self.out / entity_name(self._task) / f"seed_{seed:06d}.rrd"
        log = EpisodeLogger.open(self.schema, path=path, recording_id=f"{self._task}-seed{seed}")
        log.info(f"**{self._instruction}**\n\n- simulation: {self._task}, seed {seed}\n- no safety filter in "
                 f"simulation: applied = policy")
        self._logs[i], self._steps[i], self._returns[i] = log, 0, 0.0
        self.files.append(path)

    def on_chunk(self, task: str, obs: dict, actions: np.ndarray, result, active: np.ndarray) -> None:
        n = len(active)
        if self._new_batch:
            for i in range(n):
                k = self._start + i
                if active[i] and k < len(self._seeds) and (self.limit is None or k < self.limit):
                    self._open(i, self._seeds[k])
            self._new_batch = False
        dt = 1.0 / self.spec.control_hz
        images = obs.get("images") or {}
        for i, log in list(self._logs.items()):
            if not active[i]:
                continue
            t = self._steps[i]
            log.frame(t, t * dt, state=np.asarray(obs["state"][i]),
                      images={cam: np.asarray(v[i]) for cam, v in images.items()})
            log.chunk(t, t * dt, actions[i])
            for j in range(int(result.steps[i])):
                log.frame(t + j, (t + j) * dt, raw=actions[i][j], applied=actions[i][j])
                r = float(result.step_rewards[i][j])
                self._returns[i] += r
                log.scalar(t + j, (t + j) * dt, "sim/reward", r)
            self._steps[i] = t + int(result.steps[i])
            if result.done[i]:
                ok = bool(result.success[i])
                log.event(self._steps[i], self._steps[i] * dt, "outcome",
                          f"{'success' if ok else 'failure'} (sim), return {self._returns[i]:.3f}", "INFO")
                log.close()
                del self._logs[i]
        if not (active & ~np.asarray(result.done)).any():  # the batch ended: the next call starts the next one
            self._start += n
            self._new_batch = True

    def on_task_end(self, task: str, stats: dict) -> None:
        for log in self._logs.values():
            log.close()
        self._logs = {}
