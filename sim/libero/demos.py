"""Record scripted-expert LIBERO demonstrations as a LeRobotDataset v3 (lerobot's own writer).

    python -m sim.libero.demos --suite libero_object --tasks 0 --episodes 10 --out outputs/demos/libero_object_t0
    python -m sim.libero.demos --suite libero_object --tasks 0,1,2 --obs-mode rgb --episodes 30 --out DIR

Attempt k (k = 0, 1, ...) has seed ``seed + k`` and runs that seed's task (``task_ids[(seed + k) % T]``) in a
scene from LIBERO's own placement sampler seeded with it (``scene="sampled"``, the way LIBERO's demonstrations
were collected), so demos never reuse the 50 standard init states that evaluation and RL start from; only
successful expert episodes are written.
Frame t holds the observation before action t and action t (as executed, i.e. clipped to [-1, 1]); each frame's
``task`` is the task's instruction, so multi-task datasets carry their language. Besides lerobot's files,
``meta/pirl_sim.json`` records the LIBERO config, the PolicySpec, the expert settings and the (task, seed, scene)
of every kept episode, so any episode can be replayed in the simulator.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim import demo_recording
from sim.demo_recording import (SIDECAR, DemoCounts, ExpertEpisode, prepare_output, record_expert_demos,
                                run_expert_episode)
from sim.libero.config import LiberoConfig
from sim.libero.env import CONTROL_HZ, LiberoEnv, task_spec
from sim.libero.experts import PickPlaceExpert, UnsupportedTask

SCENE = "sampled"

__all__ = ["SCENE", "SIDECAR", "DemoReport", "demo_features", "main", "record_demos"]


@dataclass
class DemoReport(DemoCounts):
    episodes: list[dict] = field(default_factory=list)  # task_id, seed, scene, length of each kept episode
    attempts_per_task: dict[int, int] = field(default_factory=dict)
    successes_per_task: dict[int, int] = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        return sum(self.successes_per_task.values()) / max(self.attempted, 1)


def demo_features(cfg: LiberoConfig, use_videos: bool = False) -> dict[str, dict[str, Any]]:
    """lerobot feature spec: observation.state, action, next.reward, one observation.images.<cam> per camera."""
    return demo_recording.demo_features(task_spec(cfg), use_videos)


def record_demos(cfg: LiberoConfig, num_episodes: int, out: str | Path, *, seed: int = 0, noise: float = 0.0,
                 max_attempts: int | None = None, use_videos: bool = False, repo_id: str | None = None,
                 log=print) -> DemoReport:
    """Run the scripted expert until `num_episodes` successes (or `max_attempts`, default 2x) and write them."""
    out = prepare_output(out, num_episodes)
    spec = task_spec(cfg)
    envs: dict[int, LiberoEnv] = {}
    experts = {}
    try:
        for t in cfg.task_ids:  # build the experts first: an unsupported task fails before anything is written
            envs[t] = LiberoEnv(cfg, t)
            experts[t] = PickPlaceExpert.for_env(envs[t], noise=noise, seed=seed + t)
    except UnsupportedTask as e:
        for env in envs.values():
            env.close()
        raise UnsupportedTask(f"no scripted demos for this setup: {e}. Train from your own LeRobotDataset "
                              "instead (env.dataset.root=DIR), or pick tasks the expert covers "
                              "(all of libero_object; libero_goal 2, 6, 9)") from e
    report = DemoReport(out, 0, 0, 0.0)

    def attempt(episode_seed: int) -> ExpertEpisode:
        task_id = cfg.task_of(episode_seed)
        report.attempts_per_task[task_id] = report.attempts_per_task.get(task_id, 0) + 1
        frames, success = _run_expert_episode(envs[task_id], experts[task_id], episode_seed)
        if success:
            report.successes_per_task[task_id] = report.successes_per_task.get(task_id, 0) + 1
        else:
            log(f"task {task_id} seed {episode_seed}: expert failed after {len(frames)} steps, episode dropped")
        return ExpertEpisode(frames, success, envs[task_id].instruction)

    def on_kept(episode_seed: int, episode: ExpertEpisode) -> None:
        report.episodes.append({"episode_index": report.kept, "task_id": cfg.task_of(episode_seed),
                                "seed": episode_seed, "scene": SCENE, "length": len(episode.frames)})

    def close_envs() -> None:
        for env in envs.values():
            env.close()

    record_expert_demos(report, num_episodes, seed=seed, max_attempts=max_attempts, spec=spec, fps=CONTROL_HZ,
                        repo_id=repo_id or f"pirl/{cfg.suite}-{cfg.obs_mode}", use_videos=use_videos,
                        attempt=attempt, on_kept=on_kept, close_envs=close_envs,
                        sidecar=lambda: _sidecar(cfg, spec, report, noise), log=log)
    return report


def _run_expert_episode(env: LiberoEnv, expert: PickPlaceExpert, seed: int) -> tuple[list[dict], bool]:
    obs, _ = env.reset(seed=seed, scene=SCENE)
    expert.reset(env)
    return run_expert_episode(env, obs, lambda: expert.act(env))


def _sidecar(cfg: LiberoConfig, spec, report: DemoReport, noise: float) -> dict[str, Any]:
    return {"simulator": "libero", "task_config": cfg.to_dict(), "spec": spec.to_dict(),
            "expert": {"kind": "scripted_pick_place", "noise": noise}, "attempted": report.attempted,
            "kept": report.kept,
            "expert_success": {str(t): [report.successes_per_task.get(t, 0), n]
                               for t, n in sorted(report.attempts_per_task.items())},
            "episodes": report.episodes}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Record scripted-expert LIBERO demos as a LeRobotDataset v3.")
    p.add_argument("--suite", default="libero_object")
    p.add_argument("--tasks", default="0", help="comma-separated task ids")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--out", required=True)
    p.add_argument("--obs-mode", default="state", choices=["state", "rgb"])
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--max-episode-steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=100_000)
    p.add_argument("--noise", type=float, default=0.0, help="std of Gaussian noise on the expert's arm actions")
    p.add_argument("--max-attempts", type=int, default=None)
    p.add_argument("--videos", action="store_true", help="store cameras as MP4 instead of PNG frames")
    a = p.parse_args(argv)
    cfg = LiberoConfig(suite=a.suite, task_ids=tuple(int(t) for t in a.tasks.split(",")), obs_mode=a.obs_mode,
                       image_size=a.image_size, max_episode_steps=a.max_episode_steps)
    record_demos(cfg, a.episodes, a.out, seed=a.seed, noise=a.noise, max_attempts=a.max_attempts,
                 use_videos=a.videos)


if __name__ == "__main__":
    main()
