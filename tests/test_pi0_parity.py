"""Our step-wise chain through lerobot's pi0 / pi0.5 reproduces lerobot's own sampler, on tiny models (CPU).

Tolerance: 1e-6 absolute at the model level (the measured difference is exactly 0: same ops in the same order);
1e-4 through the full pipelines, where our affine Stats stand in for lerobot's normaliser (rounding only).
"""

import numpy as np
import pytest
import torch

from pirl_robot.flow import ChainConfig, chain_log_prob, sample_chain
from pirl_robot.models.factory import build_model
from pirl_robot.models.lerobot_io import stats_from_lerobot
from pirl_robot.models.tiny_vla import tiny_options
from pirl_robot.models.tokenizer import load_tokenizer, train_word_tokenizer
from pirl_robot.policy import Policy
from pirl_robot.spec import CameraSpec, PolicySpec
from pirl_robot.transforms import PolicyTransforms

TASKS = ["pick up the red cube", "push the cube to the goal", "stack the red cube"]
MODEL_TOL, PIPELINE_TOL = 1e-6, 1e-4


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return train_word_tokenizer(TASKS, tmp_path_factory.mktemp("tok"))


def make_spec(**kw):
    return PolicySpec(state_names=tuple(f"q{i}" for i in range(5)), action_names=("x", "y", "grip"),
                      cameras=(CameraSpec("base", 32, 32), CameraSpec("wrist", 24, 24)), chunk_size=4,
                      exec_horizon=4, instruction=TASKS[0], **kw)


def make_batch(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"state": torch.rand(b, 5, generator=g) * 2 - 1, "images.base": torch.rand(b, 3, 32, 32, generator=g),
            "images.wrist": torch.rand(b, 3, 24, 24, generator=g), "instruction": TASKS[:b]}


def lerobot_batch(model, batch):
    lang = model.tokenize(batch["instruction"], batch["state"])
    return {"observation.images.base": batch["images.base"], "observation.images.wrist": batch["images.wrist"],
            "observation.state": batch["state"], "observation.language.tokens": lang["lang_tokens"],
            "observation.language.attention_mask": lang["lang_mask"]}


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
@pytest.mark.parametrize("pad", [0, 4])
def test_ode_chain_matches_lerobot_sampler(kind, pad, tokenizer_dir):
    torch.manual_seed(1)
    spec = make_spec()
    model = build_model(kind, tiny_options(spec, tokenizer_dir, pad=pad), spec).eval()
    batch = make_batch()
    noise = torch.randn(3, 4, model.action_dim)
    ctx = model.encode(batch)
    ours = sample_chain(model, ctx, ChainConfig(num_steps=10, mode="ode"), noise=noise).actions

    theirs = model.policy.predict_action_chunk(lerobot_batch(model, batch), noise=noise.clone())  # K = 10
    assert theirs.shape == (3, 4, 3)
    assert (ours[..., :3] - theirs).abs().max() <= MODEL_TOL
    assert theirs.abs().max() > 0.1  # a real output, not a degenerate zero

    lr = lerobot_batch(model, batch)
    images, img_masks = model.policy._preprocess_images(lr)
    args = [images, img_masks, lr["observation.language.tokens"], lr["observation.language.attention_mask"]]
    if kind == "pi0":
        args.append(model.policy.prepare_state(lr))
    theirs4 = model.policy.model.sample_actions(*args, noise=noise.clone(), num_steps=4)  # padded dims included
    ours4 = sample_chain(model, ctx, ChainConfig(num_steps=4, mode="ode"), noise=noise).actions
    assert (ours4 - theirs4).abs().max() <= MODEL_TOL
    assert (ours4 - ours).abs().max() > 1e-3  # the step count matters, so the comparison can fail


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_sub_batch_context_and_per_sample_steps(kind, tokenizer_dir):
    """A context restricted to rows gives those rows' velocities, and a mixed chain's per-sample steps (each row at
    its own t) score as if every row were evaluated alone."""
    torch.manual_seed(2)
    spec = make_spec()
    model = build_model(kind, tiny_options(spec, tokenizer_dir, pad=2), spec).eval()
    batch = make_batch()
    ctx = model.encode(batch)
    x = torch.randn(3, 4, model.action_dim)
    t = torch.tensor([1.0, 0.5, 0.25])
    v_all, f_all = model.velocity(ctx, x, t)
    idx = torch.tensor([2, 0])
    v_sub, f_sub = model.velocity(ctx.select(idx), x[idx], t[idx])
    assert torch.allclose(v_sub, v_all[idx], atol=1e-6) and torch.allclose(f_sub, f_all[idx], atol=1e-6)
    assert not torch.allclose(v_all[0], v_all[2], atol=1e-3)

    cfg = ChainConfig(num_steps=4, mode="mixed")
    steps = torch.nn.functional.one_hot(torch.tensor([0, 2, 3]), 4).bool()  # each row noisy at its own step
    chain = sample_chain(model, ctx, cfg, generator=torch.Generator().manual_seed(3), stochastic=steps)
    joint = chain_log_prob(model, ctx, chain, cfg)["logp"]
    assert torch.allclose(joint, chain.logp, atol=1e-5)
    for i in range(3):
        row = torch.tensor([i])
        sub = type(chain)(xs=chain.xs[row], stochastic=chain.stochastic[row], velocities=chain.velocities[row],
                          logp=chain.logp[row], feats_mean=chain.feats_mean[row])
        alone = chain_log_prob(model, ctx.select(row), sub, cfg)["logp"]
        assert torch.allclose(alone, joint[i:i + 1], atol=1e-5)


