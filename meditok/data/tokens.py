"""Token files: the discrete codes of many images (and volumes) in one ``.npz``, with what they
came from and what is needed to decode them.

An item is a stack of grids ``[D, K, h, w]``: ``D = 1`` for a 2D image, the slices of a
volume / the frames / the tiles of a multi-frame file otherwise; grids of different items may
differ in size (images keep their aspect). The file holds::

    format        "meditok-tokens-v2"
    tokens        [N, K, h, w] when every item is one 2D grid of the same size (as in the
                  first format, so simple readers keep working); otherwise:
    codes         [K, P] every grid flattened and concatenated (uint16 when the codebooks allow)
    shapes        [N, 3] (D, h, w) of each item
    paths         [N] one name per item (relative to the input root, or a pseudonym)
    items         JSON list, per item: kind (image / volume / frames / tiles), model input
                  size, source size, modality and, for volumes, the geometry (affine, spacing,
                  orientation, plane, slice indices, intensity window)
    config        the tokenizer's config as JSON (the file says which tokenizer it needs)
    tokenizer_id  a short hash of that config

Files of the first format (one ``tokens`` array ``[N, K, h, w]``) are still read. Everything is
read with ``allow_pickle=False``, after checking the zip members' sizes, the shapes against
the codes, and the counts of names against items: a damaged or hostile file is a one-line
:class:`~meditok.errors.InvalidInputError`, never a silent drop or unbounded work.
"""
from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from meditok.errors import InvalidInputError
from meditok.utils.config import config_hash
from meditok.utils.io import atomic_write_bytes

FORMAT = "meditok-tokens-v2"
#: Largest uncompressed array accepted from a token file (a tiny compressed file can
#: otherwise claim gigabytes); raise with ``max_bytes``.
MAX_ARRAY_BYTES = 1 << 30


@dataclass
class TokenItem:
    """One tokenized input: ``grids`` ``[D, K, h, w]`` (int64) and what it came from."""

    name: str
    grids: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return str(self.info.get("kind", "image"))


@dataclass
class TokenFile:
    """What :func:`read_token_file` returns."""

    items: list[TokenItem]
    config: dict[str, Any] | None = None
    tokenizer_id: str | None = None

    @property
    def names(self) -> list[str]:
        return [it.name for it in self.items]

    @property
    def num_grids(self) -> int:
        return sum(int(it.grids.shape[0]) for it in self.items)

    @property
    def tokens(self) -> torch.Tensor:
        """All items as one ``[N, K, h, w]`` tensor — only when every item is a single 2D grid
        and all grids have the same size (use :attr:`items` otherwise)."""
        if not self.items:
            return torch.empty(0, 0, 0, 0, dtype=torch.long)
        shapes = {tuple(it.grids.shape) for it in self.items}
        if len(shapes) != 1 or next(iter(shapes))[0] != 1:
            raise InvalidInputError("token file items differ in size or hold volumes; "
                                    "iterate over TokenFile.items")
        return torch.cat([it.grids for it in self.items])


def token_dtype(codebook_size: int) -> np.dtype:
    """The smallest integer type that stores codes ``0 … codebook_size - 1``."""
    return np.dtype(np.uint16) if codebook_size <= 65536 else np.dtype(np.int64)


def _as_items(tokens: torch.Tensor | Sequence[TokenItem], names: Sequence[str] | None) -> list[TokenItem]:
    if isinstance(tokens, torch.Tensor) or isinstance(tokens, np.ndarray):
        tokens = torch.as_tensor(tokens)
        if tokens.ndim != 4:
            raise InvalidInputError(f"tokens must be [N, K, h, w], got {list(tokens.shape)}")
        names = list(names or [])
        if len(names) != tokens.shape[0]:
            raise InvalidInputError(f"{len(names)} names for {tokens.shape[0]} token grids")
        return [TokenItem(str(n), tokens[i:i + 1], {"kind": "image"}) for i, n in enumerate(names)]
    items = list(tokens)
    if names is not None and list(names) != [it.name for it in items]:
        raise InvalidInputError("names do not match the items")
    return items


