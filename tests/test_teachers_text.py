"""Text teachers: offline MiniLM (real weights) and a tiny BERT saved with save_pretrained
(the on-disk format of PubMedBERT / BiomedCLIP's text tower)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from meditok.errors import CheckpointError
from meditok.teachers import build_teacher

transformers = pytest.importorskip("transformers")

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "chest", "x", "-", "ray", "ct",
         "of", "the", "brain", "mri", "##s", "scan", "lung", "nodule", "."]


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pubmedbert")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    tok = transformers.BertTokenizer(vocab_file=str(vocab), do_lower_case=True)
    tok.save_pretrained(str(root))
    cfg = transformers.BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64,
                                  max_position_embeddings=64)
    torch.manual_seed(3)
    transformers.BertModel(cfg).eval().save_pretrained(str(root))
    return root


def test_hf_bert_teacher_cls_pooling(tiny_bert_dir) -> None:
    teacher = build_teacher(f"hf-bert:{tiny_bert_dir}")
    assert teacher.kind == "text" and teacher.dim == 32
    caps = ["a chest x-ray", "mri of the brain showing a lung nodule ."]
    feats = teacher.encode(caps)
    assert feats.shape == (2, 32) and not feats.requires_grad
    # Independent check: CLS hidden state of the same model run directly by transformers.
    tok = transformers.AutoTokenizer.from_pretrained(str(tiny_bert_dir))
    model = transformers.AutoModel.from_pretrained(str(tiny_bert_dir)).eval()
    for i, cap in enumerate(caps):
        enc = tok(cap, return_tensors="pt")
        assert enc["input_ids"][0, 0].item() == VOCAB.index("[CLS]")
        with torch.no_grad():
            ref = model(**enc).last_hidden_state[0, 0]
        assert torch.allclose(feats[i], ref, atol=1e-5)  # padding does not change CLS
    assert torch.equal(build_teacher("pubmedbert", tiny_bert_dir).encode(caps), feats)


def test_hf_mean_pooling_ignores_padding(tiny_bert_dir) -> None:
    teacher = build_teacher(f"hf-mean:{tiny_bert_dir}")
    short, long = "a ct scan", "mri of the brain showing a lung nodule . a chest x-ray"
    together = teacher.encode([short, long])
    alone = teacher.encode([short])
    assert torch.allclose(together[0], alone[0], atol=1e-5)


def test_minilm_offline_teacher_semantics() -> None:
    teacher = build_teacher("minilm")
    assert teacher.kind == "text" and teacher.dim == 384
    f = F.normalize(teacher.encode(["a chest x-ray", "a chest radiograph", "an MRI of the brain"]), dim=-1)
    sim = f @ f.t()
    assert f.shape == (3, 384)
    assert sim[0, 1] > sim[0, 2] + 0.2  # paraphrases are closer than different exams


def test_text_teacher_errors(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="config.json"):
        build_teacher(f"hf-bert:{tmp_path}")
    with pytest.raises(CheckpointError, match="needs path="):
        build_teacher("pubmedbert")
    with pytest.raises(ValueError, match="unknown teacher"):
        build_teacher("clip-xl")
    teacher = build_teacher("minilm")
    with pytest.raises(ValueError, match="list of strings"):
        teacher.encode("not a list")
