"""``meditok vqa ask``: answer questions about images with a trained adapter.

One question (``ask``) or a JSONL batch (``ask_batch``): each input line is an object with
``image`` (a path; relative paths are tried from the current directory, then from the JSONL
file's folder), ``question`` and optionally ``modality`` (for DICOM/CT inputs); each output
line is the same object plus ``answer`` — in input order, with the model loaded once. A line
whose image cannot be read (or that is not valid JSON / lacks a field) gets an ``error``
field instead, and the batch goes on. The output is written atomically and never replaces an
existing file unless asked to.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from meditok.data.preprocess import load_image
from meditok.errors import ImageReadError, InvalidInputError
from meditok.utils.io import atomic_write_text
from meditok.utils.lock import output_lock
from meditok.vqa.model import VQAModel


def _image(model: VQAModel, path: str | Path, modality: str | None = None) -> torch.Tensor:
    return load_image(path, model.tower.preprocess, modality)


def ask(model: VQAModel, image: str | Path | None, question: str, modality: str | None = None) -> str:
    """The model's answer to ``question`` about the image file ``image``."""
    if not str(question).strip():
        raise InvalidInputError("the question is empty")
    if model.config.use_image:
        if image is None:
            raise InvalidInputError("this model answers about an image: give one")
        x = _image(model, image, modality)[None]
        return model.generate([question], images=x)[0]
    return model.generate([question])[0]


def _resolve(image: str, base: Path) -> Path:
    p = Path(image).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return base / p if (base / p).exists() else p


def ask_batch(model: VQAModel, questions: str | Path, out: str | Path, overwrite: bool = False,
              batch_size: int = 8, progress: bool = True) -> dict[str, Any]:
    """Answer every line of the JSONL file ``questions`` into the JSONL file ``out``."""
    src, dst = Path(questions), Path(out)
    if dst.exists() and not overwrite:
        raise InvalidInputError(f"{dst}: exists; pass --overwrite to replace it")
    try:
        lines = src.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InvalidInputError(f"{src}: cannot read ({exc})") from None
    records: list[dict[str, Any]] = []
    pending: list[tuple[int, str, torch.Tensor | None]] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as exc:
            records.append({"line": n, "raw": line[:200], "error": f"{src}:{n}: not valid JSON ({exc})"})
            continue
        if not isinstance(rec, dict) or not str(rec.get("question", "")).strip():
            records.append({"line": n, "raw": line[:200] if not isinstance(rec, dict) else None,
                            **(rec if isinstance(rec, dict) else {}),
                            "error": f"{src}:{n}: needs an object with a 'question'"})
            continue
        records.append(rec)
        x = None
        if model.config.use_image:
            if not rec.get("image"):
                rec["error"] = f"{src}:{n}: needs an 'image'"
                continue
            try:
                x = _image(model, _resolve(str(rec["image"]), src.parent), rec.get("modality"))
            except (ImageReadError, InvalidInputError) as exc:
                rec["error"] = str(exc)
                continue
        pending.append((len(records) - 1, str(rec["question"]), x))
    chunks = [pending[i:i + batch_size] for i in range(0, len(pending), batch_size)]
    if progress and chunks:
        from tqdm import tqdm
        chunks = tqdm(chunks, desc="answering")
    for chunk in chunks:
        images = torch.stack([x for _, _, x in chunk]) if model.config.use_image else None
        for (i, _, _), answer in zip(chunk, model.generate([q for _, q, _ in chunk], images=images)):
            records[i]["answer"] = answer
    with output_lock(dst, is_dir=False):
        if dst.exists() and not overwrite:  # another run wrote it meanwhile
            raise InvalidInputError(f"{dst}: exists; pass --overwrite to replace it")
        atomic_write_text(dst, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    errors = sum("error" in r for r in records)
    return {"answered": len(records) - errors, "errors": errors, "out": str(dst)}
