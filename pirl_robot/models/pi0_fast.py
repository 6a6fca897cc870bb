"""The fast path of pi0 / pi0.5: the same computation as lerobot's prefix forward and `denoise_step`, arranged for speed.

    model = build_model("pi0", {"tokenizer": tok, "fast_path": "on"}, spec)   # "auto" (default): on CUDA only
    ctx = model.encode(batch)                     # -> FastContext (static K/V buffers, masks built once)
    v, feats = model.velocity(ctx, x_t, t)        # one denoising step; the sampler calls it K times

What differs from lerobot's path (`models/pi0.py` calls lerobot's own `embed_prefix` / `denoise_step`):
  * one K/V buffer per layer of length prefix + suffix, allocated at encode time; the prefix fills the front once
    and every denoising step writes its suffix keys/values into the tail in place, where lerobot clones the whole
    prefix cache at every step (with gradients on, the tail is concatenated instead, so autograd sees no writes);
  * attention masks and rope positions are built once per chunk from the pad masks, with no host-side lists (lerobot
    builds `torch.tensor(att_masks)` on every call, a host-to-device copy that CUDA graph capture refuses);
  * attention through `F.scaled_dot_product_attention` (cuDNN on Hopper; `PiVLAConfig.attention` picks another)
    instead of the eager matmul-softmax-matmul, with the masks cast to the compute dtype once, not per layer;
  * mask-free attention where no prefix token is padding (`mask_free`): pi0 drops the language columns that are
    padding in every row first (`drop_padding`; exact), so a batch of one instruction has none. Then the prefix
    and pi0.5's suffix attend without a mask (flash kernels, about half cuDNN's masked time at batch 1), and
    pi0's suffix in two unmasked calls: its state token over prefix + itself, its action tokens over everything;
  * without gradients, the q/k/v and the gate/up projections of every Gemma layer run as one GEMM each
    (`fuse_projections`: the modules' weights become views of one fused tensor, so optimiser steps and
    load_state_dict still reach it), which saves three small-GEMM launches per layer and step;
  * the cameras go through SigLIP as one batch (one set of kernels instead of one per camera).
Every layer, norm, projection, rope and embedding is lerobot's / transformers' own module (or its weights), called
in lerobot's order; only the orchestration is ours. tests/test_pi0_fast.py holds it to lerobot's path (fp32 and
bf16 tolerances there).

On CUDA without gradients `encode` and `velocity` replay CUDA graphs (pirl_robot.models.cuda_graphs), one pair per
input signature (batch size, image sizes, token length): a new signature is captured on first use (a second or
so; nothing is compiled, so nothing needs caching on disk); a context whose graph buffers were overwritten by a later
`encode` of the same signature is refused with StaleContextError instead of returning another observation's actions.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

# PiVLAConfig.attention -> the SDPA kernel of masked attention (None: torch's own choice, cuDNN on Hopper). Neither
# flash nor the memory-efficient kernel takes a mask with grouped-query heads (bench/bench_attention.py), so these
# remain; mask-free attention (no padded prefix token) gets flash first under every choice but "math".
ATTENTION_BACKENDS = {"auto": None, "cudnn": "CUDNN_ATTENTION", "math": "MATH"}
NEG = -2.3819763e38  # lerobot's OPENPI_ATTENTION_MASK_VALUE: masked logits stay finite (no NaN on all-pad rows)


class StaleContextError(RuntimeError):
    """A graph-backed context was overwritten by a later encode of the same input signature."""


@dataclass
class FastContext:
    """The per-chunk prefix in the fast layout: what every denoising step reads."""

    keys: list[torch.Tensor]  # per VLM layer (B, kv_heads, L + S, head_dim): prefix in [:L], suffix tail in [L:]
    values: list[torch.Tensor]
    suffix_mask: torch.Tensor | None  # (B, 1, S, L + S) additive mask of the suffix queries; None: mask-free
    suffix_positions: torch.Tensor  # (B, S) rope positions of the suffix tokens
    prefix_pad_masks: torch.Tensor  # (B, L) bool
    prefix_features: torch.Tensor  # (B, W_vlm) mean of the VLM prefix output over valid tokens
    state: torch.Tensor | None  # (B, max_state_dim) pi0's padded state; None for pi0.5
    graph: Any = None  # the CUDA-graph entry whose static buffers these are (None: ordinary tensors)
    generation: int = 0

    @property
    def prefix_len(self) -> int:
        return self.prefix_pad_masks.shape[1]

    def select(self, idx: torch.Tensor | slice) -> "FastContext":
        """The context of a sub-batch (e.g. a PPO minibatch); a copy, detached from any CUDA graph."""
        self.check_fresh()
        mask = None if self.suffix_mask is None else self.suffix_mask[idx]
        return FastContext([k[idx] for k in self.keys], [v[idx] for v in self.values], mask,
                           self.suffix_positions[idx], self.prefix_pad_masks[idx], self.prefix_features[idx],
                           None if self.state is None else self.state[idx])

    def detached_copy(self) -> "FastContext":
        """Own tensors (out of a graph's static buffers), so a later encode cannot change them under autograd."""
        self.check_fresh()
        clone = lambda t: None if t is None else t.clone()  # noqa: E731
        return FastContext([k.clone() for k in self.keys], [v.clone() for v in self.values],
                           clone(self.suffix_mask), clone(self.suffix_positions), clone(self.prefix_pad_masks),
                           clone(self.prefix_features), clone(self.state))

    def check_fresh(self) -> None:
        if self.graph is not None and self.graph.generation != self.generation:
            raise StaleContextError(
                "this context lives in CUDA-graph buffers that a later encode() of the same batch size overwrote; "
                "use the context before encoding the next batch, or take ctx.detached_copy() first")


# --- building blocks (each calls lerobot's / transformers' modules) ------------------------------------------------
def _rope():
    from transformers.models.gemma.modeling_gemma import apply_rotary_pos_emb
    return apply_rotary_pos_emb


def attention_backend(name: str) -> contextlib.AbstractContextManager:
    """A context in which the masked (Gemma) attention uses the named kernel (`ATTENTION_BACKENDS`); unmasked
    attention (SigLIP's, a mask-free prefix) keeps flash, which comes first where it applies, except under "math".
    "auto" changes nothing."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = ATTENTION_BACKENDS[name]
    if backend is None:
        return contextlib.nullcontext()
    if name == "math":  # the reference, everywhere (and what torch's FLOP counter can size with grouped-query heads)
        return sdpa_kernel([SDPBackend.MATH])
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, getattr(SDPBackend, backend)], set_priority=True)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
            scale: float) -> torch.Tensor:
    """q (B, H, S, D), k/v (B, KV, T, D) shared by H/KV query heads, additive mask (B, 1, S|1, T) or None (every
    query sees every key: flash kernels apply) -> (B, H, S, D)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask.to(q.dtype),
                                          scale=scale, enable_gqa=k.shape[1] != q.shape[1])


Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]


