"""Shared fixtures: the real data folder and small seeded models."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(os.environ.get("MEDITOK_SHARED_DATA",
                                  Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ``../shared/data``; skips the test with a clear message when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (set MEDITOK_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


SHARED_REFERENCE = SHARED_DATA.parent / "reference"


@pytest.fixture(scope="session")
def shared_reference() -> Path:
    """Path of ``../shared/reference`` (official key list, spec); skips when absent."""
    if not SHARED_REFERENCE.is_dir():
        pytest.skip(f"reference material not found at {SHARED_REFERENCE}")
    return SHARED_REFERENCE


@pytest.fixture()
def tiny_model():
    """A randomly initialised ``tiny`` MedITok in eval mode (seeded)."""
    from meditok import MedITok

    torch.manual_seed(0)
    return MedITok.from_preset("tiny").eval()


@pytest.fixture()
def one_thread():
    """Run a test with one torch thread: tiny ops on a shared 2-core machine otherwise lose
    most of their time to OpenMP threads spinning against each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- VQA: a tiny offline LM
CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama (hidden 32) with a byte-level BPE tokenizer and a ChatML template, built
    offline from a config (skips without the ``vqa`` extra)."""
    pytest.importorskip("tokenizers", reason="the vqa extra (tokenizers) is not installed")
    pytest.importorskip("transformers", reason="the vqa extra (transformers) is not installed")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("tiny_lm")
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<|im_start|>", "<|im_end|>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(["Is there a fracture? yes no", "What organ is shown? the liver",
                             "Describe the image. This is an X-ray image of the chest."] * 10, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<pad>",
                                  unk_token="<unk>", bos_token="<|im_start|>")
    tok.chat_template = CHAT
    tok.save_pretrained(d)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """A randomly initialised ``tiny`` MedITok saved as a folder (the VQA tests' vision tower)."""
    from meditok.tokenizer.model import MedITok

    torch.manual_seed(0)
    return MedITok.from_preset("tiny").save_pretrained(tmp_path_factory.mktemp("tiny_tok"))
