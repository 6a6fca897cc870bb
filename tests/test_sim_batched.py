"""BatchedManiSkillEnv on ManiSkill's CPU backend (num_envs=1: the GPU class's code, run where PhysX GPU cannot):
it reproduces the worker-process ChunkVectorEnv on the same seeds (states, rewards, early stops, auto-reset seeds,
episode metrics), keeps its results as torch tensors, refuses bad input, and is what env.sim_backend selects."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from sim.maniskill.batched import BatchedManiSkillEnv
from sim.maniskill.config import TaskConfig
from sim.maniskill.vector import ChunkVectorEnv

pytestmark = [pytest.mark.sim, pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")]

CFG = TaskConfig(task="PushCube-v1", obs_mode="state", max_episode_steps=18, chunk_size=4, exec_horizon=4)


@pytest.fixture(scope="module")
def pair():
    with BatchedManiSkillEnv(replace(CFG, sim_backend="physx_cpu"), num_envs=1, seed=3) as batched, \
            ChunkVectorEnv(CFG, num_envs=1, seed=3) as workers:
        yield batched, workers


def random_chunk(obs_state, rng, h=4):
    q = np.asarray(obs_state)[:, :7]
    return np.concatenate([q[:, None, :] + rng.normal(0, 0.08, (1, h, 7)), rng.uniform(-1, 1, (1, h, 1))],
                          -1).astype(np.float32)


def test_reproduces_the_worker_env_chunk_by_chunk_across_episodes(pair):
    batched, workers = pair
    ob, ow = batched.reset(seeds=[11]), workers.reset(seeds=[11])
    assert isinstance(ob["state"], torch.Tensor) and ob["state"].shape == (1, batched.spec.state_dim)
    np.testing.assert_array_equal(ob["state"].numpy(), ow["state"])
    batched.set_next_seeds([21])
    workers.set_next_seeds([21])
    rng, ended = np.random.default_rng(0), []
    for c in range(11):  # 18-step episodes in chunks of 4: ends at chunk 5 (seed 21 next), 10 (seed stream)
        a = random_chunk(ow["state"], rng)
        rb, rw = batched.step_chunk(torch.as_tensor(a)), workers.step_chunk(a)
        for field in ("reward", "step_rewards", "terminated", "truncated", "success", "steps"):
            np.testing.assert_array_equal(getattr(rb, field).numpy(), getattr(rw, field), err_msg=f"{field} {c}")
        np.testing.assert_array_equal(rb.obs["state"].numpy(), rw.obs["state"])
        np.testing.assert_array_equal(rb.final_obs["state"].numpy(), rw.final_obs["state"])
        assert [(e.env_index, e.seed, e.length, e.success, e.success_at_end) for e in rb.episodes] == \
            [(e.env_index, e.seed, e.length, e.success, e.success_at_end) for e in rw.episodes]
        np.testing.assert_allclose([e.episode_return for e in rb.episodes], [e.episode_return for e in rw.episodes],
                                   rtol=1e-6)
        ended += [(c, e.seed) for e in rb.episodes]
        ow = rw.obs
    assert ended == [(4, 11), (9, 21)]
    assert batched.seeds[0] == np.random.default_rng([3, 0]).integers(2**31 - 1)  # then the env's own seed stream


def test_success_ends_the_episode_mid_chunk_with_success_metrics(pair):
    from test_sim_vector import expert_actions

    batched, workers = pair
    actions = expert_actions(seed=5, max_steps=CFG.max_episode_steps)
    n = len(actions)
    plan = np.concatenate([actions, np.repeat(actions[-1:], 16 - n, 0)])[None]
    batched.reset(seeds=[5])
    workers.reset(seeds=[5])
    for c in range(4):
        rb, rw = batched.step_chunk(plan[:, 4 * c:4 * c + 4]), workers.step_chunk(plan[:, 4 * c:4 * c + 4])
        np.testing.assert_array_equal(rb.reward.numpy(), rw.reward)  # the success step pays the remaining steps
        if rb.episodes:
            break
    assert bool(rb.terminated[0]) and bool(rb.success[0]) and int(rb.steps[0]) == (n - 1) % 4 + 1
    (e,) = rb.episodes
    assert (e.seed, e.length, e.success, e.success_at_end) == (5, n, True, True)
    assert e.episode_return == pytest.approx(rw.episodes[0].episode_return, rel=1e-6)


def test_inactive_envs_report_no_change_and_bad_actions_are_refused(pair):
    batched, _ = pair
    obs = batched.reset(seeds=[5])
    a = random_chunk(obs["state"], np.random.default_rng(1))
    res = batched.step_chunk(a, active=[False])
    assert res.steps.tolist() == [0] and float(res.reward[0]) == 0.0 and not res.episodes
    assert torch.equal(res.obs["state"], obs["state"])
    with pytest.raises(ValueError, match="shape"):
        batched.step_chunk(a[:, :, :7])
    bad = a.copy()
    bad[0, 1, 2] = np.inf
    with pytest.raises(ValueError, match=r"non-finite actions for envs \[0\]"):
        batched.step_chunk(bad)
    with pytest.raises(ValueError, match="one entry per env"):
        batched.reset(seeds=[1, 2])


def test_reset_to_env_states_reproduces_every_observed_entry(pair):
    """The GPU path gives a GRPO group its leader's state through ManiSkill's reset_to_env_states; on one env
    the round trip of the current (mid-episode) state must leave the observation unchanged."""
    batched, _ = pair
    obs = batched.reset(seeds=[8])
    rng = np.random.default_rng(2)
    for _ in range(2):
        obs = batched.step_chunk(random_chunk(obs["state"], rng)).obs
    raw = batched.copy_states(torch.tensor([0]), torch.tensor([0]))
    after = batched._convert(raw)["state"]
    torch.testing.assert_close(after[:, :9], obs["state"][:, :9])  # joints
    torch.testing.assert_close(after[:, 18:], obs["state"][:, 18:], atol=1e-5, rtol=0)  # tcp, goal, cube pose


def test_cpu_backend_takes_one_env_and_the_registry_picks_the_class():
    from sim import factory

    with pytest.raises(ValueError, match="one env per process"):
        BatchedManiSkillEnv(replace(CFG, sim_backend="physx_cpu"), num_envs=2)
    with pytest.raises(ValueError, match="runs sim_backend in"):
        BatchedManiSkillEnv(CFG, num_envs=1)
    env_cfg = OmegaConf.create({"simulator": "maniskill", "name": "t", "num_envs": 1, "sim_backend": "physx_cpu",
                                "maniskill": {"task": "PushCube-v1", "max_episode_steps": 18}})
    assert factory.VECTOR_ENVS[("maniskill", "physx_cpu")] is factory.VECTOR_ENVS[("maniskill", "physx_cuda")]
    with factory.make_vector_env(env_cfg, seed=0) as env:
        assert isinstance(env, BatchedManiSkillEnv) and env.cfg.sim_backend == "physx_cpu"
    env_cfg.sim_backend = "vulkan"
    with pytest.raises(ValueError, match=r"env.sim_backend='vulkan' is not available for maniskill \(known: cpu, "
                                         r"physx_cpu, physx_cuda\)"):
        factory.make_vector_env(env_cfg)


def test_twin_camera_and_safety_limits_as_in_the_single_env(tmp_path):
    """The batched env runs the twin of the real robot like ManiSkillEnv: the calibrated camera (warped through
    its distortion on the device) and the robot's SafetyFilter per env, with the same executed motion."""
    from test_sim_twin import calibration

    from sim.maniskill.env import ManiSkillEnv

    cal = calibration().save(tmp_path / "base_camera.yaml")
    cfg = TaskConfig(task="PushCube-v1", obs_mode="rgb", image_size=48, max_episode_steps=18, chunk_size=4,
                     exec_horizon=4, camera_calibration=str(cal),
                     safety_config="ros_ws/src/pirl_robot/config/safety/panda_maniskill.yaml")
    single = ManiSkillEnv(cfg)
    try:
        with BatchedManiSkillEnv(replace(cfg, sim_backend="physx_cpu"), num_envs=1, seed=3) as batched:
            ob, (os_, _) = batched.reset(seeds=[5]), single.reset(seed=5)
            rng = np.random.default_rng(1)
            for c in range(3):
                a = random_chunk(os_["state"][None], rng)
                a[..., :7] += rng.normal(0, 0.3, a[..., :7].shape)  # big steps: the velocity limits bind
                rb = batched.step_chunk(torch.as_tensor(a.astype(np.float32)))
                for h in range(a.shape[1]):
                    os_, *_ = single.step(a[0, h])
                np.testing.assert_allclose(rb.obs["state"][0].numpy(), os_["state"], atol=1e-5)
                img_b, img_s = rb.obs["images"]["base_camera"][0].numpy(), os_["images"]["base_camera"]
                assert img_b.shape == img_s.shape == (48, 48, 3)
                diff = np.abs(img_b.astype(int) - img_s.astype(int))
                assert (diff <= 2).mean() > 0.99, diff.max()  # grid_sample vs cv2.remap rounding
                assert img_b.std() > 10  # a rendered scene, not a blank frame
            assert batched.limits.modified > 0 and batched.limits.modified == single.limits.modified
            assert batched.limits.causes == single.limits.causes
    finally:
        single.close()
