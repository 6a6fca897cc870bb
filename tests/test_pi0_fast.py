"""pi0 / pi0.5's fast path (static K/V buffers, SDPA, masks built once; models/pi0_fast.py) against lerobot's path.

Tolerances, measured on tiny models (CPU): fp32 chains agree to < 1e-6 (bound 1e-5), log-likelihoods to < 5e-6
(bound 5e-5: sums over the chunk's entries), gradients to < 3e-6 relative (bound 1e-4). Under bf16 autocast both
paths round differently: actions of O(3) agree to 3e-3 (bound 2e-2), the same size as lerobot's own bf16-vs-fp32
difference (5e-3). The CUDA-graph tests run where a GPU is present (the device machine) and skip elsewhere.
"""

import pytest
import torch

from pirl_robot.flow import ChainConfig, chain_log_prob, sample_chain
from pirl_robot.models.factory import build_model
from pirl_robot.models import pi0_fast
from pirl_robot.models.pi0_fast import FastContext, StaleContextError
from pirl_robot.models.tiny_vla import tiny_options
from pirl_robot.models.tokenizer import train_word_tokenizer
from pirl_robot.spec import CameraSpec, PolicySpec

TASKS = ["pick up the red cube", "push the cube to the goal", "stack the red cube"]
SPEC = PolicySpec(state_names=tuple(f"q{i}" for i in range(5)), action_names=("x", "y", "grip"),
                  cameras=(CameraSpec("base", 32, 32), CameraSpec("wrist", 24, 24)), chunk_size=4, exec_horizon=4,
                  instruction=TASKS[0])
CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return train_word_tokenizer(TASKS, tmp_path_factory.mktemp("tok"))