def masked(mask: torch.Tensor | None) -> Attend:
    return lambda q, k, v, scale: _attend(q, k, v, mask, scale)


def pi0_suffix_unmasked(prefix_len: int) -> Attend:
    """pi0's suffix without a mask: its state token (query 0) sees the prefix and itself, its action tokens see
    every key; two unmasked calls instead of one masked one."""
    def attend(q, k, v, scale):
        state = _attend(q[:, :, :1], k[:, :, :prefix_len + 1], v[:, :, :prefix_len + 1], None, scale)
        return torch.cat([state, _attend(q[:, :, 1:], k, v, None, scale)], 2)
    return attend


# --- fused projections ----------------------------------------------------------------------------------------
FUSED = "_pirl_fused_weight"  # attribute of a Gemma attention / MLP module: its projections' weights in one tensor
QKV, GATE_UP = ("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")


def _fusable(linears: list[torch.nn.Linear]) -> bool:
    from torch.distributed.tensor import DTensor

    return (all(m.bias is None and not isinstance(m.weight, DTensor) for m in linears)
            and len({(m.weight.dtype, m.weight.device, m.in_features) for m in linears}) == 1)


def _fused_intact(module, linears: list[torch.nn.Linear]) -> bool:
    """Each weight still the view at its offset of the module's fused tensor (a .to() or a new Parameter breaks
    that); pointer arithmetic only, so it is cheap enough to check at every eager call."""
    fused = getattr(module, FUSED, None)
    if fused is None:
        return False
    ptr, row = fused.data_ptr(), fused.stride(0) * fused.element_size()
    for m in linears:
        if m.weight.data_ptr() != ptr or m.weight.dtype != fused.dtype:
            return False
        ptr += m.weight.shape[0] * row
    return ptr == fused.data_ptr() + fused.shape[0] * row


