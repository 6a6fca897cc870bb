"""Expert demos written with lerobot's LeRobotDataset v3 writer, read back by lerobot and by
pirl_robot.data.demos (chunking, end padding, delta-action stats), and replayed in the simulator."""

import json

import numpy as np
import pytest
import torch

from pirl_robot.data.demos import DemoDataError, chunk_actions, compute_stats, load_demos, model_actions
from pirl_robot.transforms import PolicyTransforms
from sim.maniskill.config import TaskConfig
from sim.maniskill.demos import main as demos_cli
from sim.maniskill.demos import record_demos
from sim.maniskill.env import ManiSkillEnv, task_spec

pytestmark = [pytest.mark.sim, pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")]

H = 6


@pytest.fixture(scope="module")
def push_demos(tmp_path_factory):
    out = tmp_path_factory.mktemp("demos") / "push"
    demos_cli(["--task", "PushCube-v1", "--episodes", "3", "--out", str(out), "--seed", "20"])
    return out


def test_dataset_reads_back_with_lerobot(push_demos):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/push", root=push_demos)
    spec = task_spec(TaskConfig(task="PushCube-v1"))
    assert ds.meta.total_episodes == 3 and ds.fps == 20 and ds.meta.robot_type == "panda"
    assert ds.meta.features["observation.state"]["names"] == list(spec.state_names)
    assert ds.meta.features["action"]["names"] == list(spec.action_names)
    frame = ds[0]
    assert frame["observation.state"].shape == (35,) and frame["action"].shape == (8,)
    assert frame["task"] == spec.instruction
    side = json.loads((push_demos / "meta" / "pirl_sim.json").read_text())
    assert side["kept"] == 3 and [e["seed"] for e in side["episodes"]] == [20, 21, 22]


def test_load_demos_chunks_with_end_padding(push_demos):
    demos = load_demos(push_demos, chunk_size=H)
    lengths = np.bincount(demos.episode_index)
    assert demos.num_episodes == 3 and len(demos) == lengths.sum()
    assert demos.actions.shape == (len(demos), H, 8) and demos.is_pad.shape == (len(demos), H)
    assert demos.spec is not None and demos.spec.state_names == demos.state_names
    # The per-frame action is chunk position 0; chunk position k is frame t+k within the episode.
    first = demos.actions[:, 0]
    start = 0
    for n in lengths:
        ep = slice(start, start + n)
        np.testing.assert_array_equal(demos.actions[start + 2, 3], first[start + 5])
        last = start + n - 1  # last frame: one real step, then H-1 copies of the last action
        assert demos.is_pad[last].tolist() == [False] + [True] * (H - 1)
        np.testing.assert_array_equal(demos.actions[last], np.repeat(first[last][None], H, 0))
        assert demos.is_pad[start + n - 3].tolist() == [False] * 3 + [True] * (H - 3)
        assert not demos.is_pad[ep][: n - H + 1].any()
        start += n


def test_chunk_actions_pads_per_episode_not_across():
    acts = np.arange(5, dtype=np.float32)[:, None]
    chunks, pad = chunk_actions(acts, np.array([0, 0, 0, 1, 1]), np.array([0, 1, 2, 0, 1]), 3)
    assert chunks[..., 0].tolist() == [[0, 1, 2], [1, 2, 2], [2, 2, 2], [3, 4, 4], [4, 4, 4]]
    assert pad.tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 1], [0, 0, 1], [0, 1, 1]]


def test_stats_are_of_delta_actions_and_feed_the_policy_transforms(push_demos):
    demos = load_demos(push_demos, chunk_size=H)
    spec = demos.spec
    stats = compute_stats(demos, spec)
    real = ~demos.is_pad
    delta = demos.actions[..., :7] - demos.state[:, None, :7]  # arm: target - current joint position
    np.testing.assert_allclose(stats["actions"].mean[:7].numpy(), delta[real].mean(0), atol=1e-5)
    np.testing.assert_allclose(stats["actions"].mean[7].item(), demos.actions[..., 7][real].mean(), atol=1e-6)
    # Normalised model actions from the policy's own input transform have ~zero mean, unit std on real steps.
    tf = PolicyTransforms(spec, stats["state"], stats["actions"])
    out = tf.inputs(demos.batch(np.arange(len(demos))))["actions"][torch.from_numpy(real)]
    np.testing.assert_allclose(out[:, :7].mean(0).numpy(), 0, atol=1e-4)
    np.testing.assert_allclose(out[:, :7].std(0).numpy(), 1, atol=1e-3)
    assert torch.equal(model_actions(demos, spec)[..., 7], torch.from_numpy(demos.actions[..., 7]))


