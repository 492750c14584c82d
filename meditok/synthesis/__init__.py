"""Modality-conditioned autoregressive synthesis on MedITok tokens (paper §4.4, App. C.2).

``data`` (conditions, class-balanced draws), ``config`` (typed run config), ``model`` (the
generator: shared GPT + conditions + the tokenizer it needs; :class:`Synthesizer`), ``train``
(the shared engine loop), ``sample`` (PNG files and grids), ``bench`` (gFID, diversity,
conditional accuracy, real-vs-real floor), ``cli`` (``meditok synth …``).
"""
from meditok.synthesis.config import DataConfig, SampleConfig, SynthConfig
from meditok.synthesis.model import DEFAULT_GENERATOR, Synthesizer

__all__ = ["DataConfig", "SampleConfig", "SynthConfig", "Synthesizer", "DEFAULT_GENERATOR"]
