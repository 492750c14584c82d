"""Visual contrastive decoding (VCD; Leng et al., CVPR 2024) for the VQA pipeline.

A small LM fine-tuned on VQA-RAD leans on its language prior: the shipped adapter answers "Is this
a CT?" from the wording more than from the picture, although the frozen tower's features carry the
modality (a linear probe reads it). VCD subtracts what the model would say about a *noised* copy of
the image — the prior plus whatever survives the noise — from what it says about the image:

``logits = (1 + α)·l(image) − α·l(noised image)``, restricted to the tokens with
``p(image) ≥ β·max p(image)`` (VCD's adaptive plausibility constraint: a token the image makes
implausible never wins because the noised copy finds it even less likely).

The noised copy is forward diffusion at step ``t`` of a 1000-step linear-β schedule (VCD's
``t = 500``), clamped to the tokenizer's input range, one fixed noise draw for every image, so an
answer depends neither on the batch nor on the order. ``α = 0`` is plain greedy decoding (``VQAModel.generate`` then calls the LM's own
``generate``; this loop is only used for ``α > 0``).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from meditok.vqa.config import DIFFUSION_STEPS, ContrastConfig

BETA_START, BETA_END = 1e-4, 0.02  # DDPM's linear schedule, as VCD uses


def alpha_bar(t: int) -> float:
    """Cumulative signal fraction ``ᾱ_t`` of DDPM's linear schedule after ``t`` steps."""
    betas = torch.linspace(BETA_START, BETA_END, DIFFUSION_STEPS, dtype=torch.float64)
    return float(torch.prod(1 - betas[:t]))


def noised(images: torch.Tensor, cfg: ContrastConfig, input_range: tuple[float, float]) -> torch.Tensor:
    """``images [B,C,S,S]`` in ``input_range`` → their forward-diffused copies at ``cfg.noise_step``
    (computed in ``[-1, 1]``, DDPM's data range, and mapped back); the same noise for every image.
    Clamped to the input range: MedITok refuses inputs outside its preprocessing contract."""
    lo, hi = input_range
    x = (images.float() - lo) / (hi - lo) * 2 - 1
    g = torch.Generator().manual_seed(cfg.seed)
    eps = torch.randn(x.shape[1:], generator=g).to(x.device)
    a = alpha_bar(cfg.noise_step)
    x = (math.sqrt(a) * x + math.sqrt(1 - a) * eps).clamp(-1, 1)
    return ((x + 1) / 2 * (hi - lo) + lo).to(images.dtype)


def combine(real: torch.Tensor, contrast: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """VCD's next-token scores from the logits under the real and the noised image ``[B, V]``:
    ``(1+α)·real − α·contrast``, ``-inf`` outside the plausible set of ``real``."""
    real, contrast = real.float(), contrast.float()
    logp = real.log_softmax(-1)
    keep = logp >= logp.max(-1, keepdim=True).values + math.log(beta)
    return ((1 + alpha) * real - alpha * contrast).masked_fill(~keep, float("-inf"))


def _cache_kwargs(out: Any) -> dict[str, Any]:
    """The KV cache of an LM output as the keyword the next call takes (transformers renamed
    ``past_key_values`` to ``cache`` in 5.x; the old name is deprecated)."""
    if hasattr(out, "cache"):
        return {"cache": out.cache}
    return {"past_key_values": out.past_key_values}


@torch.no_grad()
def contrastive_greedy(lm: Any, real: torch.Tensor, contrast: torch.Tensor, mask: torch.Tensor,
                       cfg: ContrastConfig, max_new_tokens: int, eos_id: int, pad_id: int) -> torch.Tensor:
    """Greedy VCD decoding. ``real`` / ``contrast``: left-padded prompt embeddings ``[B, L, H]``
    that differ only in the image slots; ``mask [B, L]``. Both run as one batch of ``2B`` with a
    KV cache. Returns the new token ids ``[B, n]`` (``pad_id`` after a row's end token)."""
    b = real.shape[0]
    attn = torch.cat([mask, mask])
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    out = lm(inputs_embeds=torch.cat([real, contrast]), attention_mask=attn, position_ids=pos,
             use_cache=True, logits_to_keep=1)
    done = torch.zeros(b, dtype=torch.bool, device=real.device)
    new: list[torch.Tensor] = []
    for _ in range(max_new_tokens):
        logits = out.logits[:, -1]
        nxt = combine(logits[:b], logits[b:], cfg.alpha, cfg.beta).argmax(-1)
        nxt = nxt.masked_fill(done, pad_id)
        new.append(nxt)
        done |= nxt == eos_id
        if bool(done.all()):
            break
        attn = torch.cat([attn, attn.new_ones(2 * b, 1)], dim=1)
        pos = pos[:, -1:] + 1
        out = lm(input_ids=torch.cat([nxt, nxt])[:, None], attention_mask=attn, position_ids=pos,
                 use_cache=True, logits_to_keep=1, **_cache_kwargs(out))
    return torch.stack(new, dim=1) if new else torch.empty(b, 0, dtype=torch.long)