def test_state_std_floor_keeps_entries_the_demos_did_not_vary_visible(push_demos):
    demos = load_demos(push_demos, chunk_size=H)
    raw = compute_stats(demos, demos.spec, state_min_std=1e-3)["state"]
    floored = compute_stats(demos, demos.spec, state_min_std=0.05)["state"]
    np.testing.assert_array_equal(floored.std.numpy(), np.maximum(raw.std.numpy(), 0.05))
    assert (raw.std < 0.05).any() and (raw.std > 0.05).any()  # the floor changes some entries and keeps others
    # a run-time value 5 cm off a near-constant demo entry stays inside the clip, where the policy can read it
    names = demos.spec.state_names
    j = min((i for i, n in enumerate(names) if n.startswith("goal_pos")), key=lambda i: raw.std[i].item())
    assert raw.std[j] < 0.005  # the goal's height never changes in the demos
    state = torch.from_numpy(demos.state[:1].copy())
    state[0, j] += 0.05
    for stats, visible in ((raw, False), (floored, True)):
        tf = PolicyTransforms(demos.spec, stats, compute_stats(demos, demos.spec)["actions"])
        z = tf.inputs({"state": state})["state"][0, j].abs().item()
        assert (z < 10.0) == visible
    with pytest.raises(ValueError, match="state_min_std"):
        compute_stats(demos, demos.spec, state_min_std=0.0)


def test_recorded_actions_replay_to_success_in_the_simulator(push_demos):
    demos = load_demos(push_demos, chunk_size=1)
    side = json.loads((push_demos / "meta" / "pirl_sim.json").read_text())
    env = ManiSkillEnv(TaskConfig(task="PushCube-v1"))
    try:
        for ep in side["episodes"][:2]:
            rows = demos.episode_index == ep["episode_index"]
            obs, _ = env.reset(seed=ep["seed"])
            np.testing.assert_array_equal(obs["state"], demos.state[rows][0])
            for a in demos.actions[rows, 0]:
                obs, _, term, trunc, info = env.step(a)
            assert term and info["success"]
    finally:
        env.close()


def test_rgb_demos_store_camera_frames(tmp_path):
    cfg = TaskConfig(task="PickCube-v1", obs_mode="rgb", image_size=32)
    env = ManiSkillEnv(cfg)
    try:
        report = record_demos(cfg, 1, tmp_path / "pick", seed=3, env=env, log=lambda *_: None)
        assert report.kept == 1 and report.attempted == 1
        demos = load_demos(tmp_path / "pick", chunk_size=4, spec=task_spec(cfg))
        imgs = demos.images["base_camera"]
        assert imgs.shape == (len(demos), 32, 32, 3) and imgs.dtype == np.uint8
        obs, _ = env.reset(seed=3)
        np.testing.assert_array_equal(imgs[0], obs["images"]["base_camera"])  # PNG storage is lossless
        assert not np.array_equal(imgs[0], imgs[-1])  # the arm moved in view
    finally:
        env.close()
    batch = PolicyTransforms(demos.spec, None, None).inputs(demos.batch(np.arange(2)))
    assert batch["images.base_camera"].shape == (2, 3, 32, 32)


def test_bad_dataset_input_gives_clear_errors(push_demos, tmp_path):
    with pytest.raises(DemoDataError, match="no meta/info.json"):
        load_demos(tmp_path, chunk_size=4)
    wrong = task_spec(TaskConfig(task="PickCube-v1"))
    with pytest.raises(DemoDataError, match="do not match the policy spec"):
        load_demos(push_demos, chunk_size=4, spec=wrong)
    with pytest.raises(FileExistsError):
        record_demos(TaskConfig(), 1, push_demos)
    broken = tmp_path / "broken"
    (broken / "meta").mkdir(parents=True)
    (broken / "meta" / "info.json").write_text("{not json")
    with pytest.raises(DemoDataError, match="cannot read"):
        load_demos(broken, chunk_size=4)
