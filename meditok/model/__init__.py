"""MedITok network: encoder, causal projections, multi-codebook quantiser, decoder."""
from meditok.model.quantizer import MultiCodebookQuantizer
from meditok.model.tokenizer import MedITok, MedITokOutput

__all__ = ["MedITok", "MedITokOutput", "MultiCodebookQuantizer"]