def make_batch(b, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    out = {"state": torch.rand(b, 5, generator=g) * 2 - 1, "images.base": torch.rand(b, 3, 32, 32, generator=g),
           "images.wrist": torch.rand(b, 3, 24, 24, generator=g)}
    return {**{k: v.to(device) for k, v in out.items()}, "instruction": [TASKS[i % 3] for i in range(b)]}


def model(kind, tokenizer_dir, **opts):
    torch.manual_seed(1)
    return build_model(kind, tiny_options(SPEC, tokenizer_dir, pad=2, **opts), SPEC)


def chain(m, fast, batch, cfg, seed=3):
    m.cfg.fast_path = "on" if fast else "off"
    return sample_chain(m, m.encode(batch), cfg, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
@pytest.mark.parametrize("mode", ["ode", "sde", "noise"])
@pytest.mark.parametrize("b", [1, 3])
def test_fast_chain_equals_lerobot_path(kind, mode, b, tokenizer_dir):
    m = model(kind, tokenizer_dir).eval()
    cfg = ChainConfig(num_steps=4, mode=mode)
    ref, fast = chain(m, False, make_batch(b), cfg), chain(m, True, make_batch(b), cfg)
    assert isinstance(m.encode(make_batch(b)), FastContext)
    assert ref.actions.abs().max() > 0.1  # a real output
    assert (fast.xs - ref.xs).abs().max() <= 1e-5
    assert (fast.velocities - ref.velocities).abs().max() <= 1e-5
    assert (fast.feats_mean - ref.feats_mean).abs().max() <= 1e-5
    if mode != "ode":
        assert (fast.logp - ref.logp).abs().max() <= 5e-5
    m.cfg.fast_path = "on"  # the prefix features (pi0.5's value input) agree too
    ctx_fast = m.encode(make_batch(b))
    m.cfg.fast_path = "off"
    assert (ctx_fast.prefix_features - m.encode(make_batch(b)).prefix_features).abs().max() <= 1e-5


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_fast_chain_bf16_close_to_lerobot_bf16(kind, tokenizer_dir):
    m = model(kind, tokenizer_dir, autocast_bf16=True).eval()
    cfg = ChainConfig(num_steps=4, mode="ode")
    ref, fast = chain(m, False, make_batch(3), cfg), chain(m, True, make_batch(3), cfg)
    assert (fast.actions - ref.actions).abs().max() <= 2e-2
    assert (fast.actions - ref.actions).abs().max() > 0  # bf16 really ran (the paths round differently)


@pytest.mark.parametrize("kind,mode,one_task",
                         [(k, m, False) for k in ("pi0", "pi05") for m in ("mixed", "noise", "sde")]
                         + [("pi0", "sde", True)])
def test_efficient_update_logp_and_gradients_equal(kind, mode, one_task, tokenizer_dir):
    """The update through the fast path (prefix rebuilt without an autograd graph, suffix K/V concatenated)
    scores stored chains and backpropagates exactly as lerobot's path does (one_task: pi0's mask-free path)."""
    m = model(kind, tokenizer_dir).train()
    cfg = ChainConfig(num_steps=3, mode=mode)
    batch = lambda: {**make_batch(3), **({"instruction": [TASKS[0]] * 3} if one_task else {})}  # noqa: E731
    with torch.no_grad():
        stored = chain(m, False, batch(), cfg)
    results = {}
    for fast in (False, True):
        m.cfg.fast_path = "on" if fast else "off"
        m.zero_grad()
        ctx = m.encode(batch())
        assert not fast or (ctx.suffix_mask is None) == one_task
        out = chain_log_prob(m, ctx, stored, cfg)
        (out["logp"].sum() + out["entropy"].sum() + m.value(ctx, out["feats_mean"]).sum()).backward()
        results[fast] = out["logp"].detach(), {n: p.grad.clone() for n, p in m.named_parameters()
                                               if p.grad is not None}
    (lp_ref, g_ref), (lp_fast, g_fast) = results[False], results[True]
    assert (lp_fast - lp_ref).abs().max() <= 5e-5
    assert g_ref.keys() == g_fast.keys() and len(g_ref) > 10
    assert not any(n.startswith("policy.model.paligemma_with_expert.paligemma.") for n in g_fast)  # frozen
    for n in g_ref:
        scale = g_ref[n].abs().max().clamp_min(1e-8)
        assert (g_fast[n] - g_ref[n]).abs().max() / scale <= 1e-4, n


@pytest.mark.parametrize("mode", ["ode", "sde"])
def test_mask_free_prefix_equals_lerobot_path(mode, tokenizer_dir):
    """One instruction for the whole batch: pi0 drops the padding columns and attends without masks (pi0's state
    token in its own call); the chain is lerobot's. A missing camera or mixed instructions keep the masks."""
    m = model("pi0", tokenizer_dir).eval()
    cfg = ChainConfig(num_steps=4, mode=mode)
    same = {**make_batch(3), "instruction": [TASKS[1]] * 3}
    ref, fast = chain(m, False, same, cfg), chain(m, True, same, cfg)
    ctx = m.encode(same)
    assert ctx.suffix_mask is None and ctx.prefix_pad_masks.all()
    m.cfg.fast_path = "off"
    assert ctx.prefix_len < m.encode(same).prefix_pad_masks.shape[1]  # padding dropped
    m.cfg.fast_path = "on"
    assert (fast.xs - ref.xs).abs().max() <= 1e-5 and (fast.feats_mean - ref.feats_mean).abs().max() <= 1e-5
    assert m.encode(make_batch(3)).suffix_mask is not None  # three instructions of different lengths
    images, img_masks, tokens, mask, _ = m._prefix_inputs(same)
    img_masks[1] = torch.tensor([True, False, True])  # a camera missing in one row
    t2, m2, free = pi0_fast.drop_padding(tokens, mask, img_masks)
    assert not free and t2.shape[1] == int(mask.sum(1).max())
    m05 = model("pi05", tokenizer_dir, fast_path="on").eval()  # pi0.5's prompt carries the state: its padding stays
    assert m05.encode({**same}).suffix_mask is not None


def test_fused_projections_equal_and_follow_the_weights(tokenizer_dir):
    """q/k/v and gate/up as one GEMM each (CUDA does this by itself; here it is switched on by hand): same chain;
    optimiser steps and load_state_dict reach the fused weight; replaced weights are not read stale."""
    m = model("pi0", tokenizer_dir, fast_path="on").eval()
    cfg, batch = ChainConfig(num_steps=3, mode="ode"), make_batch(3)
    noise = torch.randn(3, 4, m.action_dim)
    run = lambda: sample_chain(m, m.encode(batch), cfg, noise=noise).actions  # noqa: E731
    ref = run()
    inner = m.policy.model
    expert = inner.paligemma_with_expert.gemma_expert.model.layers[0]
    keys = set(m.state_dict())
    pi0_fast.fuse_projections(inner)
    fused = expert.self_attn.__dict__[pi0_fast.FUSED]
    assert expert.self_attn.q_proj.weight.data_ptr() == fused.data_ptr() and set(m.state_dict()) == keys
    assert (run() - ref).abs().max() <= 1e-5
    calls = []
    hook = expert.self_attn.k_proj.register_forward_hook(lambda *a: calls.append(1))
    run()
    assert not calls  # the fused GEMM ran, not k_proj's own
    with torch.no_grad():  # an in-place update (what an optimiser does) is seen through the fused weight
        expert.self_attn.q_proj.weight.mul_(1.5)
        expert.mlp.up_proj.weight.add_(0.01)
    moved = run()
    assert (moved - ref).abs().max() > 1e-3
    m.policy.model.paligemma_with_expert.gemma_expert.model.layers[0].self_attn.q_proj.weight.data = \
        expert.self_attn.q_proj.weight.detach().clone()  # a replaced weight breaks the view: not read stale
    assert (run() - moved).abs().max() <= 1e-5 and calls  # ran k_proj again, same numbers
    hook.remove()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    pi0_fast.fuse_projections(inner)  # fused again
    m.load_state_dict({k: torch.zeros_like(v) if k.endswith("mlp.up_proj.weight") else v for k, v in state.items()})
    assert expert.mlp.__dict__[pi0_fast.FUSED][expert.mlp.gate_proj.out_features:].abs().max() == 0


def test_fast_sub_batch_context(tokenizer_dir):
    m = model("pi0", tokenizer_dir, fast_path="on").eval()
    ctx = m.encode(make_batch(3))
    x, t = torch.randn(3, 4, m.action_dim), torch.tensor([1.0, 0.5, 0.25])
    v_all, f_all = m.velocity(ctx, x, t)
    idx = torch.tensor([2, 0])
    v_sub, f_sub = m.velocity(ctx.select(idx), x[idx], t[idx])
    assert torch.allclose(v_sub, v_all[idx], atol=1e-6) and torch.allclose(f_sub, f_all[idx], atol=1e-6)


def test_bf16_backbone_needs_frozen_backbone(tokenizer_dir):
    with pytest.raises(ValueError, match="train_expert_only"):
        model("pi0", tokenizer_dir, backbone_dtype="bfloat16", train_expert_only=False)
    with pytest.raises(ValueError, match="fast_path"):
        model("pi0", tokenizer_dir, fast_path="maybe")
    with pytest.raises(ValueError, match="autocast_bf16"):
        model("pi0", tokenizer_dir, backbone_dtype="bfloat16")
    with pytest.raises(ValueError, match="attention must be one of"):
        model("pi0", tokenizer_dir, attention="efficient")  # takes no mask with grouped-query heads: not offered
    with pytest.raises(ValueError, match="compile_mode must be one of"):
        model("pi0", tokenizer_dir, compile_mode="reduce-overhead")  # inductor's graphs would nest in ours
    m = model("pi0", tokenizer_dir, backbone_dtype="bfloat16", autocast_bf16=True, fast_path="on")
    ctx = m.encode(make_batch(2))
    assert sample_chain(m, ctx, ChainConfig(num_steps=2, mode="ode")).actions.isfinite().all()
    assert all(p.dtype == torch.bfloat16 for p in m.backbone_parameters())
    assert all(p.dtype == torch.float32 for p in m.expert_parameters())


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a GPU (run on the device machine)")
@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_cuda_graphs_equal_eager_and_refuse_stale_contexts(kind, tokenizer_dir):
    with torch.device("cuda"):
        m = model(kind, tokenizer_dir).eval()
    cfg = ChainConfig(num_steps=4, mode="ode")
    noise = {b: torch.randn(b, 4, m.action_dim, device="cuda") for b in (1, 3)}
    eager = {}
    m.cfg.cuda_graphs = False
    with torch.no_grad():
        for b in (1, 3):
            eager[b] = sample_chain(m, m.encode(make_batch(b, device="cuda")), cfg, noise=noise[b]).actions
        m.cfg.cuda_graphs = True
        for b in (1, 3, 1, 3):  # new batch sizes capture new graphs; old ones replay
            ctx = m.encode(make_batch(b, device="cuda"))
            assert ctx.graph is not None
            out = sample_chain(m, ctx, cfg, noise=noise[b]).actions
            assert (out - eager[b]).abs().max() <= 1e-4
        assert len(m._graphs.entries) == 2
        first = m.encode(make_batch(3, seed=1, device="cuda"))
        m.encode(make_batch(3, seed=2, device="cuda"))  # same signature: overwrites first's buffers
        with pytest.raises(StaleContextError):
            m.velocity(first, noise[3], torch.ones(3, device="cuda"))
        # a changed camera size is resized by lerobot's preprocessing before the graph: same answer as eager
        big = {**make_batch(1, device="cuda"),
               "images.base": torch.nn.functional.interpolate(make_batch(1, device="cuda")["images.base"], 64)}
        graphed = sample_chain(m, m.encode(big), cfg, noise=noise[1]).actions
        m.cfg.cuda_graphs = False
        assert (graphed - sample_chain(m, m.encode(big), cfg, noise=noise[1]).actions).abs().max() <= 1e-4


@pytest.mark.skipif(not CUDA, reason="the fused, mask-free graphs run on CUDA (run on the device machine)")
@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_fused_mask_free_graphs_equal_lerobot_path(kind, tokenizer_dir):
    """What a deploy node runs (fused projections, pi0's mask-free prefix at batch 1, CUDA graphs) against
    lerobot's own path, in fp32 (1e-4) and with bf16 inference weights (5e-2, as prepare_inference above)."""
    with torch.device("cuda"):
        m = model(kind, tokenizer_dir).eval()
    cfg = ChainConfig(num_steps=4, mode="ode")
    noise = torch.randn(1, 4, m.action_dim, device="cuda")
    batch = make_batch(1, device="cuda")
    with torch.no_grad():
        m.cfg.fast_path = "off"
        ref = sample_chain(m, m.encode(batch), cfg, noise=noise).actions
        m.cfg.fast_path = "on"
        ctx = m.encode(batch)
        assert ctx.graph is not None and (ctx.suffix_mask is None) == (kind == "pi0")
        layer = m.policy.model.paligemma_with_expert.gemma_expert.model.layers[0]
        assert pi0_fast.FUSED in layer.self_attn.__dict__
        assert (sample_chain(m, ctx, cfg, noise=noise).actions - ref).abs().max() <= 1e-4
        m.prepare_inference()
        fast = sample_chain(m, m.encode(batch), cfg, noise=noise).actions
    assert pi0_fast.FUSED in layer.self_attn.__dict__ and layer.self_attn.q_proj.weight.dtype == torch.bfloat16
    assert (fast - ref).abs().max() <= 5e-2


@pytest.mark.skipif(not CUDA, reason="SDPA kernel choice applies on CUDA (run on the device machine)")
@pytest.mark.parametrize("attention", ["cudnn", "math"])
def test_attention_kernels_agree(attention, tokenizer_dir):
    """Every selectable SDPA kernel gives the auto choice's actions (under bf16 autocast: cuDNN takes no fp32)."""
    with torch.device("cuda"):
        m = model("pi0", tokenizer_dir, fast_path="on", cuda_graphs=False, autocast_bf16=True).eval()
    noise = torch.randn(3, 4, m.action_dim, device="cuda")
    cfg = ChainConfig(num_steps=4, mode="ode")
    with torch.no_grad():
        ref = sample_chain(m, m.encode(make_batch(3, device="cuda")), cfg, noise=noise).actions
        m.cfg.attention = attention
        m.cfg.cuda_graphs = True
        out = sample_chain(m, m.encode(make_batch(3, device="cuda")), cfg, noise=noise).actions
    assert (out - ref).abs().max() <= 2e-2


@pytest.mark.skipif(not CUDA, reason="bf16 inference weights are switched on for CUDA only (run on the device machine)")
def test_prepare_inference_bf16_close_to_fp32(tokenizer_dir):
    with torch.device("cuda"):
        m = model("pi0", tokenizer_dir).eval()
    noise = torch.randn(3, 4, m.action_dim, device="cuda")
    cfg = ChainConfig(num_steps=4, mode="ode")
    with torch.no_grad():
        m.cfg.fast_path = "off"
        ref = sample_chain(m, m.encode(make_batch(3, device="cuda")), cfg, noise=noise).actions
        m.cfg.fast_path = "auto"
        m.prepare_inference()
        assert all(p.dtype == torch.bfloat16 for p in m.policy.model.paligemma_with_expert.parameters())
        fast = sample_chain(m, m.encode(make_batch(3, device="cuda")), cfg, noise=noise).actions
    assert m._graphs is not None and (fast - ref).abs().max() <= 5e-2


def test_prepare_inference_leaves_cpu_models_alone(tokenizer_dir):
    m = model("pi0", tokenizer_dir).eval()
    m.prepare_inference()
    assert all(p.dtype == torch.float32 for p in m.parameters()) and not m.cfg.autocast_bf16


def test_deploy_inference_worker_draws_noise_in_pi0s_padded_space(tokenizer_dir):
    """The deploy node's inference thread samples the chain's initial noise in the model's (padded) action space:
    a pi0 whose max_action_dim exceeds the spec's answers with the spec's actions (it used to fail on the shape)."""
    import queue

    import numpy as np

    from pirl_robot.deploy.inference import InferenceWorker
    from pirl_robot.policy import Policy
    from pirl_robot.transforms import PolicyTransforms, Stats

    m = model("pi0", tokenizer_dir).eval()
    ident = lambda n: Stats(mean=torch.zeros(n), std=torch.ones(n))  # noqa: E731
    policy = Policy(SPEC, m, PolicyTransforms(SPEC, ident(5), ident(3)), model_kind="pi0")
    assert policy.noise_shape == (4, 5)  # chunk 4, 3 actions padded by 2
    results = queue.Queue()
    worker = InferenceWorker(policy, results.put, seed=0)
    try:
        obs = {"state": np.zeros(5, np.float32), "images": {"base": np.zeros((32, 32, 3), np.uint8),
                                                            "wrist": np.zeros((24, 24, 3), np.uint8)}}
        worker.submit(obs, 0)
        r = results.get(timeout=60)
    finally:
        worker.close()
    assert r.error is None, r.error
    assert r.actions.shape == (4, 3) and r.noise.shape == (4, 5)
