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
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sim.maniskill.config import TaskConfig
from sim.maniskill.env import CONTROL_HZ, ManiSkillEnv, task_spec
from sim.maniskill.experts import make_expert

SIDECAR = "meta/pirl_sim.json"


@dataclass
class DemoReport:
    root: Path
    kept: int
    attempted: int
    seconds: float
    episode_seeds: list[int] = field(default_factory=list)
    episode_lengths: list[int] = field(default_factory=list)

    @property
    def seconds_per_episode(self) -> float:
        return self.seconds / max(self.attempted, 1)


def demo_features(cfg: TaskConfig, use_videos: bool = False) -> dict[str, dict[str, Any]]:
    """lerobot feature spec: observation.state, action, and one observation.images.<cam> per camera."""
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


def record_demos(cfg: TaskConfig, num_episodes: int, out: str | Path, *, seed: int = 0, noise: float = 0.0,
                 max_attempts: int | None = None, use_videos: bool = False, repo_id: str | None = None,
                 env: ManiSkillEnv | None = None, log=print) -> DemoReport:
    """Run the scripted expert until `num_episodes` successes (or `max_attempts`, default 2x) and write them.

    env: an existing env for `cfg` to record in (left open); by default one is built and closed here."""
    import datasets
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    datasets.disable_progress_bars()  # one "Map" bar per episode otherwise
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; demos go to a new directory (lerobot refuses to overwrite)")
    if num_episodes < 1:
        raise ValueError("num_episodes must be >= 1")
    max_attempts = max_attempts or 2 * num_episodes
    spec = task_spec(cfg)
    own_env = env is None
    env = env or ManiSkillEnv(cfg)
    if env.cfg != cfg:
        raise ValueError(f"env was built for {env.cfg}, not {cfg}")
    expert = make_expert(cfg.task, noise=noise, seed=seed)
    ds = LeRobotDataset.create(repo_id or f"pirl/{cfg.task.lower()}-{cfg.obs_mode}", fps=CONTROL_HZ,
                               features=demo_features(cfg, use_videos), root=out, robot_type=spec.robot,
                               use_videos=use_videos)
    report = DemoReport(out, 0, 0, 0.0)
    start = time.perf_counter()
    try:
        while report.kept < num_episodes and report.attempted < max_attempts:
            episode_seed = seed + report.attempted
            report.attempted += 1
            frames, success = _run_expert_episode(env, expert, episode_seed)
            if not success:
                log(f"seed {episode_seed}: expert failed, episode dropped")
                continue
            for frame in frames:
                ds.add_frame({**frame, "task": spec.instruction})
            ds.save_episode()
            report.kept += 1
            report.episode_seeds.append(episode_seed)
            report.episode_lengths.append(len(frames))
    finally:
        # Episodes already saved stay readable even if recording is interrupted.
        ds.finalize()
        if own_env:
            env.close()
        report.seconds = time.perf_counter() - start
        _write_sidecar(out, cfg, spec, report, noise)
    log(f"kept {report.kept}/{report.attempted} expert episodes in {report.seconds:.1f} s "
        f"({report.seconds_per_episode:.2f} s/attempt) -> {out}")
    if report.kept < num_episodes:
        raise RuntimeError(f"only {report.kept} of {num_episodes} requested episodes succeeded in "
                           f"{report.attempted} attempts (the ones kept are saved in {out})")
    return report


def _run_expert_episode(env: ManiSkillEnv, expert, seed: int) -> tuple[list[dict[str, np.ndarray]], bool]:
    obs, _ = env.reset(seed=seed)
    expert.reset(env.privileged())
    frames = []
    while True:
        action = env.clip_action(expert.act(env.privileged()))
        frame = {"observation.state": obs["state"], "action": action}
        frame.update({f"observation.images.{c}": img for c, img in obs["images"].items()})
        obs, reward, terminated, truncated, info = env.step(action)
        frame["next.reward"] = np.array([reward], dtype=np.float32)
        frames.append(frame)
        if terminated or truncated:
            return frames, bool(info["success"])


def _write_sidecar(out: Path, cfg: TaskConfig, spec, report: DemoReport, noise: float) -> None:
    if not (out / "meta").is_dir():
        return
    side = {"simulator": "maniskill3", "task_config": cfg.to_dict(), "spec": spec.to_dict(),
            "expert": {"kind": "scripted", "noise": noise}, "attempted": report.attempted, "kept": report.kept,
            "episodes": [{"episode_index": i, "seed": s, "length": n}
                         for i, (s, n) in enumerate(zip(report.episode_seeds, report.episode_lengths))]}
    (out / SIDECAR).write_text(json.dumps(side, indent=1))


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
    a = p.parse_args(argv)
    cfg = TaskConfig(task=a.task, obs_mode=a.obs_mode, image_size=a.image_size, max_episode_steps=a.max_episode_steps)
    record_demos(cfg, a.episodes, a.out, seed=a.seed, noise=a.noise, max_attempts=a.max_attempts,
                 use_videos=a.videos)


if __name__ == "__main__":
    main()