def fuse_projections(inner) -> None:
    """Make the q/k/v and gate/up weights of every Gemma layer (VLM and expert) views of one fused tensor per
    module, so a no-grad forward does one GEMM where it did three (two). Memory is unchanged; the Parameter objects
    stay (optimisers and load_state_dict write into the fused tensor). Idempotent and cheap when nothing changed;
    a module whose weights were replaced since (a dtype or device cast) is fused again. Sharded (DTensor) or biased
    weights are left alone, and `_layer` then runs the modules one by one."""
    joint = inner.paligemma_with_expert
    for model in (joint.paligemma.model.language_model, joint.gemma_expert.model):
        for layer in model.layers:
            for module, names in ((layer.self_attn, QKV), (layer.mlp, GATE_UP)):
                linears = [getattr(module, n) for n in names]
                if _fused_intact(module, linears):
                    continue
                if not _fusable(linears):
                    module.__dict__.pop(FUSED, None)
                    continue
                fused = torch.cat([m.weight.detach() for m in linears], 0)
                offset = 0
                for m in linears:
                    rows = m.weight.shape[0]
                    m.weight.data = fused[offset:offset + rows]
                    offset += rows
                module.__dict__[FUSED] = fused  # a plain attribute: .to() must not copy it apart from the weights


def _projections(module, names: tuple[str, ...], x: torch.Tensor) -> list[torch.Tensor]:
    """The named projections of x: one GEMM over the fused weight when there is one and no gradient is needed."""
    fused = getattr(module, FUSED, None)
    linears = [getattr(module, n) for n in names]
    # Under torch.compile the check ran when the graphs were made (PiVLA fuses right before); it is host code.
    if fused is None or torch.is_grad_enabled() or not (torch.compiler.is_compiling()
                                                         or _fused_intact(module, linears)):
        return [m(x) for m in linears]
    return list(F.linear(x, fused).split([m.out_features for m in linears], -1))


def _mlp(mlp, x: torch.Tensor) -> torch.Tensor:
    """GemmaMLP's forward: down(act(gate(x)) * up(x))."""
    gate, up = _projections(mlp, GATE_UP, x)
    return mlp.down_proj(mlp.act_fn(gate) * up)


def _layer(layer, h: torch.Tensor, cond: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor,
           kv: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
           attend: Attend) -> torch.Tensor:
    """One PiGemma decoder layer (lerobot's order: norm, attention, gated residual, norm, MLP, gated residual).

    kv(k, v) stores this call's rotated keys/values and returns the full keys/values to attend over."""
    from lerobot.policies.pi_gemma import _gated_residual, layernorm_forward

    x, gate = layernorm_forward(layer.input_layernorm, h, cond)
    attn = layer.self_attn
    shape = (*x.shape[:-1], -1, attn.head_dim)
    q, k, v = (p.view(shape).transpose(1, 2) for p in _projections(attn, QKV, x))
    q, k = _rope()(q, k, cos, sin)
    k_all, v_all = kv(k, v)
    o = attend(q, k_all.to(q.dtype), v_all.to(q.dtype), attn.scaling)
    h = _gated_residual(h, attn.o_proj(o.transpose(1, 2).reshape(*x.shape[:-1], -1)), gate)
    x, gate = layernorm_forward(layer.post_attention_layernorm, h, cond)
    return _gated_residual(h, _mlp(layer.mlp, x), gate)


def _embed_images(joint, images: list[torch.Tensor]) -> list[torch.Tensor]:
    """SigLIP embeddings of every camera; cameras of one size go through the tower as one batch (one set of
    kernels instead of one per camera: at batch 1 the tower's cost is mostly kernel count). Per-image results are
    those of lerobot's per-camera loop: SigLIP treats every image of a batch on its own."""
    if len({tuple(i.shape) for i in images}) != 1:
        return [joint.embed_image(i) for i in images]
    return list(joint.embed_image(torch.cat(images, 0)).chunk(len(images), 0))


