"""pi0 and pi0.5 (lerobot 0.6.1, stock transformers) as RL-ready flow policies behind FlowPolicyModel.

    model = build_model("pi0", {"tokenizer": "/path/to/tokenizer"}, spec)   # or "pi05"; random weights
    model = load_lerobot_pretrained("/path/to/lerobot/pi0_dir", spec)        # pirl_robot.models.lerobot_io

How the RL hooks map onto lerobot's own code (nothing of it is copied, every step calls into it):
  encode(batch)     lerobot's image preprocessing, `embed_prefix` and the joint model's forward with use_cache=True:
                    the prefix (images + language) key/value cache, computed once per chunk.
  velocity(ctx,x,t) lerobot's `denoise_step` (it clones the cache per call, so one cache serves every step). Same
                    time convention as ours (t = 1 noise, x_{t-d} = x_t - d * v), so its output is our velocity.
                    The action expert's per-token output features are read by a forward pre-hook on
                    `action_out_proj`: the exact tensor the action projection sees, with its autograd graph.
  noise_std         Flow-Noise: NoiseNet on those per-token features.
  value             pi0: MLP on the expert features (mean over tokens and denoising steps, the `feats` argument);
                    pi0.5: MLP on the mean of the VLM prefix output over valid tokens (captured in encode).

Batch keys (after the Policy's transforms): "state" (B, S) normalised, "images.<cam>" (B, 3, H, W) float in [0, 1],
and either "instruction" (a str or B strs; default spec.instruction) or pre-tokenised "lang_tokens" (B, L) long
with "lang_mask" (B, L) bool from `model.tokenize(instructions, normalised_state)`. Rollout buffers that stack
tensors should store the tokens (pi0.5's depend on the state, so tokenise per observation).

Normalisation and tokenisation: the Policy owns the statistics (PolicyTransforms normalise the state and
unnormalise the actions; lerobot's MEAN_STD, QUANTILES and MIN_MAX modes are all affine, so
lerobot_io.stats_from_lerobot converts them exactly). The model owns tokenisation: it runs lerobot's own processor
steps on the instruction (pi0: newline + tokenizer; pi0.5: the prompt "Task: ..., State: <256-bin state>;
Action: " + tokenizer). pi0.5 discretises the *normalised* state over [-1, 1], so its state stats must map the
state's range into [-1, 1] (quantile stats do; mean/std stats saturate beyond one std).

Action padding: lerobot pads actions to max_action_dim and samples noise in every padded dim, which feeds back into
the real dims. The chain therefore lives in the padded space (model.action_dim = max_action_dim; every padded dim is
a latent variable of the chain and its likelihood); the Policy keeps the first spec.action_dim entries.
`velocity` also accepts x_t with fewer dims (zero-padded), for behaviour cloning on unpadded actions.

GPU switches: `autocast_bf16` runs encode/velocity under bf16 autocast with fp32 master weights (RL step sizes of
~5e-6 vanish in bf16 weights); `dtype: bfloat16` is lerobot's own bf16 parameter cast (inference memory).
`gradient_checkpointing` recomputes each denoising step (and SigLIP's image embedding) in backward; the prefix is
not checkpointed per layer: transformers' layer checkpointing drops the KV cache, so it is never switched on.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from pirl_robot.models import pi0_fast
from pirl_robot.models.base import FlowPolicyModel, NoiseNet
from pirl_robot.models.pi0_fast import FastContext
from pirl_robot.models.factory import register
from pirl_robot.models.tokenizer import PALIGEMMA_TOKENIZER, load_tokenizer
from pirl_robot.spec import PolicySpec

KINDS = ("pi0", "pi05")
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
TINY_PREFIX = "pirl_tiny"  # variant names of pirl_robot.models.tiny_vla (tests and debug runs only)


@dataclass
class PiVLAConfig:
    kind: str = "pi0"
    paligemma_variant: str = "gemma_2b"
    action_expert_variant: str = "gemma_300m"
    max_state_dim: int = 32
    max_action_dim: int = 32
    image_resolution: int = 224
    tokenizer: str = PALIGEMMA_TOKENIZER  # a local directory, or a repo id resolved in the local HF cache
    tokenizer_max_length: int = 0  # 0: lerobot's default (pi0 48, pi0.5 200)
    dtype: str = "float32"  # lerobot's parameter precision
    autocast_bf16: bool = False
    gradient_checkpointing: bool = False
    train_expert_only: bool = True  # freeze the PaliGemma backbone (RL trains the action expert and the heads)
    noise_net: bool = True
    noise_hidden: int = 128
    noise_std_min: float = 0.08
    noise_std_max: float = 0.16
    value_head: bool = True
    value_hidden: int = 512
    critic_shares_features: bool = False  # False: the value loss does not shape the actor's features
    # Fast path (models/pi0_fast.py): static K/V buffers, SDPA, masks built once per chunk. "auto": on CUDA only;
    # "off": lerobot's own embed_prefix / denoise_step (the reference, and what CPU runs use).
    fast_path: str = "auto"
    cuda_graphs: bool = True  # fast path on CUDA without gradients: replay captured graphs (models/cuda_graphs.py)
    compile: bool = False  # torch.compile the graphed prefix and step first (minutes once per machine; disk cache)
    # torch.compile's mode: "default", or "max-autotune-no-cudagraphs" (also times GEMM tiles; longer first
    # compile). The CUDA graphs are ours (models/cuda_graphs.py), so inductor's own cudagraph modes are not offered.
    compile_mode: str = "default"
    # Precision of the frozen backbone (train_expert_only): it has no optimiser, so it needs no fp32 master copy;
    # "bfloat16" halves its memory and its read traffic in every prefix encode.
    backbone_dtype: str = "float32"
    # The fast path's SDPA kernel on CUDA: "auto" lets torch pick (cuDNN on Hopper), or force cudnn | math (flash
    # and memory-efficient take no mask with grouped-query heads). bench/bench_vla.py --attention times them.
    attention: str = "auto"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"PiVLAConfig.kind must be one of {KINDS}, got {self.kind!r}")
        if self.fast_path not in ("auto", "on", "off"):
            raise ValueError(f"PiVLAConfig.fast_path must be auto, on or off, got {self.fast_path!r}")
        if self.backbone_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"PiVLAConfig.backbone_dtype must be float32 or bfloat16, got {self.backbone_dtype!r}")
        if self.backbone_dtype == "bfloat16" and not self.train_expert_only:
            raise ValueError("backbone_dtype=bfloat16 needs train_expert_only (a trained backbone keeps fp32 masters)")
        if self.backbone_dtype == "bfloat16" and not self.autocast_bf16:
            raise ValueError("backbone_dtype=bfloat16 runs under autocast_bf16 (the fp32 expert meets bf16 features)")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"PiVLAConfig.compile_mode must be one of {COMPILE_MODES}, got {self.compile_mode!r}")
        if self.attention not in pi0_fast.ATTENTION_BACKENDS:
            raise ValueError(f"PiVLAConfig.attention must be one of {sorted(pi0_fast.ATTENTION_BACKENDS)}, "
                             f"got {self.attention!r}")
        for name in ("max_state_dim", "max_action_dim", "image_resolution", "noise_hidden", "value_hidden"):
            if getattr(self, name) <= 0:
                raise ValueError(f"PiVLAConfig.{name} must be positive, got {getattr(self, name)}")

    @property
    def tiny(self) -> bool:
        return any(v.startswith(TINY_PREFIX) for v in (self.paligemma_variant, self.action_expert_variant))


@dataclass
class VLAContext:
    """The per-chunk prefix of a batch: what every denoising step reads."""

    cache: Any  # transformers DynamicCache: the prefix's keys and values, one entry per VLM layer
    prefix_pad_masks: torch.Tensor  # (B, L) bool: valid prefix tokens
    prefix_features: torch.Tensor  # (B, W_vlm): mean of the VLM prefix output over valid tokens
    state: torch.Tensor | None  # (B, max_state_dim): pi0's padded state token input; None for pi0.5

    def select(self, idx: torch.Tensor | slice) -> "VLAContext":
        """The context of a sub-batch (e.g. a PPO minibatch of a rollout's contexts)."""
        from transformers import DynamicCache

        cache = DynamicCache(tuple((k[idx], v[idx], sw) for k, v, sw in self.cache))
        return VLAContext(cache, self.prefix_pad_masks[idx], self.prefix_features[idx],
                          None if self.state is None else self.state[idx])


def lerobot_policy_class(kind: str):
    if kind == "pi0":
        from lerobot.policies.pi0.configuration_pi0 import PI0Config
        from lerobot.policies.pi0.modeling_pi0 import PI0Policy
        return PI0Config, PI0Policy
    from lerobot.policies.pi05.configuration_pi05 import PI05Config
    from lerobot.policies.pi05.modeling_pi05 import PI05Policy
    return PI05Config, PI05Policy


def build_context(cfg: PiVLAConfig):
    """Context in which lerobot may build this config: the tiny width table for test variants, nothing otherwise."""
    if cfg.tiny:
        from pirl_robot.models.tiny_vla import tiny_variants

        return tiny_variants()
    return contextlib.nullcontext()


def lerobot_config(cfg: PiVLAConfig, spec: PolicySpec, device: str | torch.device | None = None):
    """lerobot's PI0Config / PI05Config for our config and spec (call inside `build_context(cfg)`)."""
    from lerobot.configs import FeatureType, PolicyFeature

    if not spec.cameras:
        raise ValueError(f"{cfg.kind} needs at least one camera in the policy spec")
    if cfg.kind == "pi0" and spec.state_dim > cfg.max_state_dim:
        raise ValueError(f"spec has {spec.state_dim} state entries, more than max_state_dim={cfg.max_state_dim}")
    if spec.action_dim > cfg.max_action_dim:
        raise ValueError(f"spec has {spec.action_dim} action entries, more than max_action_dim={cfg.max_action_dim}")
    inputs = {f"observation.images.{c.name}": PolicyFeature(FeatureType.VISUAL, (3, c.height, c.width))
              for c in spec.cameras}
    inputs["observation.state"] = PolicyFeature(FeatureType.STATE, (spec.state_dim,))
    outputs = {"action": PolicyFeature(FeatureType.ACTION, (spec.action_dim,))}
    config_cls, _ = lerobot_policy_class(cfg.kind)
    extra = {"tokenizer_max_length": cfg.tokenizer_max_length} if cfg.tokenizer_max_length else {}
    return config_cls(
        paligemma_variant=cfg.paligemma_variant, action_expert_variant=cfg.action_expert_variant, dtype=cfg.dtype,
        chunk_size=spec.chunk_size, n_action_steps=spec.exec_horizon, max_state_dim=cfg.max_state_dim,
        max_action_dim=cfg.max_action_dim, image_resolution=(cfg.image_resolution, cfg.image_resolution),
        train_expert_only=cfg.train_expert_only, device=str(device or torch.get_default_device()),
        input_features=inputs, output_features=outputs, **extra)


def mlp_head(i: int, h: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, o))


