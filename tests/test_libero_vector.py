"""The LIBERO ChunkVectorEnv on real envs in a worker process: GRPO-style equal seeds, chunk stepping with early
stop at the episode end, auto-reset to the next seed, the active mask, success reported through the vector
API (by replaying an expert episode), MP4 episode videos, bad actions and a killed worker."""

import os
import signal

import numpy as np
import pytest

from sim.libero.config import LiberoConfig
from sim.libero.env import LiberoEnv
from sim.libero.experts import PickPlaceExpert
from sim.libero.vector import ChunkVectorEnv, WorkerError

pytestmark = pytest.mark.sim

CFG = LiberoConfig(suite="libero_object", task_ids=(0,), max_episode_steps=140, chunk_size=5, exec_horizon=5)


@pytest.fixture(scope="module")
def expert_actions():
    """The expert's actions for the episode of seed 1 (standard init state 1), recorded in a single env."""
    env = LiberoEnv(CFG)
    try:
        env.reset(seed=1)
        expert = PickPlaceExpert.for_env(env)
        expert.reset(env)
        actions = []
        while True:
            actions.append(expert.act(env))
            _, _, terminated, truncated, info = env.step(actions[-1])
            if terminated or truncated:
                break
        assert info["success"]
        return np.array(actions)
    finally:
        env.close()


def test_chunks_early_stop_auto_reset_and_success(expert_actions):
    n_steps = len(expert_actions)
    with ChunkVectorEnv(CFG, num_envs=2, seed=0, num_workers=1) as venv:
        assert venv.spec.action_dim == 7 and venv._blocks == [[0, 1]]
        obs = venv.reset(seeds=[1, 51])  # 1 and 51 share init state 1: a GRPO group
        np.testing.assert_array_equal(obs["state"][0], obs["state"][1])
        obs = venv.reset(seeds=[1, 2])
        assert np.abs(obs["state"][0] - obs["state"][1]).max() > 1e-3
        venv.set_next_seeds([7, 8])
        # Env 0 replays the expert; env 1 idles (zeros, gripper open) and is paused for the first chunk.
        pad = np.zeros((-n_steps % 5, 7), np.float32)
        plan = np.concatenate([expert_actions, pad]).reshape(-1, 5, 7)
        idle = np.zeros((5, 7), np.float32)
        for k, chunk in enumerate(plan):
            res = venv.step_chunk(np.stack([chunk, idle]), active=[True, k > 0])
            if k == 0:
                assert res.steps.tolist() == [5, 0]
                np.testing.assert_array_equal(res.obs["state"][1], obs["state"][1])  # paused: unchanged
            if res.done[0]:
                break
        assert k == len(plan) - 1, "the replayed expert episode must end in its last chunk"
        assert res.success[0] and res.terminated[0] and not res.done[1]
        assert res.steps[0] == n_steps - 5 * k  # stopped at the success step, inside the chunk
        assert res.step_rewards[0, res.steps[0] - 1] == 1.0 and res.reward[0] == 1.0
        assert [(e.env_index, e.seed, e.success, e.length) for e in res.episodes] == [(0, 1, True, n_steps)]
        # final_obs is the success state; obs is already the next episode's start (seed 7 -> init state 7)
        assert np.abs(res.final_obs["state"][0] - res.obs["state"][0]).max() > 1e-3
        fresh = venv.reset(seeds=[7, 3])
        np.testing.assert_array_equal(res.obs["state"][0], fresh["state"][0])
        with pytest.raises(ValueError, match="non-finite"):
            venv.step_chunk(np.full((2, 5, 7), np.nan, np.float32))
        with pytest.raises(ValueError, match="shape"):
            venv.step_chunk(np.zeros((3, 5, 7), np.float32))
        os.kill(venv._procs[0].pid, signal.SIGKILL)
        with pytest.raises(WorkerError, match=r"env worker 0 \(envs \[0, 1\]\) died"):
            venv.step_chunk(np.zeros((2, 5, 7), np.float32))


def test_episode_videos(tmp_path):
    cfg = LiberoConfig(suite="libero_object", task_ids=(0,), max_episode_steps=6, settle_steps=0)
    with ChunkVectorEnv(cfg, num_envs=1, seed=0, video_dir=tmp_path, video_episodes=1, video_size=48) as venv:
        assert venv.in_process
        venv.reset(seeds=[52])
        res = venv.step_chunk(np.zeros((1, 6, 7), np.float32))
        assert res.truncated[0] and not res.success[0]
        venv.step_chunk(np.zeros((1, 6, 7), np.float32))  # a second episode: beyond the quota, not filmed
    videos = sorted(p.name for p in tmp_path.iterdir())
    assert videos == ["libero_object_task0_init2_seed52_fail.mp4"]
    import av

    with av.open(str(tmp_path / videos[0])) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 7 and frames[0].shape == (48, 48, 3) and frames[0].std() > 5  # a scene, not a blank
