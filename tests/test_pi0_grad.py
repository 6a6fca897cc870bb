"""The chain log-likelihood of tiny pi0 / pi0.5 backpropagates where RL needs it, and nowhere else."""

import pytest
import torch

from pirl_robot.flow import ChainConfig, chain_log_prob, sample_chain
from pirl_robot.models.factory import build_model
from pirl_robot.models.tiny_vla import tiny_options
from pirl_robot.models.tokenizer import train_word_tokenizer
from pirl_robot.spec import CameraSpec, PolicySpec

TASKS = ["pick up the red cube", "push the cube"]
SPEC = PolicySpec(state_names=tuple(f"q{i}" for i in range(4)), action_names=("x", "y", "grip"),
                  cameras=(CameraSpec("base", 32, 32),), chunk_size=4, exec_horizon=4, instruction=TASKS[0])


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return train_word_tokenizer(TASKS, tmp_path_factory.mktemp("tok"))


def batch(b=2):
    g = torch.Generator().manual_seed(0)
    return {"state": torch.rand(b, 4, generator=g) * 2 - 1, "images.base": torch.rand(b, 3, 32, 32, generator=g),
            "instruction": TASKS[:b]}


def grad_norm(params):
    return sum(float(p.grad.abs().sum()) for p in params if p.grad is not None)


def rl_loss(model, mode, seed=1):
    """PPO-like loss on a freshly encoded batch: chain log-likelihood plus the value estimate."""
    cfg = ChainConfig(num_steps=3, mode=mode)
    with torch.no_grad():
        chain = sample_chain(model, model.encode(batch()), cfg, generator=torch.Generator().manual_seed(seed))
    ctx = model.encode(batch())
    out = chain_log_prob(model, ctx, chain, cfg)
    return out["logp"].sum() + out["entropy"].sum() + model.value(ctx, out["feats_mean"]).sum()


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
@pytest.mark.parametrize("mode", ["mixed", "noise"])
def test_frozen_backbone_trains_expert_and_heads_only(kind, mode, tokenizer_dir):
    torch.manual_seed(0)
    model = build_model(kind, tiny_options(SPEC, tokenizer_dir, pad=2), SPEC).train()
    rl_loss(model, mode).backward()
    assert grad_norm(model.expert_parameters()) > 0
    assert grad_norm(model.policy.model.action_in_proj.parameters()) > 0
    assert grad_norm(model.value_head.parameters()) > 0
    assert all(p.grad is None and not p.requires_grad for p in model.backbone_parameters())
    # Flow-Noise learns its std; in mixed mode the std is the fixed Flow-SDE one
    assert (grad_norm(model.noise_net.parameters()) > 0) == (mode == "noise")
    trainable = {id(p) for p in model.policy_parameters()}
    assert not trainable & {id(p) for p in model.backbone_parameters()}
    assert not trainable & {id(p) for p in model.value_parameters()}
    assert {id(p) for p in model.value_parameters()} == {id(p) for p in model.value_head.parameters()}


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_unfrozen_backbone_gets_gradients(kind, tokenizer_dir):
    torch.manual_seed(0)
    model = build_model(kind, tiny_options(SPEC, tokenizer_dir, train_expert_only=False), SPEC).train()
    rl_loss(model, "noise").backward()
    pali = model.policy.model.paligemma_with_expert.paligemma.model
    assert grad_norm(pali.vision_tower.parameters()) > 0
    assert grad_norm(pali.language_model.layers.parameters()) > 0
    assert grad_norm(model.expert_parameters()) > 0


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_value_heads_placed_as_in_pirl(kind, tokenizer_dir):
    """pi0's critic reads the action-expert features it is given; pi0.5's reads the VLM prefix, not the features."""
    torch.manual_seed(0)
    model = build_model(kind, tiny_options(SPEC, tokenizer_dir), SPEC).eval()
    with torch.no_grad():
        ctx = model.encode(batch())
        feats = torch.randn(2, model.feat_dim)
        v1, v2 = model.value(ctx, feats), model.value(ctx, feats * 3)
    assert v1.shape == (2,)
    if kind == "pi0":
        assert not torch.allclose(v1, v2)
        with pytest.raises(ValueError, match="feats_mean"):
            model.value(ctx, None)
    else:
        assert torch.equal(v1, v2) and torch.equal(v1, model.value(ctx, None))


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_checkpointing_and_autocast_switches(kind, tokenizer_dir):
    """Activation checkpointing leaves the gradients unchanged; bf16 autocast keeps fp32 outputs close to fp32."""
    grads, recomputed = [], []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = build_model(kind, tiny_options(SPEC, tokenizer_dir, gradient_checkpointing=ckpt), SPEC).train()
        loss = rl_loss(model, "noise")
        calls = []
        model.policy.model.action_out_proj.register_forward_pre_hook(lambda *_: calls.append(1))
        loss.backward()
        recomputed.append(len(calls))  # expert passes re-run during backward
        grads.append(torch.cat([p.grad.flatten() for p in model.expert_parameters() if p.grad is not None]))
    assert recomputed == [0, 3]  # one recomputation per denoising step
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-5)

    torch.manual_seed(0)
    model = build_model(kind, tiny_options(SPEC, tokenizer_dir, autocast_bf16=True), SPEC).eval()
    x, t = torch.randn(2, 4, model.action_dim), torch.full((2,), 0.5)
    with torch.no_grad():
        v_bf16, f_bf16 = model.velocity(model.encode(batch()), x, t)
        model.cfg.autocast_bf16 = False
        v_fp32, _ = model.velocity(model.encode(batch()), x, t)
    assert v_bf16.dtype == f_bf16.dtype == torch.float32
    assert (v_bf16 - v_fp32).abs().max() < 0.1 * v_fp32.abs().max()
    assert not torch.equal(v_bf16, v_fp32)  # autocast really ran in bf16


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_flow_matching_loss_on_unpadded_actions(kind, tokenizer_dir):
    """Behaviour cloning with the spec's actions (fewer dims than the padded chain): padded with zeros, as lerobot
    pads its training targets; the loss reaches the action expert."""
    from pirl_robot.flow import flow_matching_loss

    torch.manual_seed(0)
    model = build_model(kind, tiny_options(SPEC, tokenizer_dir, pad=3), SPEC).train()
    actions = torch.randn(2, 4, SPEC.action_dim)
    loss = flow_matching_loss(model, model.encode(batch()), actions, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert model.action_dim == SPEC.action_dim + 3 and torch.isfinite(loss)
    assert grad_norm(model.expert_parameters()) > 0
    v, _ = model.velocity(model.encode(batch()), torch.randn(2, 4, SPEC.action_dim), torch.full((2,), 0.3))
    assert v.shape == (2, 4, SPEC.action_dim)
