"""Prompts with one ``<image>`` placeholder, and the splice of image embeddings into them.

A question becomes token ids with exactly one :data:`IMAGE_TOKEN_ID` sentinel where the LM's
prompt has ``<image>`` (the LM's chat template, or an explicit template for a base LM).
:func:`expand_image` widens the sentinel to ``h·w`` slots (0 for the text-only baseline) and
:func:`splice_embeddings` fills those slots with the projected image tokens, in raster order,
while every other slot gets the LM's own (possibly scaled, e.g. Gemma's ×√d) input embedding.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from meditok.errors import InvalidInputError
from meditok.vqa.config import IMAGE_PLACEHOLDER, PromptConfig

#: Sentinel id of an image slot in token-id lists (never a real vocabulary id).
IMAGE_TOKEN_ID = -200


def split_at_placeholder(text: str) -> tuple[str, str]:
    """``"a <image> b"`` → ``("a ", " b")``; a prompt without or with several placeholders is an
    :class:`InvalidInputError` (a question that itself contains ``<image>`` ends up here)."""
    count = text.count(IMAGE_PLACEHOLDER)
    if count != 1:
        raise InvalidInputError(f"the prompt must contain exactly one {IMAGE_PLACEHOLDER} placeholder, "
                                f"found {count} in {text[:200]!r}")
    before, after = text.split(IMAGE_PLACEHOLDER)
    return before, after


def expand_image(ids: list[int], n: int) -> list[int]:
    """Replace the single image sentinel of ``ids`` by ``n`` sentinels (``n = 0`` removes it)."""
    count = ids.count(IMAGE_TOKEN_ID)
    if count != 1:
        raise InvalidInputError(f"expected exactly one image placeholder in the token ids, found {count}")
    i = ids.index(IMAGE_TOKEN_ID)
    return ids[:i] + [IMAGE_TOKEN_ID] * n + ids[i + 1:]


def splice_embeddings(input_ids: torch.Tensor, embed: Callable[[torch.Tensor], torch.Tensor],
                      image_embeds: torch.Tensor | None) -> torch.Tensor:
    """LM input embeddings ``[B, T, H]`` for ``input_ids [B, T]`` whose image slots (value
    :data:`IMAGE_TOKEN_ID`) receive ``image_embeds [B, n, H]`` in order.

    Every row must hold exactly ``n`` image slots (none when ``image_embeds`` is ``None``).
    """
    slots = input_ids == IMAGE_TOKEN_ID
    per_row = slots.sum(dim=1)
    n = 0 if image_embeds is None else image_embeds.shape[1]
    if bool((per_row != n).any()):
        raise InvalidInputError(f"each sequence must hold {n} image slots, found {per_row.tolist()}")
    text = embed(input_ids.clamp(min=0))
    if image_embeds is None or n == 0:
        return text
    if image_embeds.shape[0] != input_ids.shape[0] or image_embeds.shape[-1] != text.shape[-1]:
        raise InvalidInputError(f"image embeddings {list(image_embeds.shape)} do not fit token ids "
                                f"{list(input_ids.shape)} with LM width {text.shape[-1]}")
    out = text.clone()
    out[slots] = image_embeds.reshape(-1, text.shape[-1]).to(out.dtype)
    return out


@dataclass
class EncodedPrompt:
    """Token ids of a prompt split at the image: ``before + [IMAGE] + after``."""

    before: list[int]
    after: list[int]

    @property
    def ids(self) -> list[int]:
        return self.before + [IMAGE_TOKEN_ID] + self.after


class PromptFormat:
    """Turns questions / answers into token ids for one LM tokenizer (see :class:`PromptConfig`)."""

    def __init__(self, tokenizer: Any, cfg: PromptConfig):
        self.tok, self.cfg = tokenizer, cfg
        self.chat = not cfg.template
        if self.chat and not getattr(tokenizer, "chat_template", None):
            raise InvalidInputError("this LM's tokenizer has no chat template; give an explicit "
                                    "prompt.template with {question} and <image> (base LMs)")
        if tokenizer.eos_token_id is None:
            raise InvalidInputError("the LM's tokenizer has no end-of-sequence token")
        #: Token that ends an answer (the LM's EOS; for ChatML models the end-of-turn token).
        self.end_id = int(tokenizer.eos_token_id)

    def render(self, question: str) -> str:
        """The prompt text up to where the answer starts, with one ``<image>``."""
        question = str(question).strip()
        if self.chat:
            messages = [{"role": "system", "content": self.cfg.system}] if self.cfg.system else []
            messages.append({"role": "user", "content": f"{IMAGE_PLACEHOLDER}\n{question}"})
            return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.cfg.template.replace("{question}", question)

    def _ids(self, text: str, special: bool) -> list[int]:
        return list(self.tok(text, add_special_tokens=special)["input_ids"])

    def encode_prompt(self, question: str) -> EncodedPrompt:
        """Ids of the prompt (chat templates carry their own BOS; explicit templates get the
        tokenizer's usual special tokens on the first piece)."""
        before, after = split_at_placeholder(self.render(question))
        first = self._ids(before, special=not self.chat)
        if not self.chat and first and first[-1] == self.end_id:  # tokenizers that append EOS
            first = first[:-1]
        return EncodedPrompt(first, self._ids(after, special=False))

    def encode_answer(self, answer: str) -> list[int]:
        """Ids of an answer as the LM should produce it, ending with :attr:`end_id`."""
        prefix = "" if self.chat else self.cfg.answer_prefix
        return self._ids(prefix + str(answer).strip(), special=False) + [self.end_id]

    def decode(self, ids: list[int]) -> str:
        """Generated ids → answer text (up to the first end token, special tokens dropped)."""
        if self.end_id in ids:
            ids = ids[:ids.index(self.end_id)]
        return self.tok.decode(ids, skip_special_tokens=True).strip()
