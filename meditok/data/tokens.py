"""Token files: the discrete codes of many images in one ``.npz``, with where they came from.

A token file holds ``tokens`` ``[N, K, h, w]`` (uint16 when the codebooks allow, else int64),
``paths`` (one source name per grid), ``config`` (the tokenizer's config as JSON, so the
file says which tokenizer it needs) and ``tokenizer_id`` (a short hash of that config).
It is written atomically and read with ``allow_pickle=False``.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from meditok.errors import InvalidInputError
from meditok.utils.config import config_hash
from meditok.utils.io import atomic_write_bytes


@dataclass
class TokenFile:
    """What :func:`read_token_file` returns."""

    tokens: torch.Tensor                 #: int64 [N, K, h, w]
    names: list[str] = field(default_factory=list)
    config: dict[str, Any] | None = None
    tokenizer_id: str | None = None


def token_dtype(codebook_size: int) -> np.dtype:
    """The smallest integer type that stores codes ``0 … codebook_size - 1``."""
    return np.dtype(np.uint16) if codebook_size <= 65536 else np.dtype(np.int64)


def write_token_file(path: str | Path, tokens: torch.Tensor, names: Sequence[str],
                     config: dict[str, Any]) -> Path:
    """Write ``tokens`` ``[N, K, h, w]`` with their source names and the tokenizer config."""
    tokens = torch.as_tensor(tokens)
    if tokens.ndim != 4:
        raise InvalidInputError(f"tokens must be [N, K, h, w], got {list(tokens.shape)}")
    if len(names) != tokens.shape[0]:
        raise InvalidInputError(f"{len(names)} names for {tokens.shape[0]} token grids")
    size = int(config.get("model", {}).get("codebook_size", 65536))
    buf = io.BytesIO()
    np.savez_compressed(buf, tokens=tokens.cpu().numpy().astype(token_dtype(size)),
                        paths=np.array([str(n) for n in names], dtype=str),
                        config=np.array(json.dumps(config)),
                        tokenizer_id=np.array(config_hash(config)))
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def read_token_file(path: str | Path) -> TokenFile:
    """Read a file written by :func:`write_token_file`; anything else is a clear error."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            if "tokens" not in data.files:
                raise InvalidInputError(f"{path}: not a meditok token file (no 'tokens' array; "
                                        f"arrays: {sorted(data.files)})")
            raw = data["tokens"]
            names = [str(p) for p in data["paths"]] if "paths" in data.files else []
            config = json.loads(str(data["config"])) if "config" in data.files else None
            tid = str(data["tokenizer_id"]) if "tokenizer_id" in data.files else None
    except InvalidInputError:
        raise
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise InvalidInputError(f"{path}: not a meditok token file "
                                f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
    if not np.issubdtype(raw.dtype, np.integer):
        raise InvalidInputError(f"{path}: tokens have dtype {raw.dtype}, expected integers")
    return TokenFile(torch.from_numpy(raw.astype(np.int64)), names, config, tid)
