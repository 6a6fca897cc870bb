"""The recording loop shared by the scripted-expert demo writers (``sim.maniskill.demos``, ``sim.libero.demos``).

A simulator's ``record_demos`` checks its output with ``prepare_output``, builds its envs and experts, then hands
``record_expert_demos`` a callable that runs one attempt from a seed. This module owns lerobot's
LeRobotDataset v3 writer (create / add_frame / save_episode / finalize) and the attempt loop: attempt k has seed
``seed + k``, only successful episodes are written, and it stops at ``num_episodes`` kept or ``max_attempts``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pirl_robot.data.demos import SIDECAR  # pirl's own record next to lerobot's files; the reader owns the name
from pirl_robot.spec import PolicySpec

Frame = dict[str, np.ndarray]  # observation.state, action, next.reward, observation.images.<cam>


@dataclass
class DemoCounts:
    """What every simulator's DemoReport holds; they add their own per-episode records."""

    root: Path
    kept: int
    attempted: int
    seconds: float


@dataclass
class ExpertEpisode:
    frames: list[Frame]
    success: bool
    instruction: str  # stored as every frame's ``task``


def prepare_output(out: str | Path, num_episodes: int) -> Path:
    """Check the request before any env is built (lerobot importable, a new directory, at least one episode)."""
    import datasets
    from lerobot.datasets.lerobot_dataset import LeRobotDataset  # noqa: F401 (fail here, not after the env build)

    datasets.disable_progress_bars()  # one "Map" bar per episode otherwise
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; demos go to a new directory (lerobot refuses to overwrite)")
    if num_episodes < 1:
        raise ValueError("num_episodes must be >= 1")
    return out


def demo_features(spec: PolicySpec, use_videos: bool = False) -> dict[str, dict[str, Any]]:
    """lerobot feature spec: observation.state, action, next.reward, one observation.images.<cam> per camera."""
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


def run_expert_episode(env, obs: dict[str, Any], act: Callable[[], np.ndarray]) -> tuple[list[Frame], bool]:
    """Step a freshly reset env (obs: its first observation) with act() until the episode ends.

    Frame t holds the observation before action t and action t as executed (after env.clip_action and, where the
    env runs the robot's safety limits, after the SafetyFilter: info['executed_action'])."""
    frames = []
    while True:
        action = env.clip_action(act())
        frame = {"observation.state": obs["state"], "action": action}
        frame.update({f"observation.images.{c}": img for c, img in obs["images"].items()})
        obs, reward, terminated, truncated, info = env.step(action)
        frame["action"] = np.asarray(info.get("executed_action", action), dtype=np.float32)  # after safety limits
        frame["next.reward"] = np.array([reward], dtype=np.float32)
        frames.append(frame)
        if terminated or truncated:
            return frames, bool(info["success"])


def record_expert_demos(report: DemoCounts, num_episodes: int, *, seed: int, max_attempts: int | None,
                        spec: PolicySpec, fps: int, repo_id: str, use_videos: bool,
                        attempt: Callable[[int], ExpertEpisode], on_kept: Callable[[int, ExpertEpisode], None],
                        close_envs: Callable[[], None], sidecar: Callable[[], dict[str, Any]],
                        log: Callable[[str], Any] = print) -> None:
    """Write successful attempts to a new LeRobotDataset at report.root, counting in report.

    attempt(seed): runs one expert episode (and logs why a failed one is dropped). on_kept(seed, episode): after
    the episode is saved, before report.kept counts it. close_envs(), then sidecar() (its dict is written to
    SIDECAR): once the dataset is finalized, also when recording is interrupted. Raises if fewer than
    num_episodes succeeded."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    out = report.root
    max_attempts = max_attempts or 2 * num_episodes
    ds = LeRobotDataset.create(repo_id, fps=fps, features=demo_features(spec, use_videos), root=out,
                               robot_type=spec.robot, use_videos=use_videos)
    start = time.perf_counter()
    try:
        while report.kept < num_episodes and report.attempted < max_attempts:
            episode_seed = seed + report.attempted
            report.attempted += 1
            episode = attempt(episode_seed)
            if not episode.success:
                continue
            for frame in episode.frames:
                ds.add_frame({**frame, "task": episode.instruction})
            ds.save_episode()
            on_kept(episode_seed, episode)
            report.kept += 1
    finally:
        ds.finalize()  # episodes already saved stay readable even if recording is interrupted
        close_envs()
        report.seconds = time.perf_counter() - start
        if (out / "meta").is_dir():  # only beside a dataset lerobot has laid out
            (out / SIDECAR).write_text(json.dumps(sidecar(), indent=1))
    log(f"kept {report.kept}/{report.attempted} expert episodes in {report.seconds:.1f} s "
        f"({report.seconds / max(report.attempted, 1):.2f} s/attempt) -> {out}")
    if report.kept < num_episodes:
        raise RuntimeError(f"only {report.kept} of {num_episodes} requested episodes succeeded in "
                           f"{report.attempted} attempts (the ones kept are saved in {out})")