def _lerobot_pipelines(kind, model, stats, monkeypatch, tokenizer_dir):
    """lerobot's own pre/post processors for this model; only the tokenizer comes from a local directory."""
    from lerobot.processor import tokenizer_processor

    class LocalTokenizer:  # the hub is unreachable here: hand lerobot's step the local tokenizer by its name
        @staticmethod
        def from_pretrained(name, *a, **k):
            assert name == "google/paligemma-3b-pt-224"
            return load_tokenizer(str(tokenizer_dir))

    monkeypatch.setattr(tokenizer_processor, "AutoTokenizer", LocalTokenizer)
    if kind == "pi0":
        from lerobot.policies.pi0.processor_pi0 import make_pi0_pre_post_processors as make
    else:
        from lerobot.policies.pi05.processor_pi05 import make_pi05_pre_post_processors as make
    return make(model.policy.config, dataset_stats=stats)


@pytest.mark.parametrize("kind,mode", [("pi0", "MEAN_STD"), ("pi05", "QUANTILES")])
def test_policy_infer_matches_lerobot_pipeline(kind, mode, tokenizer_dir, monkeypatch):
    """Raw observation -> robot actions: our Policy (stats converted from lerobot's, model-side tokenisation)
    against lerobot's preprocessor -> predict_action_chunk -> postprocessor, same weights and noise."""
    torch.manual_seed(4)
    spec = make_spec()
    model = build_model(kind, tiny_options(spec, tokenizer_dir, pad=3), spec).eval()
    g = torch.Generator().manual_seed(5)
    lo_s, lo_a = torch.randn(5, generator=g), torch.randn(3, generator=g)
    stats = {"observation.state": {"mean": lo_s, "std": torch.rand(5, generator=g) + 0.5, "q01": lo_s,
                                   "q99": lo_s + torch.rand(5, generator=g) + 1.0},
             "action": {"mean": lo_a, "std": torch.rand(3, generator=g) + 0.5, "q01": lo_a,
                        "q99": lo_a + torch.rand(3, generator=g) + 1.0}}
    ours = Policy(spec, model, PolicyTransforms(spec, stats_from_lerobot(mode, stats["observation.state"]),
                                                stats_from_lerobot(mode, stats["action"])), model_kind=kind)
    ours.sampler = ChainConfig(num_steps=10, mode="ode")
    pre, post = _lerobot_pipelines(kind, model, stats, monkeypatch, tokenizer_dir)

    state = (stats["observation.state"]["q01"] + torch.rand(5, generator=g)).numpy()
    base = (torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8)
    wrist = (torch.rand(24, 24, 3, generator=g) * 255).to(torch.uint8)
    noise = torch.randn(4, model.action_dim, generator=g)
    out = ours.infer({"state": state, "images": {"base": base.numpy(), "wrist": wrist.numpy()},
                      "instruction": TASKS[1]}, noise=noise.numpy())["actions"]

    raw = {"observation.state": torch.as_tensor(state), "task": TASKS[1],
           "observation.images.base": base.permute(2, 0, 1).float() / 255.0,
           "observation.images.wrist": wrist.permute(2, 0, 1).float() / 255.0}
    processed = pre(raw)
    theirs = post(model.policy.predict_action_chunk(processed, noise=noise[None].clone()))[0].numpy()
    assert out.shape == theirs.shape == (4, 3)
    assert np.abs(out - theirs).max() <= PIPELINE_TOL
    # the prompt really differs per instruction (tokenisation is on the path being compared)
    other = ours.infer({"state": state, "images": {"base": base.numpy(), "wrist": wrist.numpy()},
                        "instruction": TASKS[2]}, noise=noise.numpy())["actions"]
    assert np.abs(other - out).max() > 1e-4
