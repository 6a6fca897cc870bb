"""Record scripted-expert demonstrations as a LeRobotDataset v3 (lerobot's own writer).

    python -m sim.maniskill.demos --task PushCube-v1 --episodes 10 --out outputs/demos/pushcube
    python -m sim.maniskill.demos --task PickCube-v1 --obs-mode rgb --image-size 64 --episodes 50 --out DIR

Episode k (k = 0, 1, ...) of an attempt sequence starts from env seed ``seed + k``; only successful expert
episodes are written. Frame t holds the observation before action t and action t (absolute joint targets as
executed, i.e. after clipping to the joint limits). Besides lerobot's own files, ``meta/pirl_sim.json`` records
the task config, the PolicySpec, the expert settings and the seed of every kept episode, so any episode can be
replayed in the simulator.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sim import demo_recording
from sim.demo_recording import (SIDECAR, DemoCounts, ExpertEpisode, prepare_output, record_expert_demos,
                                run_expert_episode)
from sim.maniskill.config import TaskConfig
from sim.maniskill.env import CONTROL_HZ, ManiSkillEnv, task_spec
from sim.maniskill.experts import make_expert

__all__ = ["SIDECAR", "DemoReport", "demo_features", "main", "record_demos"]


@dataclass
class DemoReport(DemoCounts):
    episode_seeds: list[int] = field(default_factory=list)
    episode_lengths: list[int] = field(default_factory=list)

    @property
    def seconds_per_episode(self) -> float:
        return self.seconds / max(self.attempted, 1)


def demo_features(cfg: TaskConfig, use_videos: bool = False) -> dict[str, dict[str, Any]]:
    """lerobot feature spec: observation.state, action, and one observation.images.<cam> per camera."""
    return demo_recording.demo_features(task_spec(cfg), use_videos)


def record_demos(cfg: TaskConfig, num_episodes: int, out: str | Path, *, seed: int = 0, noise: float = 0.0,
                 max_attempts: int | None = None, use_videos: bool = False, repo_id: str | None = None,
                 env: ManiSkillEnv | None = None, log=print) -> DemoReport:
    """Run the scripted expert until `num_episodes` successes (or `max_attempts`, default 2x) and write them.

    env: an existing env for `cfg` to record in (left open); by default one is built and closed here."""
    out = prepare_output(out, num_episodes)
    spec = task_spec(cfg)
    own_env = env is None
    env = env or ManiSkillEnv(cfg)
    if env.cfg != cfg:
        raise ValueError(f"env was built for {env.cfg}, not {cfg}")
    expert = make_expert(cfg.task, noise=noise, seed=seed)
    report = DemoReport(out, 0, 0, 0.0)

    def attempt(episode_seed: int) -> ExpertEpisode:
        frames, success = _run_expert_episode(env, expert, episode_seed)
        if not success:
            log(f"seed {episode_seed}: expert failed, episode dropped")
        return ExpertEpisode(frames, success, spec.instruction)

    def on_kept(episode_seed: int, episode: ExpertEpisode) -> None:
        report.episode_seeds.append(episode_seed)
        report.episode_lengths.append(len(episode.frames))

    record_expert_demos(report, num_episodes, seed=seed, max_attempts=max_attempts, spec=spec, fps=CONTROL_HZ,
                        repo_id=repo_id or f"pirl/{cfg.task.lower()}-{cfg.obs_mode}", use_videos=use_videos,
                        attempt=attempt, on_kept=on_kept, close_envs=env.close if own_env else (lambda: None),
                        sidecar=lambda: _sidecar(cfg, spec, report, noise), log=log)
    return report


def _run_expert_episode(env: ManiSkillEnv, expert, seed: int) -> tuple[list[dict[str, np.ndarray]], bool]:
    obs, _ = env.reset(seed=seed)
    expert.reset(env.privileged())
    return run_expert_episode(env, obs, lambda: expert.act(env.privileged()))


def _sidecar(cfg: TaskConfig, spec, report: DemoReport, noise: float) -> dict[str, Any]:
    return {"simulator": "maniskill3", "task_config": cfg.to_dict(), "spec": spec.to_dict(),
            "expert": {"kind": "scripted", "noise": noise}, "attempted": report.attempted, "kept": report.kept,
            "episodes": [{"episode_index": i, "seed": s, "length": n}
                         for i, (s, n) in enumerate(zip(report.episode_seeds, report.episode_lengths))]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Record scripted-expert ManiSkill demos as a LeRobotDataset v3.")
    p.add_argument("--task", default="PushCube-v1")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--out", required=True)
    p.add_argument("--obs-mode", default="state", choices=["state", "rgb"])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--max-episode-steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", type=float, default=0.0, help="std (rad) of noise on the expert's joint targets")
    p.add_argument("--max-attempts", type=int, default=None)
    p.add_argument("--videos", action="store_true", help="store cameras as MP4 instead of PNG frames")
    p.add_argument("--safety-config", default=None, help="robot yaml: the expert runs behind its SafetyFilter and "
                   "the executed actions are recorded (sim/safety_limits.py)")
    p.add_argument("--camera-calibration", default=None, help="calibration YAML for base_camera (sim/maniskill/twin.py)")
    a = p.parse_args(argv)
    cfg = TaskConfig(task=a.task, obs_mode=a.obs_mode, image_size=a.image_size, max_episode_steps=a.max_episode_steps,
                     safety_config=a.safety_config, camera_calibration=a.camera_calibration)
    record_demos(cfg, a.episodes, a.out, seed=a.seed, noise=a.noise, max_attempts=a.max_attempts,
                 use_videos=a.videos)


if __name__ == "__main__":
    main()
