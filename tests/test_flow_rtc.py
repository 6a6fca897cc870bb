"""Real-time chunking (flow/rtc.py) on real small models: the flow MLP (with delta actions) and tiny pi0 / pi0.5.

The unguided chain through lerobot's euler_integrate is our deployment ODE chain; with a prefix, the new chunk's
frozen entries (the first inference_delay) land near the committed actions, in robot units, where an unguided
chunk from the same noise does not.
"""

import numpy as np
import pytest
import torch

from deploy_utils import panda_spec, tiny_policy
from pirl_robot.flow import ChainConfig, sample_chain
from pirl_robot.flow.rtc import ChunkPrefix, guided_chain
from pirl_robot.models.factory import build_model
from pirl_robot.models.tiny_vla import tiny_options
from pirl_robot.models.tokenizer import train_word_tokenizer
from pirl_robot.policy import Policy
from pirl_robot.spec import CameraSpec, PolicySpec
from pirl_robot.transforms import PolicyTransforms, Stats

TASKS = ["push the cube to the goal", "pick up the red cube"]


def mlp_policy():
    spec = panda_spec(delta_action_mask=(True,) * 7 + (False,))  # joints relative to the state: the prefix must
    return tiny_policy(spec, seed=3)                               # go through the same transforms


def vla_policy(kind, tmp_path):
    spec = PolicySpec(state_names=tuple(f"q{i}" for i in range(5)), action_names=("x", "y", "grip"),
                      cameras=(CameraSpec("base", 32, 32),), chunk_size=6, exec_horizon=3, instruction=TASKS[0])
    torch.manual_seed(0)
    model = build_model(kind, tiny_options(spec, train_word_tokenizer(TASKS, tmp_path), pad=2), spec).eval()
    stats = PolicyTransforms(spec, Stats(torch.zeros(5), torch.ones(5)), Stats(torch.zeros(3), torch.ones(3)))
    return Policy(spec=spec, model=model, transforms=stats, sampler=ChainConfig(num_steps=10, mode="ode"),
                  model_kind=kind)


def observation(spec, seed=0):
    rng = np.random.default_rng(seed)
    obs = {"state": rng.uniform(-1, 1, spec.state_dim).astype(np.float32)}
    obs["images"] = {c.name: rng.integers(0, 255, (c.height, c.width, 3), dtype=np.uint8) for c in spec.cameras}
    return obs


def noise_for(policy, seed):
    return torch.randn(policy.spec.chunk_size, policy.model.action_dim, generator=torch.Generator().manual_seed(seed))


def test_unguided_chain_is_our_ode_chain():
    policy = mlp_policy()
    raw = policy.to_batch(observation(policy.spec))
    ctx = policy.model.encode(policy.prepare(raw))
    noise = noise_for(policy, 1).unsqueeze(0)
    ours = sample_chain(policy.model, ctx, ChainConfig(num_steps=4, mode="ode"), noise=noise).actions
    theirs = guided_chain(policy.model, ctx, noise, 4, None, 0, 0)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


def check_prefix_followed(policy, delay, horizon):
    spec = policy.spec
    obs = observation(spec)
    committed = policy.infer(observation(spec, seed=1), noise=noise_for(policy, 7))["actions"]  # another plan
    noise = noise_for(policy, 2)
    free = policy.infer(obs, noise=noise)["actions"]
    prefix = ChunkPrefix(committed[: spec.chunk_size - 1], inference_delay=delay, execution_horizon=horizon)
    guided = policy.infer(obs, noise=noise, prefix=prefix)["actions"]
    assert guided.shape == free.shape and np.isfinite(guided).all()
    err_free = np.abs(free[:delay] - committed[:delay]).mean()
    err_guided = np.abs(guided[:delay] - committed[:delay]).mean()
    assert err_guided < 0.35 * err_free, (err_guided, err_free)
    # Past the horizon nothing pulls the chunk towards the committed plan: it stays the policy's own.
    tail = slice(horizon, spec.chunk_size)
    assert np.abs(guided[tail] - committed[tail]).mean() > 2 * err_guided
    return guided


def test_prefix_is_followed_by_the_flow_mlp_with_delta_actions():
    policy = mlp_policy()
    g1 = check_prefix_followed(policy, delay=2, horizon=4)
    g2 = check_prefix_followed(policy, delay=2, horizon=4)
    np.testing.assert_array_equal(g1, g2)  # deterministic for a given noise (replayable)


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_prefix_is_followed_by_tiny_vlas(kind, tmp_path):
    check_prefix_followed(vla_policy(kind, tmp_path), delay=2, horizon=4)


def test_bad_prefixes_are_refused_with_the_reason():
    policy = mlp_policy()
    obs, a = observation(policy.spec), np.zeros((4, policy.spec.action_dim), np.float32)
    for prefix, words in [(ChunkPrefix(a[:, :3], 1, 2), "(P, 8)"), (ChunkPrefix(a * np.nan, 1, 2), "finite"),
                          (ChunkPrefix(a, 5, 6), "inference_delay"), (ChunkPrefix(a, 2, 9), "execution_horizon"),
                          (ChunkPrefix(np.zeros((9, 8), np.float32), 1, 2), "P <= 8")]:
        with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
            policy.infer(obs, prefix=prefix)
