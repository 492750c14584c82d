"""The MedITok tokenizer family: the model (encoder, causal projections, multi-codebook VQ,
decoder), its config and presets, token layout, checkpoints, batch jobs, the demo, the
two-stage trainer (:mod:`~meditok.tokenizer.train`) and its benchmarks
(:mod:`~meditok.tokenizer.bench`)."""
from meditok.tokenizer.config import MedITokConfig, ModelConfig, preset
from meditok.tokenizer.model import MedITok, MedITokOutput
from meditok.tokenizer.quantizer import MultiCodebookQuantizer

__all__ = ["MedITok", "MedITokOutput", "MedITokConfig", "ModelConfig", "preset",
           "MultiCodebookQuantizer"]
