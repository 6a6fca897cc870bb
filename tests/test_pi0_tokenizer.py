"""Tokenizers for pi0 / pi0.5: local test tokenizer, missing PaliGemma tokenizer, prompts as lerobot builds them."""

from huggingface_hub import constants as hf_constants
import pytest
import torch

from pirl_robot.models.factory import build_model
from pirl_robot.models.tiny_vla import tiny_options
from pirl_robot.models.tokenizer import TokenizerMissingError, load_tokenizer, train_word_tokenizer
from pirl_robot.spec import CameraSpec, PolicySpec

TASKS = ["pick up the red cube", "push the cube"]
SPEC = PolicySpec(state_names=("q0", "q1", "q2"), action_names=("x", "grip"), cameras=(CameraSpec("base", 32, 32),),
                  chunk_size=4, exec_horizon=4, instruction=TASKS[0])


@pytest.fixture()
def empty_hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, so the test does not depend on what this machine has cached."""
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_missing_paligemma_tokenizer_says_how_to_get_it(empty_hf_cache):
    with pytest.raises(TokenizerMissingError) as e:
        build_model("pi0", {}, SPEC)  # the default: the real PaliGemma tokenizer, refused before any model build
    msg = str(e.value)
    assert "google/paligemma-3b-pt-224" in msg and "local Hugging Face cache" in msg
    assert "hf download google/paligemma-3b-pt-224 --include 'tokenizer*'" in msg and "hf auth login" in msg


def test_missing_tokenizer_directory_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerMissingError, match=f"directory {tmp_path / 'empty'}"):
        load_tokenizer(str(tmp_path / "empty"))


def test_word_tokenizer_round_trips_through_its_directory(tmp_path):
    out = train_word_tokenizer(TASKS, tmp_path / "tok")
    tok = load_tokenizer(str(out))
    ids = tok("pick up the blue cube")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["[BOS]", "pick", "up", "the", "[UNK]", "cube"]
    assert max(tok.get_vocab().values()) < 512  # fits the tiny models' vocabulary
    with pytest.raises(ValueError, match="exceed max_vocab"):
        train_word_tokenizer([" ".join(f"w{i}" for i in range(600))], tmp_path / "big")


def test_prompts_follow_lerobot(tmp_path):
    tok_dir = train_word_tokenizer(TASKS, tmp_path / "tok")
    tok = load_tokenizer(str(tok_dir))
    state = torch.tensor([[-1.0, 0.0, 0.999]])
    pi0 = build_model("pi0", tiny_options(SPEC, tok_dir), SPEC)
    ids = pi0.tokenize([TASKS[1]], state)["lang_tokens"][0]
    assert tok.decode(ids, skip_special_tokens=True) == "push the cube"
    pi05 = build_model("pi05", tiny_options(SPEC, tok_dir), SPEC)
    out = pi05.tokenize([TASKS[1]], state)
    words = tok.convert_ids_to_tokens(out["lang_tokens"][0][out["lang_mask"][0]])
    # "Task: push the cube, State: <bins>;\nAction: ": 256 bins of width 2/256 from -1 (0.0 opens bin 128)
    assert words == ["[BOS]", "Task", ":", "push", "the", "cube", ",", "State", ":", "0", "128", "255", ";",
                     "Action", ":"]
    with pytest.raises(ValueError, match="needs the state"):
        pi05.tokenize([TASKS[1]])
    with pytest.raises(ValueError, match="more than tokenizer_max_length=48"):
        pi0.tokenize([" ".join(["cube"] * 60)])
