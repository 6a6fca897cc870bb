"""ManiSkill env adapter: observation layout against the PolicySpec, seeding, action semantics, bad input.

Real ManiSkill3 envs on the CPU (SAPIEN + lavapipe Vulkan); a few steps each.
"""

import numpy as np
import pytest

from sim.maniskill.config import TaskConfig
from sim.maniskill.env import ManiSkillEnv, task_spec

pytestmark = [pytest.mark.sim, pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")]


@pytest.fixture(scope="module")
def push_env():
    env = ManiSkillEnv(TaskConfig(task="PushCube-v1", obs_mode="state", max_episode_steps=12))
    yield env
    env.close()


@pytest.fixture(scope="module")
def pick_rgb_env():
    env = ManiSkillEnv(TaskConfig(task="PickCube-v1", obs_mode="rgb", image_size=32))
    yield env
    env.close()


def test_state_obs_matches_spec_and_simulator_ground_truth(push_env):
    spec = task_spec(push_env.cfg)
    obs, _ = push_env.reset(seed=3)
    assert obs["state"].dtype == np.float32 and obs["state"].shape == (spec.state_dim,) == (35,)
    assert obs["images"] == {} and spec.cameras == ()
    named = dict(zip(spec.state_names, obs["state"]))
    priv = push_env.privileged()
    # qpos first, so the spec's action_state_index points arm action j at qpos j.
    assert spec.state_names[:9] == tuple(f"qpos.{n}" for n in push_env.unwrapped.agent.robot.active_joints_map)
    assert spec.action_state_index == (0, 1, 2, 3, 4, 5, 6, -1)
    assert spec.delta_action_mask == (True,) * 7 + (False,)
    np.testing.assert_allclose([named[f"qpos.panda_joint{j}"] for j in range(1, 8)], priv["qpos"][:7], atol=1e-6)
    np.testing.assert_allclose([named[f"obj_pose.{c}"] for c in "xyz"], priv["obj_pose"][:3], atol=1e-6)
    np.testing.assert_allclose([named[f"goal_pos.{c}"] for c in "xyz"], priv["goal_pos"], atol=1e-6)
    assert spec.control_hz == 20.0 and spec.action_type == "joint_pos"


def test_rgb_obs_has_camera_of_spec_size_and_proprio_state(pick_rgb_env):
    spec = task_spec(pick_rgb_env.cfg)
    obs, _ = pick_rgb_env.reset(seed=0)
    assert [c.name for c in spec.cameras] == ["base_camera"]
    img = obs["images"]["base_camera"]
    assert img.dtype == np.uint8 and img.shape == (32, 32, 3) and img.std() > 5  # a rendered scene, not blank
    assert obs["state"].shape == (spec.state_dim,) == (29,)
    assert "obj_pose.x" not in spec.state_names and "goal_pos.x" in spec.state_names  # goal is invisible


def test_same_seed_same_initial_state_other_seed_differs(push_env):
    a, _ = push_env.reset(seed=11)
    push_env.step(push_env.action_high * 0.5)
    b, _ = push_env.reset(seed=11)
    c, _ = push_env.reset(seed=12)
    np.testing.assert_array_equal(a["state"], b["state"])
    assert not np.allclose(a["state"], c["state"])


def test_arm_action_j_drives_state_entry_of_action_state_index(push_env):
    spec = task_spec(push_env.cfg)
    obs, _ = push_env.reset(seed=0)
    idx = np.array(spec.action_state_index[:7])
    target = obs["state"][idx] + np.array([0.15, -0.1, 0.1, 0.1, -0.1, 0.1, 0.2], dtype=np.float32)
    for _ in range(10):
        obs, *_ = push_env.step(np.r_[target, 1.0])
    np.testing.assert_allclose(obs["state"][idx], target, atol=0.03)


def test_episode_truncates_at_max_episode_steps(push_env):
    obs, _ = push_env.reset(seed=1)
    hold = np.r_[obs["state"][:7], 1.0]
    flags = [push_env.step(hold)[2:4] for _ in range(12)]
    assert flags[-1] == (False, True) and all(f == (False, False) for f in flags[:-1])


def test_bad_actions_are_refused_or_clipped(push_env):
    push_env.reset(seed=0)
    with pytest.raises(ValueError, match="non-finite"):
        push_env.step(np.full(8, np.nan))
    with pytest.raises(ValueError, match="shape"):
        push_env.step(np.zeros(7))
    wild = np.r_[np.full(7, 100.0), 5.0]
    np.testing.assert_array_equal(push_env.clip_action(wild), push_env.action_high)


def test_task_config_rejects_bad_values():
    with pytest.raises(ValueError, match="unsupported ManiSkill task"):
        TaskConfig(task="StackCube-v1")
    with pytest.raises(ValueError, match="pd_joint_pos"):
        TaskConfig(control_mode="pd_ee_delta_pos")
    with pytest.raises(ValueError, match=r"ManiSkill task config: unknown keys"):
        TaskConfig.from_dict({"task": "PushCube-v1", "obs": "rgb"})
    with pytest.raises(ValueError, match="render_backend"):
        TaskConfig(render_backend="pci:0")