def write_token_file(path: str | Path, tokens: torch.Tensor | Sequence[TokenItem],
                     names: Sequence[str] | None, config: dict[str, Any]) -> Path:
    """Write items (or one ``[N, K, h, w]`` tensor with a name per grid) with the tokenizer
    config, atomically."""
    items = _as_items(tokens, names)
    if not items:
        raise InvalidInputError("nothing to write: no token grids")
    k = {int(it.grids.shape[1]) for it in items}
    if len(k) != 1 or any(it.grids.ndim != 4 for it in items):
        raise InvalidInputError("every item must be [D, K, h, w] with the same K")
    size = int(config.get("model", {}).get("codebook_size", 65536))
    dtype = token_dtype(size)
    if len({tuple(it.grids.shape) for it in items}) == 1 and items[0].grids.shape[0] == 1:
        arrays = {"tokens": torch.cat([it.grids for it in items]).cpu().numpy().astype(dtype)}
    else:
        codes = torch.cat([it.grids.permute(1, 0, 2, 3).reshape(next(iter(k)), -1) for it in items], 1)
        arrays = {"codes": codes.cpu().numpy().astype(dtype),
                  "shapes": np.array([[it.grids.shape[0], it.grids.shape[2], it.grids.shape[3]]
                                      for it in items], np.int64)}
    buf = io.BytesIO()
    np.savez_compressed(buf, format=np.array(FORMAT), **arrays,
                        paths=np.array([it.name for it in items], dtype=str),
                        items=np.array(json.dumps([it.info for it in items])),
                        config=np.array(json.dumps(config)),
                        tokenizer_id=np.array(config_hash(config)))
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _not_token_file(path: Path, why: str) -> InvalidInputError:
    return InvalidInputError(f"{path}: not a meditok token file ({why}); token files are the "
                             "'.npz' written by `meditok tokenize`")


def _member_sizes(path: Path, max_bytes: int) -> None:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise _not_token_file(path, f"not a zip archive: {exc}") from None
    for info in infos:
        if info.file_size > max_bytes:
            raise InvalidInputError(f"{path}: member {info.filename} would take "
                                    f"{info.file_size / 2**20:.0f} MiB in memory (limit "
                                    f"{max_bytes / 2**20:.0f} MiB): refused")


def _text(data: Any, key: str) -> str | None:
    if key not in data.files:
        return None
    arr = data[key]
    if arr.dtype.kind not in "US" or arr.ndim != 0:
        raise InvalidInputError(f"'{key}' must be a text scalar")
    return str(arr)


