"""The shared token GPT (LlamaGen style) of the synthesis and in-context families:
:mod:`meditok.gpt.model` (the transformer, KV caches, factorised head, generation) and
:mod:`meditok.gpt.sampling` (temperature / top-k / top-p and the samplers)."""
from meditok.gpt.model import GPT, GPTConfig, GPTOutput, KVCache, gpt_preset, position_ids
from meditok.gpt.sampling import SAMPLERS, gumbel_noise, sample_logits

__all__ = ["GPT", "GPTConfig", "GPTOutput", "KVCache", "SAMPLERS", "gpt_preset", "gumbel_noise",
           "position_ids", "sample_logits"]
