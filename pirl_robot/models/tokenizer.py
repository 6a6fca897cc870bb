"""Tokenizers for the VLA policies: the PaliGemma tokenizer from the local Hugging Face cache, or a local directory.

Nothing here downloads: a missing tokenizer is an error that says how to fetch it. Tests and CPU debug runs use
`train_word_tokenizer`, a small word-level tokenizer built from a few strings and saved as an ordinary Hugging Face
tokenizer directory (lerobot's TokenizerProcessorStep takes it like the real one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

PALIGEMMA_TOKENIZER = "google/paligemma-3b-pt-224"
FETCH_HINT = (f"hf auth login   # once; accept the PaliGemma license on huggingface.co first\n"
              f"    hf download {PALIGEMMA_TOKENIZER} --include 'tokenizer*' --include special_tokens_map.json "
              f"--include config.json")


class TokenizerMissingError(FileNotFoundError):
    """The tokenizer a policy needs is neither a local directory nor in the local Hugging Face cache."""


def load_tokenizer(name_or_path: str):
    """A Hugging Face tokenizer from a local directory, or from the local HF cache by repo id (never the network)."""
    from transformers import AutoTokenizer

    path = Path(name_or_path).expanduser()
    try:
        if path.is_dir():
            if not any(path.glob("tokenizer*")):
                raise OSError("no tokenizer.json / tokenizer_config.json / tokenizer.model in it")
            return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        return AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
    except (OSError, ValueError) as e:
        where = f"directory {path}" if path.is_dir() else f"{name_or_path!r} in the local Hugging Face cache"
        hint = FETCH_HINT if name_or_path == PALIGEMMA_TOKENIZER else (
            f"point the policy's `tokenizer` option at a directory holding a tokenizer, or fetch it:\n    "
            f"hf download {name_or_path} --include 'tokenizer*'")
        raise TokenizerMissingError(f"tokenizer not found: {where} ({e}). pirl-robot never downloads it; "
                                    f"get it once with:\n    {hint}") from e


SPECIAL = ("[PAD]", "[UNK]", "[BOS]")
# pi0.5 writes the discretised state (-1..255) and "Task: ..., State: ...;\nAction: " into its prompt.
_PROMPT_WORDS = ("Task", "State", "Action", ":", ",", ";", "-", ".")


def train_word_tokenizer(texts: Iterable[str], out_dir: str | Path, max_vocab: int = 512) -> Path:
    """Build a word-level tokenizer covering `texts`, the digits of pi0.5's state bins and its prompt words.

    Saved with save_pretrained, so `load_tokenizer(out_dir)` and lerobot's processor steps read it like any other.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    words: dict[str, None] = dict.fromkeys([*SPECIAL, *(str(i) for i in range(256)), *_PROMPT_WORDS])
    for text in texts:
        words.update(dict.fromkeys(w for w, _ in pre.pre_tokenize_str(text)))
    if len(words) > max_vocab:
        raise ValueError(f"{len(words)} distinct words exceed max_vocab={max_vocab}; use fewer or shorter texts")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]")
    out = Path(out_dir)
    fast.save_pretrained(str(out))
    return out