def read_token_file(path: str | Path, max_bytes: int = MAX_ARRAY_BYTES) -> TokenFile:
    """Read a file written by :func:`write_token_file` (or the first format); anything else —
    another file type, pickled objects, inconsistent shapes or counts — is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such token file")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"PK\x03\x04":
        raise _not_token_file(path, "not a .npz archive")
    _member_sizes(path, max_bytes)
    try:
        with np.load(path, allow_pickle=False) as data:
            files = set(data.files)
            if not ({"codes", "shapes"} <= files or "tokens" in files):
                raise _not_token_file(path, f"no token arrays; it holds {sorted(files)[:8]}")
            names = [str(p) for p in data["paths"]] if "paths" in files else None
            if "paths" in files and data["paths"].dtype.kind not in "US":
                raise InvalidInputError("'paths' must be text")
            config_text, tid, items_text = _text(data, "config"), _text(data, "tokenizer_id"), _text(data, "items")
            if "tokens" in files and "codes" not in files:
                raw = data["tokens"]
                shapes = None
            else:
                raw, shapes = data["codes"], data["shapes"]
    except InvalidInputError as exc:
        raise InvalidInputError(str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}") from None
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise _not_token_file(path, "it holds pickled Python objects, which are never loaded") from None
        raise _not_token_file(path, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}") from None
    except (OSError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise _not_token_file(path, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}") from None
    if not np.issubdtype(raw.dtype, np.integer):
        raise InvalidInputError(f"{path}: tokens have dtype {raw.dtype}, expected integers")
    try:
        config = json.loads(config_text) if config_text else None
        infos = json.loads(items_text) if items_text else None
    except ValueError:
        raise InvalidInputError(f"{path}: its config / items metadata is not valid JSON") from None
    items = _split(path, raw, shapes, names, infos)
    return TokenFile(items, config if isinstance(config, dict) else None, tid)


def _split(path: Path, raw: np.ndarray, shapes: np.ndarray | None, names: list[str] | None,
           infos: Any) -> list[TokenItem]:
    """Cut the stored codes into items, checking every count and shape on the way."""
    if shapes is None:  # first format: tokens [N, K, h, w]
        if raw.ndim != 4:
            raise InvalidInputError(f"{path}: tokens must be [N, K, h, w], got {list(raw.shape)}")
        n = raw.shape[0]
        grids = [raw[i:i + 1] for i in range(n)]
    else:
        if raw.ndim != 2 or shapes.ndim != 2 or shapes.shape[1] != 3 or not np.issubdtype(shapes.dtype, np.integer):
            raise InvalidInputError(f"{path}: codes {list(raw.shape)} / shapes {list(shapes.shape)} "
                                    "are not [K, P] / [N, 3]")
        if (shapes < 1).any():
            raise InvalidInputError(f"{path}: grid shapes must be positive")
        sizes = shapes.astype(object).prod(axis=1)  # python ints: no overflow on hostile values
        if int(sizes.sum()) != raw.shape[1]:
            raise InvalidInputError(f"{path}: shapes describe {int(sizes.sum())} positions but "
                                    f"{raw.shape[1]} are stored")
        n, k = shapes.shape[0], raw.shape[0]
        offsets = np.concatenate([[0], np.cumsum(sizes.astype(np.int64))])
        grids = [raw[:, offsets[i]:offsets[i + 1]].reshape(k, *shapes[i]).transpose(1, 0, 2, 3)
                 for i in range(n)]
    if names is None:
        names = [f"image_{i:05d}" for i in range(n)]
    if len(names) != n:
        raise InvalidInputError(f"{path}: {len(names)} names for {n} items: the file is damaged "
                                "(no item is dropped or guessed)")
    if infos is None:
        infos = [{"kind": "image"} for _ in range(n)]
    if not isinstance(infos, list) or len(infos) != n or not all(isinstance(i, dict) for i in infos):
        raise InvalidInputError(f"{path}: item metadata does not match the {n} items")
    return [TokenItem(name, torch.from_numpy(np.ascontiguousarray(g).astype(np.int64)), info)
            for name, g, info in zip(names, grids, infos)]


def check_tokens_for_model(tf: TokenFile, num_codebooks: int, codebook_size: int,
                           max_grid_side: int | None, max_grids: int | None,
                           source: str | Path = "tokens") -> None:
    """Refuse, before any decoding, a token file this model cannot decode or that asks for
    unbounded work: wrong number of sub-codebooks, codes out of range, grids with a side above
    ``max_grid_side`` or more than ``max_grids`` grids in all (``None``: no bound)."""
    if not tf.items:
        raise InvalidInputError(f"{source}: the token file holds no grids")
    for it in tf.items:
        d, k, h, w = it.grids.shape
        if k != num_codebooks:
            raise InvalidInputError(f"{source}: item {it.name!r} has {k} sub-codes per position; "
                                    f"this tokenizer has {num_codebooks} codebooks")
        if max_grid_side is not None and max(h, w) > max_grid_side:
            raise InvalidInputError(
                f"{source}: item {it.name!r} has a {h}x{w} grid, above the {max_grid_side}-per-side "
                "limit for this model (pass --allow-large to decode it anyway)")
        if it.grids.numel() and (int(it.grids.min()) < 0 or int(it.grids.max()) >= codebook_size):
            raise InvalidInputError(f"{source}: item {it.name!r} has codes outside [0, {codebook_size})")
    if max_grids is not None and tf.num_grids > max_grids:
        raise InvalidInputError(f"{source}: {tf.num_grids} grids to decode, above the limit of "
                                f"{max_grids} (pass --allow-large to decode them anyway)")
