"""Few-shot LIBERO data both ways: scripted-expert demos recorded as a LeRobotDataset v3 (and replayable from
their sidecar), and a user-provided LeRobotDataset written by lerobot with other camera names, sizes, names and
tasks, read through the trainer's factory."""

import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from pirl_robot.data.demos import DemoDataError, compute_stats
from sim import factory
from sim.libero.config import LiberoConfig
from sim.libero.env import LiberoEnv

pytestmark = pytest.mark.sim


def env_cfg(**libero):
    base = OmegaConf.load(Path(factory.__file__).parents[1] / "configs" / "env" / "libero_object.yaml")
    base.libero.update(libero)
    return base


def edited(cfg, key, value):
    out = OmegaConf.create(OmegaConf.to_container(cfg))
    OmegaConf.update(out, key, value, merge=False)
    return out


def test_expert_demos_are_recorded_reused_and_replayable(tmp_path, capsys):
    cfg = env_cfg(max_episode_steps=160)
    root = tmp_path / "demos"
    assert factory.ensure_demos(cfg, 1, root, seed=700, progress=False) == root
    stamp = (root / "meta" / "info.json").stat().st_mtime_ns
    factory.ensure_demos(cfg, 1, root, seed=700, progress=False)  # complete: reused, not recorded again
    assert (root / "meta" / "info.json").stat().st_mtime_ns == stamp
    spec = factory.env_spec(cfg)
    demos = factory.load_demos(root, spec, cfg)
    side = json.loads((root / "meta" / "pirl_sim.json").read_text())
    episode = side["episodes"][0]
    assert side["simulator"] == "libero" and demos.spec == spec and demos.num_episodes == 1
    assert episode["scene"] == "sampled" and episode["task_id"] == 0 and len(demos) == episode["length"]
    assert set(demos.tasks) == {spec.instruction} and demos.actions.shape[1:] == (5, 7)
    stats = compute_stats(demos, spec)
    assert stats["actions"].mean.shape == (7,) and (stats["actions"].std > 0).all()
    # Replaying the recorded actions from the recorded (task, seed, scene) reproduces the successful episode.
    env = LiberoEnv(LiberoConfig.from_dict(side["task_config"]), episode["task_id"])
    try:
        obs, _ = env.reset(seed=episode["seed"], scene=episode["scene"])
        np.testing.assert_allclose(obs["state"], demos.state[0], atol=1e-6)
        for t in range(episode["length"]):
            _, _, terminated, _, info = env.step(demos.actions[t, 0])
        assert info["success"] and terminated
    finally:
        env.close()
    # Demos of another task are never mistaken for these: that setup gets its own directory next to them.
    other = edited(cfg, "libero.task_ids", [2])
    other_root = factory.ensure_demos(other, 1, root, seed=700, progress=False)
    assert other_root != root and other_root.name.startswith("demos_")
    assert json.loads((other_root / "meta" / "pirl_sim.json").read_text())["task_config"]["task_ids"] == [2]
    assert (root / "meta" / "info.json").stat().st_mtime_ns == stamp
    # A LeRobotDataset that pirl did not record is never overwritten by a recording.
    (root / "meta" / "pirl_sim.json").unlink()
    with pytest.raises(FileExistsError, match="did not record"):
        factory.ensure_demos(cfg, 1, root, seed=700, progress=False)


@pytest.fixture(scope="module")
def user_dataset(tmp_path_factory):
    """A LIBERO dataset as lerobot's ports lay it out: cameras `image` / `wrist_image` at 40 px, an 8-D state and
    a 7-D action with their own names, two episodes of two different instructions. Frames from a real env."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = tmp_path_factory.mktemp("user") / "libero_user"
    env = LiberoEnv(LiberoConfig(suite="libero_object", task_ids=(0,), obs_mode="rgb", image_size=40,
                                 settle_steps=0))
    feats = {"observation.state": {"dtype": "float32", "shape": (8,), "names": [f"s{i}" for i in range(8)]},
             "action": {"dtype": "float32", "shape": (7,), "names": [f"a{i}" for i in range(7)]},
             "observation.images.image": {"dtype": "image", "shape": (40, 40, 3), "names": ["h", "w", "c"]},
             "observation.images.wrist_image": {"dtype": "image", "shape": (40, 40, 3), "names": ["h", "w", "c"]}}
    ds = LeRobotDataset.create("user/libero", fps=20, features=feats, root=root, use_videos=False)
    try:
        for episode, task in enumerate([env.instruction, "pick up the milk and place it in the basket"]):
            obs, _ = env.reset(seed=episode)
            for _ in range(3):
                action = np.array([0.3, 0, 0, 0, 0, 0, -1], np.float32)
                ds.add_frame({"observation.state": obs["state"], "action": action,
                              "observation.images.image": obs["images"]["agentview"],
                              "observation.images.wrist_image": obs["images"]["wrist"], "task": task})
                obs = env.step(action)[0]
            ds.save_episode()
    finally:
        ds.finalize()
        env.close()
    return root


def test_user_dataset_is_mapped_to_the_spec(user_dataset):
    cfg = env_cfg(obs_mode="rgb", image_size=32)
    cfg.dataset = {"root": str(user_dataset), "cameras": {"agentview": "image", "wrist": "wrist_image"},
                   "match_names": False, "filter_tasks": True}
    assert factory.ensure_demos(cfg, 8, user_dataset, seed=0, progress=False) == user_dataset  # nothing recorded
    spec = factory.env_spec(cfg)
    demos = factory.load_demos(user_dataset, spec, cfg)
    assert demos.num_episodes == 1 and len(demos) == 3  # the milk episode is another task
    assert demos.images["agentview"].shape == (3, 32, 32, 3) and demos.images["wrist"].dtype == np.uint8
    assert demos.state_names == spec.state_names and demos.actions.shape == (3, 5, 7)
    assert demos.images["agentview"].std() > 5  # resized frames of a scene, not a blank

    with pytest.raises(DemoDataError, match="state names"):
        factory.load_demos(user_dataset, spec, edited(cfg, "dataset.match_names", True))
    with pytest.raises(DemoDataError, match="camera 'agentview'"):
        factory.load_demos(user_dataset, spec, edited(cfg, "dataset.cameras", {"wrist": "wrist_image"}))
    other_task = edited(cfg, "libero.task_ids", [3])
    with pytest.raises(DemoDataError, match="no episode has the instruction"):
        factory.load_demos(user_dataset, factory.env_spec(other_task), other_task)
