"""A generator = the shared token GPT + the conditions it models + the tokenizer it needs.

Everything a trained generator must know travels in its GPT config's ``meta`` (saved in
``config.json`` by :class:`meditok.utils.hub.PretrainedMixin`):

* ``tokenizer``: the identity of the tokenizer whose tokens it was trained on (how to load it
  — ``spec``, a bundled name or a path —, its config hash and weights fingerprint, grid and
  codebooks), so :class:`Synthesizer` loads that tokenizer itself and refuses another one;
* ``conditions`` / ``excluded_conditions`` / ``class_conditions`` (:class:`Conditions`);
* ``sampling``: default temperature / top-k / top-p / CFG scale;
* ``training``: provenance (data, command, steps, wall time, final losses).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from meditok.data.token_shards import (TokenShards, check_same_tokenizer, describe_tokenizer,
                                       same_tokenizer, tokenizer_identity)
from meditok.errors import CheckpointError, InvalidInputError
from meditok.gpt import GPT, GPTConfig, gpt_preset
from meditok.synthesis.config import SampleConfig, SynthConfig
from meditok.synthesis.data import Conditions
from meditok.tokenizer.layout import sequence_to_grid
from meditok.utils.device import resolve_device

#: The generator shipped in ``meditok/weights/`` and used when none is given.
DEFAULT_GENERATOR = "meditok-gpt-small"
#: Format tag of synthesis training checkpoints (the engine refuses other families' ones).
CHECKPOINT_FORMAT = "meditok-synth-v1"
#: How :class:`Synthesizer` draws codes: Gumbel-max, exact like multinomial and ~1.4x faster on
#: CPU; unlike inverse-CDF it keeps KV-cached and recomputed sampling identical for a seed on a
#: trained generator (inverse-CDF parted in 2 of 32 images, see meditok.gpt.sampling).
SAMPLER = "gumbel"


def gpt_config(cfg: SynthConfig, tokenizer: dict[str, Any], conditions: Conditions) -> GPTConfig:
    """The GPT architecture of a run: the preset, its overrides, and what the data fixes."""
    try:
        gcfg = gpt_preset(cfg.preset, **cfg.model, grid=tuple(tokenizer["grid"]),
                          num_codebooks=int(tokenizer["num_codebooks"]),
                          codebook_size=int(tokenizer["codebook_size"]),
                          num_classes=len(conditions.names))
    except TypeError as exc:  # an override that is not a GPTConfig field
        raise ValueError(f"model: {exc}") from None
    gcfg.meta = {"name": cfg.name or None, "tokenizer": dict(tokenizer), **conditions.to_meta(),
                 "sampling": cfg.sample.to_dict()}
    return gcfg


class Synthesizer:
    """Sample images for named conditions from a trained generator and its tokenizer."""

    def __init__(self, gpt: GPT, tokenizer, tokenizer_spec: str | None = None,
                 source: str = "generator"):
        meta = gpt.config.meta or {}
        if not meta.get("tokenizer"):
            raise CheckpointError(f"{source}: the generator does not record its tokenizer (meta.tokenizer)")
        self.gpt, self.tokenizer, self.source = gpt.eval(), tokenizer.eval(), source
        self.conditions = Conditions.from_meta(meta)
        self.needs = dict(meta["tokenizer"])
        found = tokenizer_identity(tokenizer, tokenizer_spec or self.needs.get("spec"))
        if not same_tokenizer(found, self.needs):
            raise CheckpointError(f"{source} was trained on tokens of tokenizer {describe_tokenizer(self.needs)}, "
                                  f"not of {describe_tokenizer(found)}; give the right one with --tokenizer")

    @classmethod
    def load(cls, generator: str | Path | None = None, tokenizer: str | Path | None = None,
             device: str | torch.device = "cpu") -> "Synthesizer":
        """A generator directory / bundled name (default :data:`DEFAULT_GENERATOR`) with the
        tokenizer it records (or ``tokenizer``, which must be that same tokenizer)."""
        from meditok.tokenizer.hub import load_tokenizer

        dev = resolve_device(device)
        spec = str(generator or DEFAULT_GENERATOR)
        gpt = GPT.from_pretrained(spec, map_location=dev)
        needs = (gpt.config.meta or {}).get("tokenizer") or {}
        tok_spec = str(tokenizer) if tokenizer is not None else needs.get("spec")
        if not tok_spec:
            raise CheckpointError(f"{spec}: the generator does not say which tokenizer it needs; "
                                  "pass --tokenizer")
        try:
            tok = load_tokenizer(tok_spec, dev)
        except CheckpointError as exc:
            raise CheckpointError(f"{spec} needs tokenizer {describe_tokenizer(needs)}, which cannot be "
                                  f"loaded ({exc}); pass --tokenizer PATH") from None
        return cls(gpt, tok, tok_spec, source=spec)

    # ------------------------------------------------------------------ facts
    @property
    def device(self) -> torch.device:
        return self.gpt.rope_cos.device

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.gpt.config.grid)  # type: ignore[return-value]

    def sampling_defaults(self) -> SampleConfig:
        return SampleConfig.from_dict((self.gpt.config.meta or {}).get("sampling") or {})

    def check_tokens(self, shards: TokenShards) -> None:
        """Refuse token shards made by another tokenizer than this generator's."""
        check_same_tokenizer(shards.tokenizer, self.needs, str(shards.root), f"generator {self.source}")

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample_tokens(self, condition: str | int, n: int, seed: int = 0, batch_size: int = 64,
                      use_cache: bool = True, progress: bool = False, **overrides: Any) -> torch.Tensor:
        """``n`` token grids ``[n, K, h, w]`` for ``condition`` (a name or class id).

        ``overrides``: ``temperature``, ``top_k``, ``top_p``, ``cfg_scale`` (default: the
        generator's recorded settings). The same seed, n and batch size give the same tokens.
        """
        cid = condition if isinstance(condition, int) else self.conditions.id(condition)
        if not 0 <= cid < len(self.conditions.names):
            raise InvalidInputError(f"condition id {cid} out of range 0..{len(self.conditions.names) - 1}")
        if n < 1 or batch_size < 1:
            raise InvalidInputError("n and batch_size must be >= 1")
        settings = self.sampling_defaults().to_dict()
        unknown = set(overrides) - set(settings)
        if unknown:
            raise InvalidInputError(f"unknown sampling settings {sorted(unknown)}")
        settings.update({k: v for k, v in overrides.items() if v is not None})
        SampleConfig.from_dict(settings)  # validates the ranges
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(seed))
        out = []
        from tqdm.auto import tqdm

        for start in tqdm(range(0, n, batch_size), desc="sample", unit="batch", disable=not progress):
            b = min(batch_size, n - start)
            cond = torch.full((b,), cid, dtype=torch.long, device=self.device)
            seq = self.gpt.generate(cond, generator=gen, use_cache=use_cache, sampler=SAMPLER, **settings)
            out.append(sequence_to_grid(seq, self.grid).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Token grids → images ``[n, 3, S, S]`` in ``[-1, 1]`` (the tokenizer's decoder)."""
        return torch.cat([self.tokenizer.detokenize(t.to(self.device)).cpu()
                          for t in tokens.split(batch_size)])

    def sample(self, condition: str | int, n: int, seed: int = 0, batch_size: int = 64,
               **kwargs: Any) -> torch.Tensor:
        """Images ``[n, 3, S, S]`` in ``[-1, 1]`` for ``condition``."""
        return self.decode(self.sample_tokens(condition, n, seed, batch_size, **kwargs), batch_size)


def resolve_conditions(synth: Synthesizer, names: Sequence[str]) -> list[str]:
    """Condition names as the generator spells them (``all``: every modelled condition)."""
    if any(str(n).lower() == "all" for n in names):
        return list(synth.conditions.names)
    return [synth.conditions.names[synth.conditions.id(n)] for n in names]