def _attention_dtype(h: torch.Tensor) -> torch.dtype:
    """The dtype q will have in the attention: autocast's when it is on, else the hidden states'."""
    dev = h.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else h.dtype


def _as_weights_dtype(h: torch.Tensor, layers) -> torch.Tensor:
    """PiGemmaModel's rule: hidden states go bf16 when the layers' weights are bf16."""
    return h.to(torch.bfloat16) if layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16 else h


# --- prefix -------------------------------------------------------------------------------------------------------
def suffix_len(inner, kind: str) -> int:
    return inner.config.chunk_size + (1 if kind == "pi0" else 0)


def drop_padding(tokens: torch.Tensor, lang_mask: torch.Tensor,
                 img_masks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Drop the language columns that are padding in every row, and say whether the prefix is then mask-free (no
    padding left, every camera present). Exact: a column padded in every row is never attended to, and the rope
    positions (cumsum of the pad mask) of the rest do not change. One host sync (the pad masks' summary).

    A new token length is a new CUDA-graph signature (a capture, or a compile with `compile: true`): pi0's prompt
    is the instruction alone, fixed for a task; pi0.5's carries the state, so PiVLA does not call this for it."""
    lang_mask = lang_mask.bool()
    cams = torch.stack([m.all() for m in img_masks]).all().view(1) if img_masks else lang_mask.new_ones(1)
    summary = torch.cat([lang_mask.any(0), lang_mask.all(0), cams]).cpu()
    n = lang_mask.shape[1]
    used, full, cams_ok = summary[:n], summary[n:2 * n], bool(summary[-1])
    if not bool(used.all()):
        keep = used.nonzero().squeeze(1).to(tokens.device)
        tokens, lang_mask = tokens.index_select(1, keep), lang_mask.index_select(1, keep)
        full = full[used]
    return tokens, lang_mask, cams_ok and bool(full.all())


def encode_prefix(inner, kind: str, images: list[torch.Tensor], img_masks: list[torch.Tensor],
                  tokens: torch.Tensor, lang_mask: torch.Tensor, state: torch.Tensor | None,
                  mask_free: bool = False) -> FastContext:
    """lerobot's embed_prefix + the VLM forward with a cache, into the fast layout. Images already preprocessed
    (lerobot's `_preprocess_images`); tokens / masks as lerobot's tokenizer step writes them. mask_free: the caller
    checked that no prefix token is padding (`drop_padding`); attention then runs without masks."""
    joint = inner.paligemma_with_expert
    lm = joint.paligemma.model.language_model
    embs, pads = [], []
    for e, m in zip(_embed_images(joint, images), img_masks, strict=True):
        embs.append(e)
        pads.append(m[:, None].expand(e.shape[0], e.shape[1]))
    embs.append(joint.embed_language_tokens(tokens))
    pads.append(lang_mask.bool())
    h = _as_weights_dtype(torch.cat(embs, 1), lm.layers)
    pad = torch.cat(pads, 1)
    b, n = pad.shape
    s = suffix_len(inner, kind)
    # Prefix tokens attend to every valid prefix token (all of lerobot's prefix att_masks are 0); masking by key
    # alone changes only the outputs at pad positions, which no valid token and no suffix query ever reads. The mask
    # is built and cast here, once for every layer.
    key_mask = None if mask_free else torch.where(pad, 0.0, NEG)[:, None, None, :].to(_attention_dtype(h))
    cos, sin = lm.rotary_emb(h, pad.long().cumsum(1) - 1)
    keys, values = [], []
    for layer in lm.layers:
        kv_heads, d = layer.self_attn.k_proj.out_features // layer.self_attn.head_dim, layer.self_attn.head_dim
        kbuf = h.new_empty(b, kv_heads, n + s, d)
        vbuf = h.new_empty(b, kv_heads, n + s, d)

        def store(k, v, kbuf=kbuf, vbuf=vbuf):
            kbuf[:, :, :n] = k
            vbuf[:, :, :n] = v
            return k, v

        h = _layer(layer, h, None, cos, sin, store, masked(key_mask))
        keys.append(kbuf)
        values.append(vbuf)
    out, _ = lm.norm(h)
    valid = pad.unsqueeze(-1).float()
    pooled = (out.float() * valid).sum(1) / valid.sum(1).clamp_min(1.0)
    positions = pad.sum(-1, keepdim=True) + torch.arange(s, device=pad.device)  # lerobot: offset + cumsum - 1
    suffix_mask = None if mask_free else _suffix_mask(pad, s, kind)
    return FastContext(keys, values, suffix_mask, positions, pad, pooled, state)


def _suffix_mask(prefix_pad: torch.Tensor, s: int, kind: str) -> torch.Tensor:
    """lerobot's denoise_step mask: suffix queries see the valid prefix; within the suffix, pi0's state token sees
    only itself (its att_mask block 1) and the action tokens see the state and each other; pi0.5's actions see all."""
    b = prefix_pad.shape[0]
    inner = torch.ones(s, s, dtype=torch.bool, device=prefix_pad.device)
    if kind == "pi0":
        inner[0, 1:] = False
    allowed = torch.cat([prefix_pad[:, None, :].expand(b, s, -1), inner.expand(b, s, s)], 2)
    return torch.where(allowed, 0.0, NEG)[:, None]


# --- suffix (one denoising step) ----------------------------------------------------------------------------------
def embed_suffix(inner, kind: str, state: torch.Tensor | None, x: torch.Tensor,
                 t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """lerobot's embed_suffix without its host-side mask list: (suffix embeddings, pi0.5's adaRMS condition)."""
    from lerobot.policies.common.vla_utils import create_sinusoidal_pos_embedding

    cfg = inner.config
    time = create_sinusoidal_pos_embedding(t, inner.action_in_proj.out_features, min_period=cfg.min_period,
                                           max_period=cfg.max_period, device=t.device).type(t.dtype)
    actions = inner.action_in_proj(x)
    if kind == "pi05":
        cond = F.silu(inner.time_mlp_out(F.silu(inner.time_mlp_in(time))))
        return actions, cond
    if inner.state_proj.weight.dtype == torch.float32:
        state = state.to(torch.float32)
    fused = torch.cat([actions, time[:, None, :].expand_as(actions)], 2)
    fused = inner.action_time_mlp_out(F.silu(inner.action_time_mlp_in(fused)))
    return torch.cat([inner.state_proj(state)[:, None, :], fused], 1), None


def denoise_step(inner, kind: str, ctx: FastContext, x: torch.Tensor,
                 t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Velocity (B, H, A) and the action expert's per-token output features (B, H, W) at (x_t, t)."""
    expert = inner.paligemma_with_expert.gemma_expert.model
    embs, cond = embed_suffix(inner, kind, ctx.state, x, t)
    h = _as_weights_dtype(embs, expert.layers)
    cos, sin = expert.rotary_emb(h, ctx.suffix_positions)
    n = ctx.prefix_len
    if ctx.suffix_mask is not None:
        attend = masked(ctx.suffix_mask.to(_attention_dtype(h)))  # cast once per step, not once per layer
    else:
        attend = pi0_suffix_unmasked(n) if kind == "pi0" else masked(None)
    in_place = not torch.is_grad_enabled()
    for i, layer in enumerate(expert.layers):
        kbuf, vbuf = ctx.keys[i], ctx.values[i]

        def kv(k, v, kbuf=kbuf, vbuf=vbuf):
            if in_place:  # rollout / deployment: the static buffer's tail, no copy of the prefix
                kbuf[:, :, n:] = k
                vbuf[:, :, n:] = v
                return kbuf, vbuf
            return torch.cat([kbuf[:, :, :n], k.to(kbuf.dtype)], 2), torch.cat([vbuf[:, :, :n], v.to(vbuf.dtype)], 2)

        h = _layer(layer, h, cond, cos, sin, kv, attend)
    out, _ = expert.norm(h, cond)
    feats = out[:, -inner.config.chunk_size:].to(torch.float32)
    return inner.action_out_proj(feats), feats