class PiVLA(FlowPolicyModel):
    """lerobot's PI0Policy / PI05Policy (attribute `policy`) with Flow-Noise and value heads."""

    def __init__(self, cfg: PiVLAConfig, spec: PolicySpec, tokenizer=None):
        super().__init__()
        self.cfg, self.spec = cfg, spec
        # Tokenizer first: a missing one fails in a second, not after building a 4B model.
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.tokenizer)
        with build_context(cfg):
            lr_cfg = lerobot_config(cfg, spec)
            self.policy = lerobot_policy_class(cfg.kind)[1](lr_cfg)
        self.chunk_size, self.action_dim = lr_cfg.chunk_size, lr_cfg.max_action_dim
        inner = self.policy.model
        self.feat_dim = inner.action_out_proj.in_features
        self.prefix_dim = inner.paligemma_with_expert.paligemma.config.text_config.hidden_size
        self._text_steps = self._make_text_steps(lr_cfg)
        self._captured: torch.Tensor | None = None
        inner.action_out_proj.register_forward_pre_hook(self._capture)
        inner.gradient_checkpointing_enabled = cfg.gradient_checkpointing  # lerobot's own per-embedding switch
        if cfg.backbone_dtype == "bfloat16":
            inner.paligemma_with_expert.paligemma.to(torch.bfloat16)
        self._graphs = None  # PrefixGraphs, made on first CUDA use of the fast path
        self.has_noise_net = cfg.noise_net
        if cfg.noise_net:
            self.noise_net = NoiseNet(self.feat_dim, self.action_dim, cfg.noise_hidden, cfg.noise_std_min,
                                      cfg.noise_std_max)
        self.has_value_head = cfg.value_head
        if cfg.value_head:
            in_dim = self.feat_dim if cfg.kind == "pi0" else self.prefix_dim
            self.value_head = mlp_head(in_dim, cfg.value_hidden, 1)

    # --- tokenisation ----------------------------------------------------------------------------------------
    def _make_text_steps(self, lr_cfg) -> list:
        from lerobot.processor import TokenizerProcessorStep

        tok = TokenizerProcessorStep(tokenizer=self.tokenizer, max_length=lr_cfg.tokenizer_max_length,
                                     padding_side="right", padding="max_length")
        if self.cfg.kind == "pi0":
            from lerobot.policies.pi0.processor_pi0 import Pi0NewLineProcessor
            return [Pi0NewLineProcessor(), tok]
        from lerobot.policies.pi05.processor_pi05 import Pi05PrepareStateTokenizerProcessorStep
        return [Pi05PrepareStateTokenizerProcessorStep(max_state_dim=lr_cfg.max_state_dim), tok]

    def tokenize(self, instructions: list[str], state: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Instructions (and, for pi0.5, the normalised state) -> {"lang_tokens", "lang_mask"} via lerobot's steps."""
        from lerobot.processor import TransitionKey, create_transition

        if self.cfg.kind == "pi05" and state is None:
            raise ValueError("pi0.5 writes the normalised state into its prompt: tokenize() needs the state")
        obs = {} if state is None else {"observation.state": state.detach().float().cpu()}
        tr = create_transition(observation=obs, complementary_data={"task": list(instructions)})
        for step in self._text_steps:
            tr = step(tr)
        prompts = tr[TransitionKey.COMPLEMENTARY_DATA]["task"]
        limit = self.policy.config.tokenizer_max_length
        longest = max(len(ids) for ids in self.tokenizer(list(prompts))["input_ids"])
        if longest > limit:
            raise ValueError(f"a prompt has {longest} tokens, more than tokenizer_max_length={limit}: it would be "
                             f"truncated (shorten the instruction or raise tokenizer_max_length)")
        out = tr[TransitionKey.OBSERVATION]
        device = self.policy.model.action_out_proj.weight.device
        return {"lang_tokens": out["observation.language.tokens"].to(device),
                "lang_mask": out["observation.language.attention_mask"].to(device)}

    def _language(self, batch: dict[str, Any], b: int) -> tuple[torch.Tensor, torch.Tensor]:
        if "lang_tokens" in batch:
            return batch["lang_tokens"], batch["lang_mask"].bool()
        text = batch.get("instruction", self.spec.instruction)
        texts = [text] * b if isinstance(text, str) else list(text)
        if len(texts) == 1 and b > 1:
            texts = texts * b
        if len(texts) != b:
            raise ValueError(f"got {len(texts)} instructions for a batch of {b}")
        out = self.tokenize(texts, batch.get("state"))
        return out["lang_tokens"], out["lang_mask"]

    # --- FlowPolicyModel -------------------------------------------------------------------------------------
    def _autocast(self, device: torch.device):
        # No autocast weight cache: casts captured in a CUDA graph must not outlive the capture.
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.cfg.autocast_bf16, cache_enabled=False)

    def _fast_context(self, device: torch.device) -> contextlib.ExitStack:
        """What the fast path runs under: the autocast setting and, on CUDA, the configured SDPA kernel."""
        stack = contextlib.ExitStack()
        stack.enter_context(self._autocast(device))
        if device.type == "cuda":
            stack.enter_context(pi0_fast.attention_backend(self.cfg.attention))
        return stack

    def fast_path_active(self, device: torch.device) -> bool:
        return self.cfg.fast_path == "on" or (self.cfg.fast_path == "auto" and device.type == "cuda")

    def _prefix_inputs(self, batch: dict[str, Any]):
        lr_batch = {f"observation.{k}": v for k, v in batch.items() if k.startswith("images.")}
        missing = [k for k in self.policy.config.image_features if k not in lr_batch]
        if missing:
            raise KeyError(f"batch lacks cameras {missing}; has {sorted(lr_batch)}")
        b = next(iter(lr_batch.values())).shape[0]
        tokens, mask = self._language(batch, b)
        images, img_masks = self.policy._preprocess_images(lr_batch)  # lerobot's resize-with-pad and [-1, 1]
        state = None
        if self.cfg.kind == "pi0":
            if "state" not in batch:
                raise KeyError("pi0 needs 'state' in the batch")
            state = self.policy.prepare_state({"observation.state": batch["state"]})
        return images, img_masks, tokens, mask, state

    def encode(self, batch: dict[str, Any]) -> VLAContext | FastContext:
        images, img_masks, tokens, mask, state = self._prefix_inputs(batch)
        device = tokens.device
        if not self.fast_path_active(device):
            return self._encode_lerobot(images, img_masks, tokens, mask, state)
        mask_free = False
        if self.cfg.kind == "pi0":  # pi0.5's prompt length follows the state: it keeps its padding (one graph)
            tokens, mask, mask_free = pi0_fast.drop_padding(tokens, mask, img_masks)
        # A frozen backbone has nothing to differentiate: its prefix is rebuilt without an autograd graph.
        grad = torch.is_grad_enabled() and not self.cfg.train_expert_only
        if device.type == "cuda" and self.cfg.cuda_graphs and not grad:
            if self._graphs is None:
                from pirl_robot.models.cuda_graphs import PrefixGraphs
                pi0_fast.fuse_projections(self.policy.model)  # before capture: the graphs read the fused weights
                self._graphs = PrefixGraphs(self.policy.model, self.cfg.kind, lambda: self._fast_context(device),
                                            compile=self.cfg.compile, compile_mode=self.cfg.compile_mode)
            ctx = self._graphs.encode(images, img_masks, tokens, mask, state, mask_free)
            return ctx.detached_copy() if torch.is_grad_enabled() else ctx  # an update's context must not move
        if device.type == "cuda":
            pi0_fast.fuse_projections(self.policy.model)  # on CUDA only: the CPU gains nothing from it
        with torch.set_grad_enabled(grad), self._fast_context(device):
            return pi0_fast.encode_prefix(self.policy.model, self.cfg.kind, images, img_masks, tokens, mask, state,
                                          mask_free)

    def _encode_lerobot(self, images, img_masks, tokens, mask, state) -> VLAContext:
        from lerobot.policies.common.vla_utils import make_att_2d_masks, prepare_attention_masks_4d

        inner, joint = self.policy.model, self.policy.model.paligemma_with_expert
        with self._autocast(tokens.device):
            embs, pad_masks, att_masks = inner.embed_prefix(images, img_masks, tokens, mask)
            att_4d = prepare_attention_masks_4d(make_att_2d_masks(pad_masks, att_masks))
            joint.paligemma.model.language_model.config._attn_implementation = "eager"  # as in sample_actions
            (prefix_out, _), cache = joint.forward(attention_mask=att_4d, position_ids=pad_masks.cumsum(1) - 1,
                                                   past_key_values=None, inputs_embeds=[embs, None], use_cache=True)
        valid = pad_masks.unsqueeze(-1).float()
        pooled = (prefix_out.float() * valid).sum(1) / valid.sum(1).clamp_min(1.0)
        return VLAContext(cache=cache, prefix_pad_masks=pad_masks, prefix_features=pooled, state=state)

    def batch_size(self, ctx: VLAContext | FastContext) -> int:
        return ctx.prefix_pad_masks.shape[0]

    def _capture(self, module, args) -> None:
        self._captured = args[0]

    def _denoise(self, ctx: VLAContext | FastContext, x: torch.Tensor,
                 t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(ctx, FastContext):
            ctx.check_fresh()
            if ctx.graph is not None and not torch.is_grad_enabled():
                return self._graphs.step(ctx, x, t)
            with self._fast_context(x.device):
                v, feats = pi0_fast.denoise_step(self.policy.model, self.cfg.kind, ctx, x, t)
            return v.float(), feats
        self._captured = None
        with self._autocast(x.device):
            if self.cfg.kind == "pi0":
                v = self.policy.model.denoise_step(state=ctx.state, prefix_pad_masks=ctx.prefix_pad_masks,
                                                   past_key_values=ctx.cache, x_t=x, timestep=t)
            else:
                v = self.policy.model.denoise_step(prefix_pad_masks=ctx.prefix_pad_masks,
                                                   past_key_values=ctx.cache, x_t=x, timestep=t)
        feats, self._captured = self._captured, None
        return v.float(), feats.float()

    def velocity(self, ctx: VLAContext, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from lerobot.policies.common.vla_utils import pad_vector

        a = x_t.shape[-1]
        x = pad_vector(x_t.float(), self.action_dim)
        t = t.float().expand(x.shape[0])
        if self.cfg.gradient_checkpointing and torch.is_grad_enabled():
            v, feats = checkpoint(self._denoise, ctx, x, t, use_reentrant=False)
        else:
            v, feats = self._denoise(ctx, x, t)
        return v[..., :a], feats

    def noise_std(self, feats: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not self.has_noise_net:
            return super().noise_std(feats, t)
        return self.noise_net(feats, t)

    def value(self, ctx: VLAContext, feats: torch.Tensor | None = None) -> torch.Tensor:
        if not self.has_value_head:
            return super().value(ctx, feats)
        if self.cfg.kind == "pi0":
            if feats is None:
                raise ValueError("pi0's value head reads the action expert's features: pass the chain's feats_mean")
            x = feats
        else:
            x = ctx.prefix_features
        x = x.float() if self.cfg.critic_shares_features else x.float().detach()
        return self.value_head(x).squeeze(-1)

    def prepare_inference(self) -> None:
        """On CUDA: bf16 weights for the whole VLM and expert (no fp32 masters at inference) under bf16 autocast,
        and the fast path. On the CPU nothing changes (bf16 matmuls are slower than fp32 there)."""
        if self.policy.model.action_out_proj.weight.device.type != "cuda":
            return
        self.policy.model.paligemma_with_expert.to(torch.bfloat16)
        pi0_fast.fuse_projections(self.policy.model)  # now: frees the fp32 fused weights the cast left behind
        self.cfg.autocast_bf16 = True
        self._graphs = None  # graphs captured against the fp32 weights would read freed memory

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.policy.model.paligemma_with_expert.paligemma.parameters())

    def expert_parameters(self) -> list[nn.Parameter]:
        return list(self.policy.model.paligemma_with_expert.gemma_expert.parameters())


def _builder(kind: str):
    def build(config: dict[str, Any], spec: PolicySpec) -> FlowPolicyModel:
        config = dict(config)
        if config.setdefault("kind", kind) != kind:
            raise ValueError(f"model config says kind {config['kind']!r} but was built as {kind!r}")
        known = {f.name for f in fields(PiVLAConfig)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown {kind} model options {unknown}; known: {sorted(known)}")
        return PiVLA(PiVLAConfig(**config), spec)
    return build


for _kind in KINDS:
    register(_kind)(_builder(_kind))
