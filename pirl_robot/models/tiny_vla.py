"""Tiny pi0 / pi0.5 for tests and CPU debug runs: lerobot 0.6.1's width table, extended. Never used for real weights.

lerobot's PI0Config / PI05Config accept only the "gemma_300m" and "gemma_2b" widths and hard-code the SigLIP vision
tower (400M parameters) and a 257k-token vocabulary. `tiny_variants()` is a context manager that, while a model is
being *built*, lets the two variant names below through and shrinks the vision tower and the vocabulary for them.
Everything else (the layers, the masks, the KV cache, denoise_step, save/load) is lerobot's unchanged code, so a
tiny model exercises exactly the code path of the 4B one.

The patch targets lerobot 0.6.1 by name; any other version fails here with a clear message instead of building a
silently different model. The variant names travel in lerobot's config.json, so a tiny checkpoint loaded without
this context is refused by lerobot's own validation rather than mistaken for a real one.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import lerobot

SUPPORTED_LEROBOT = "0.6.1"
TINY_VLM = "pirl_tiny_vlm"
TINY_EXPERT = "pirl_tiny_expert"

# Both towers must share depth, head count and head_dim: pi0 attends jointly over prefix and suffix per layer, and
# lerobot's joint layer hard-codes 8 heads.
_WIDTHS = {
    TINY_VLM: dict(width=64, depth=2, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=16),
    TINY_EXPERT: dict(width=32, depth=2, mlp_dim=64, num_heads=8, num_kv_heads=1, head_dim=16),
}
TINY_VOCAB = 512  # token ids of the tiny test tokenizer must stay below this
_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, patch_size=8)

_lock = threading.RLock()


def is_tiny(paligemma_variant: str, action_expert_variant: str) -> bool:
    return paligemma_variant in _WIDTHS or action_expert_variant in _WIDTHS


def _modules():
    if lerobot.__version__ != SUPPORTED_LEROBOT:
        raise RuntimeError(f"pirl_robot.models.tiny_vla patches lerobot {SUPPORTED_LEROBOT} internals; found lerobot "
                           f"{lerobot.__version__}. Re-check the width table in lerobot/policies/pi0/modeling_pi0.py "
                           "and update this module.")
    from lerobot.policies.pi0 import configuration_pi0, modeling_pi0
    from lerobot.policies.pi05 import configuration_pi05, modeling_pi05

    for mod in (modeling_pi0, modeling_pi05):
        for name in ("get_gemma_config", "GemmaConfig", "PaliGemmaForConditionalGenerationWithPiGemma",
                     "PiGemmaForCausalLM"):
            if not hasattr(mod, name):
                raise RuntimeError(f"{mod.__name__} has no {name}: lerobot's layout changed, update tiny_vla.py")
    return (modeling_pi0, modeling_pi05), (configuration_pi0.PI0Config, configuration_pi05.PI05Config)


@contextlib.contextmanager
def tiny_variants() -> Iterator[None]:
    """Within this block, lerobot builds (and parses configs of) pi0 / pi0.5 with the tiny variant names."""
    modeling, configs = _modules()
    with _lock:
        saved: list[tuple[object, str, object]] = []

        def patch(owner, name, value):
            saved.append((owner, name, getattr(owner, name)))
            setattr(owner, name, value)

        for mod in modeling:
            patch(mod, "get_gemma_config", _table(mod.get_gemma_config, mod.GemmaConfig))
            patch(mod, "PaliGemmaForConditionalGenerationWithPiGemma",
                  _small_paligemma(mod.PaliGemmaForConditionalGenerationWithPiGemma))
            patch(mod, "PiGemmaForCausalLM", _small_expert(mod.PiGemmaForCausalLM))
        for cfg_cls in configs:
            patch(cfg_cls, "__post_init__", _accept_tiny_names(cfg_cls.__post_init__))
        try:
            yield
        finally:
            for owner, name, value in reversed(saved):
                setattr(owner, name, value)


def _table(stock, gemma_config_cls):
    def get_gemma_config(variant: str):
        if variant in _WIDTHS:
            return gemma_config_cls(**_WIDTHS[variant])
        return stock(variant)
    return get_gemma_config


def _tiny_width(width: int) -> bool:
    return any(w["width"] == width for w in _WIDTHS.values())


def _small_paligemma(stock_cls):
    def build(config):
        if _tiny_width(config.text_config.hidden_size):
            config.vision_config.update({**_VISION, "projection_dim": config.text_config.hidden_size})
            config.text_config.vocab_size = TINY_VOCAB
            config.vocab_size = TINY_VOCAB
        return stock_cls(config)
    return build


def _small_expert(stock_cls):
    def build(config):
        if _tiny_width(config.hidden_size):
            config.vocab_size = TINY_VOCAB
        return stock_cls(config)
    return build


def _accept_tiny_names(stock_post_init):
    def __post_init__(self):
        names = (self.paligemma_variant, self.action_expert_variant)
        # lerobot validates against a literal list; show it stand-in names, then restore ours.
        self.paligemma_variant = "gemma_2b" if names[0] in _WIDTHS else names[0]
        self.action_expert_variant = "gemma_300m" if names[1] in _WIDTHS else names[1]
        try:
            stock_post_init(self)
        finally:
            self.paligemma_variant, self.action_expert_variant = names
    return __post_init__


def tiny_options(spec, tokenizer: str, pad: int = 0, **overrides) -> dict:
    """build_model options for a tiny pi0 / pi0.5 fitting `spec` (32 px images; `pad` extra padded state/action
    dims, as real checkpoints have). `tokenizer`: a directory, e.g. from tokenizer.train_word_tokenizer."""
    return {"paligemma_variant": TINY_VLM, "action_expert_variant": TINY_EXPERT, "image_resolution": 32,
            "max_state_dim": spec.state_dim + pad, "max_action_dim": spec.action_dim + pad,
            "tokenizer": str(tokenizer), "tokenizer_max_length": 48, "noise_hidden": 32, "value_hidden": 32,
            **overrides}
