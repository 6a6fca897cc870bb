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
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sim.libero.config import LiberoConfig
from sim.libero.env import CONTROL_HZ, LiberoEnv, task_spec
from sim.libero.experts import PickPlaceExpert, UnsupportedTask

SIDECAR = "meta/pirl_sim.json"
SCENE = "sampled"


@dataclass
class DemoReport:
    root: Path
    kept: int
    attempted: int
    seconds: float
    episodes: list[dict] = field(default_factory=list)  # task_id, seed, scene, length of each kept episode
    attempts_per_task: dict[int, int] = field(default_factory=dict)
    successes_per_task: dict[int, int] = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        return sum(self.successes_per_task.values()) / max(self.attempted, 1)


def demo_features(cfg: LiberoConfig, use_videos: bool = False) -> dict[str, dict[str, Any]]:
    """lerobot feature spec: observation.state, action, next.reward, one observation.images.<cam> per camera."""
    spec = task_spec(cfg)
    feats: dict[str, dict[str, Any]] = {
        "observation.state": {"dtype": "float32", "shape": (spec.state_dim,), "names": list(spec.state_names)},
        "action": {"dtype": "float32", "shape": (spec.action_dim,), "names": list(spec.action_names)},
        "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
    }
    for cam in spec.cameras:
        feats[f"observation.images.{cam.name}"] = {
            "dtype": "video" if use_videos else "image", "shape": (cam.height, cam.width, 3),
            "names": ["height", "width", "channels"]}
    return feats


def record_demos(cfg: LiberoConfig, num_episodes: int, out: str | Path, *, seed: int = 0, noise: float = 0.0,
                 max_attempts: int | None = None, use_videos: bool = False, repo_id: str | None = None,
                 log=print) -> DemoReport:
    """Run the scripted expert until `num_episodes` successes (or `max_attempts`, default 2x) and write them."""
    import datasets
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    datasets.disable_progress_bars()
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; demos go to a new directory (lerobot refuses to overwrite)")
    if num_episodes < 1:
        raise ValueError("num_episodes must be >= 1")
    max_attempts = max_attempts or 2 * num_episodes
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
    ds = LeRobotDataset.create(repo_id or f"pirl/{cfg.suite}-{cfg.obs_mode}", fps=CONTROL_HZ,
                               features=demo_features(cfg, use_videos), root=out, robot_type=spec.robot,
                               use_videos=use_videos)
    report = DemoReport(out, 0, 0, 0.0)
    start = time.perf_counter()
    try:
        while report.kept < num_episodes and report.attempted < max_attempts:
            episode_seed = seed + report.attempted
            task_id = cfg.task_of(episode_seed)
            report.attempted += 1
            report.attempts_per_task[task_id] = report.attempts_per_task.get(task_id, 0) + 1
            frames, success = _run_expert_episode(envs[task_id], experts[task_id], episode_seed)
            if not success:
                log(f"task {task_id} seed {episode_seed}: expert failed after {len(frames)} steps, episode dropped")
                continue
            report.successes_per_task[task_id] = report.successes_per_task.get(task_id, 0) + 1
            for frame in frames:
                ds.add_frame({**frame, "task": envs[task_id].instruction})
            ds.save_episode()
            report.episodes.append({"episode_index": report.kept, "task_id": task_id, "seed": episode_seed,
                                    "scene": SCENE, "length": len(frames)})
            report.kept += 1
    finally:
        ds.finalize()  # episodes already saved stay readable even if recording is interrupted
        for env in envs.values():
            env.close()
        report.seconds = time.perf_counter() - start
        _write_sidecar(out, cfg, spec, report, noise)
    log(f"kept {report.kept}/{report.attempted} expert episodes in {report.seconds:.1f} s "
        f"({report.seconds / max(report.attempted, 1):.2f} s/attempt) -> {out}")
    if report.kept < num_episodes:
        raise RuntimeError(f"only {report.kept} of {num_episodes} requested episodes succeeded in "
                           f"{report.attempted} attempts (the ones kept are saved in {out})")
    return report


def _run_expert_episode(env: LiberoEnv, expert: PickPlaceExpert, seed: int) -> tuple[list[dict], bool]:
    obs, _ = env.reset(seed=seed, scene=SCENE)
    expert.reset(env)
    frames = []
    while True:
        action = env.clip_action(expert.act(env))
        frame = {"observation.state": obs["state"], "action": action}
        frame.update({f"observation.images.{c}": img for c, img in obs["images"].items()})
        obs, reward, terminated, truncated, info = env.step(action)
        frame["next.reward"] = np.array([reward], dtype=np.float32)
        frames.append(frame)
        if terminated or truncated:
            return frames, bool(info["success"])


def _write_sidecar(out: Path, cfg: LiberoConfig, spec, report: DemoReport, noise: float) -> None:
    if not (out / "meta").is_dir():
        return
    side = {"simulator": "libero", "task_config": cfg.to_dict(), "spec": spec.to_dict(),
            "expert": {"kind": "scripted_pick_place", "noise": noise}, "attempted": report.attempted,
            "kept": report.kept,
            "expert_success": {str(t): [report.successes_per_task.get(t, 0), n]
                               for t, n in sorted(report.attempts_per_task.items())},
            "episodes": report.episodes}
    (out / SIDECAR).write_text(json.dumps(side, indent=1))


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
