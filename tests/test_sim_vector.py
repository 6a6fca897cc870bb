"""ChunkVectorEnv on real ManiSkill CPU envs in worker processes: seeding, chunk stepping, early stop at the
episode end, auto-reset, per-episode stats, worker crash and shutdown."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sim.maniskill.config import TaskConfig
from sim.maniskill.env import ManiSkillEnv
from sim.maniskill.experts import make_expert
from sim.maniskill.vector import ChunkVectorEnv, WorkerError

pytestmark = [pytest.mark.sim, pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")]

CFG = TaskConfig(task="PushCube-v1", obs_mode="state", max_episode_steps=18, chunk_size=4, exec_horizon=4)


@pytest.fixture(scope="module")
def venv():
    # 3 envs over 2 worker processes: envs [0, 1] share a worker, env 2 has its own.
    with ChunkVectorEnv(CFG, num_envs=3, seed=0, num_workers=2) as v:
        assert not v.in_process and v._blocks == [[0, 1], [2]]
        yield v


def hold_actions(obs, h):
    """Chunk that holds the current arm joints, gripper open: (N, h, 8)."""
    q = obs["state"][:, :7]
    return np.concatenate([np.repeat(q[:, None], h, 1), np.ones((len(q), h, 1), np.float32)], -1)


def expert_actions(seed, max_steps=50):
    """Open-loop action sequence of a successful PushCube expert episode from `seed` (recorded in-process)."""
    env = ManiSkillEnv(TaskConfig(task="PushCube-v1", max_episode_steps=max_steps))
    env.reset(seed=seed)
    expert = make_expert("PushCube-v1")
    expert.reset(env.privileged())
    actions = []
    while True:
        a = env.clip_action(expert.act(env.privileged()))
        actions.append(a)
        _, _, term, trunc, _ = env.step(a)
        if term or trunc:
            env.close()
            assert term, "expert failed in-process"
            return np.stack(actions)


def test_same_seed_gives_identical_states_across_workers_and_runs(venv):
    obs = venv.reset(seeds=[42, 42, 42])
    assert obs["state"].shape == (3, venv.spec.state_dim) and obs["state"].dtype == np.float32
    for i in (1, 2):  # same worker and other worker
        np.testing.assert_array_equal(obs["state"][0], obs["state"][i])
    res = venv.step_chunk(hold_actions(obs, 4))
    for i in (1, 2):
        np.testing.assert_array_equal(res.obs["state"][0], res.obs["state"][i])
        assert res.reward[0] == res.reward[i]
    other = venv.reset(seeds=[42, 43, 44])
    np.testing.assert_array_equal(other["state"][0], obs["state"][0])
    assert not np.allclose(other["state"][0], other["state"][1])
    assert not np.allclose(other["state"][1], other["state"][2])


def test_chunks_stop_at_truncation_and_auto_reset_with_the_requested_seed(venv):
    obs = venv.reset(seeds=[1, 2, 3])
    venv.set_next_seeds([7, None, 7])
    steps, rewards = [], []
    for _ in range(5):  # 4 * 4 + 2 steps: the episode (18 steps) ends inside the fifth chunk
        res = venv.step_chunk(hold_actions(obs, 4))
        steps.append(res.steps.tolist())
        rewards.append(res.reward)
        obs = res.obs
    assert steps == [[4, 4, 4]] * 4 + [[2, 2, 2]]
    assert res.truncated.all() and not res.terminated.any() and res.done.all()
    assert (res.step_rewards[:, 2:] == 0).all() and np.allclose(res.step_rewards.sum(1), res.reward)
    # Stats of the finished episodes; their returns add up the chunk rewards.
    stats = sorted(res.episodes, key=lambda e: e.env_index)
    assert [(e.env_index, e.seed, e.length, e.success) for e in stats] == [(i, i + 1, 18, False) for i in range(3)]
    np.testing.assert_allclose([e.episode_return for e in stats], np.sum(rewards, 0), rtol=1e-5)
    # final_obs is the end of the old episode, obs the start of the new one, seeded as requested.
    assert not np.allclose(res.final_obs["state"], res.obs["state"])
    fresh = ManiSkillEnv(CFG)
    np.testing.assert_array_equal(res.obs["state"][0], fresh.reset(seed=7)[0]["state"])
    np.testing.assert_array_equal(res.obs["state"][2], res.obs["state"][0])
    assert not np.allclose(res.obs["state"][1], res.obs["state"][0])  # env 1 drew from its own seed stream
    fresh.close()


def test_success_terminates_mid_chunk_and_reports_success(venv):
    actions = expert_actions(seed=5, max_steps=CFG.max_episode_steps)
    n = len(actions)
    assert n <= 16 and n % 4, "pick a seed whose expert episode ends inside a chunk"
    venv.reset(seeds=[5, 5, 5])
    plan = np.concatenate([actions, np.repeat(actions[-1:], 16 - n, 0)])  # 16 steps, success after n
    active = np.array([True, False, True])  # env 1 must not move at all
    done_at, executed = None, 0
    for c in range(4):
        chunk = np.stack([plan[4 * c:4 * c + 4]] * 3)
        res = venv.step_chunk(chunk, active=active)
        assert res.steps[1] == 0 and res.reward[1] == 0
        assert res.steps[2] == res.steps[0] and res.reward[2] == res.reward[0]
        executed += res.steps[0]
        if res.done[0]:
            done_at = c
            break
    assert done_at == (n - 1) // 4 and executed == n
    assert res.terminated[0] and res.success[0] and not res.truncated[0]
    assert [(e.env_index, e.success, e.length) for e in res.episodes] == [(0, True, n), (2, True, n)]


def test_action_shape_and_nan_are_refused_before_reaching_workers(venv):
    obs = venv.reset()
    with pytest.raises(ValueError, match="shape"):
        venv.step_chunk(hold_actions(obs, 4)[:1])
    bad = hold_actions(obs, 4)
    bad[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match=r"non-finite actions for envs \[1\]"):
        venv.step_chunk(bad)
    with pytest.raises(ValueError, match="one entry per env"):
        venv.reset(seeds=[1])


def test_in_process_single_env_matches_a_worker():
    with ChunkVectorEnv(CFG, num_envs=1, seed=0) as one:
        assert one.in_process
        obs = one.reset(seeds=[42])
        res = one.step_chunk(hold_actions(obs, 4))
    with ChunkVectorEnv(CFG, num_envs=1, seed=0, in_process=False) as worker:
        obs_w = worker.reset(seeds=[42])
        res_w = worker.step_chunk(hold_actions(obs_w, 4))
        np.testing.assert_array_equal(obs["state"], obs_w["state"])
        np.testing.assert_array_equal(res.obs["state"], res_w.obs["state"])
        # A worker that dies is reported, not waited on forever.
        os.kill(worker._procs[0].pid, signal.SIGKILL)
        with pytest.raises(WorkerError, match=r"env worker 0 \(envs \[0\]\) died"):
            worker.step_chunk(hold_actions(obs_w, 4))
    assert not worker._procs[0].is_alive()


def test_workers_exit_when_the_parent_process_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, time\n"
        "from sim.maniskill.config import TaskConfig\n"
        "from sim.maniskill.vector import ChunkVectorEnv\n"
        "if __name__ == '__main__':\n"
        "    v = ChunkVectorEnv(TaskConfig(), num_envs=1, in_process=False)\n"
        "    print(v._procs[0].pid, flush=True)\n"
        "    time.sleep(120)\n")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        child = int(parent.stdout.readline())
        os.kill(child, 0)  # alive
        parent.kill()
        parent.wait()
        deadline = time.time() + 15
        while time.time() < deadline and _alive(child):
            time.sleep(0.2)
        assert not _alive(child)
    finally:
        parent.kill()


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_an_evaluation_episode_does_not_depend_on_the_batch_it_runs_in(venv):
    """Each evaluation episode's initial noise comes from its own seed: the same seeds score the same in batches of
    3 over two workers and one at a time in reverse order, so runs with different num_envs (or ranks) compare."""
    import torch

    from pirl_robot.evaluate import run_episodes
    from pirl_robot.models.factory import build_model
    from pirl_robot.policy import Policy
    from pirl_robot.transforms import PolicyTransforms, Stats
    from sim.maniskill.env import task_spec

    spec = task_spec(CFG)
    torch.manual_seed(0)
    model = build_model("flow_mlp", {"hidden": 32, "token_dim": 8, "obs_dim": 16}, spec).eval()
    unit = Stats(torch.zeros(spec.state_dim), torch.ones(spec.state_dim))
    policy = Policy(spec, model, PolicyTransforms(spec, unit, Stats(torch.zeros(spec.action_dim),
                                                                    torch.full((spec.action_dim,), 0.3))))
    seeds = [7, 8, 9, 10]
    batched = run_episodes(policy, venv, seeds, "", max_chunks=6)
    with ChunkVectorEnv(CFG, num_envs=1, seed=0) as one:
        single = sorted(run_episodes(policy, one, seeds[::-1], "", max_chunks=6), key=lambda e: e["seed"])
        other_noise = run_episodes(policy, one, seeds, "", max_chunks=6, noise_seed=1)
    assert [e["seed"] for e in batched] == seeds
    # Equal up to float rounding: a matmul over 3 rows and over 1 need not round alike.
    assert [(e["success"], e["length"]) for e in batched] == [(e["success"], e["length"]) for e in single]
    np.testing.assert_allclose([e["return"] for e in batched], [e["return"] for e in single], rtol=1e-5)
    moved = np.abs(np.subtract([e["return"] for e in other_noise], [e["return"] for e in batched]))
    assert moved.max() > 1e-3  # the noise does reach the actions
