"""Token shards: a whole manifest tokenised once, for sequence models to train on.

``meditok synth pretokenize`` turns every image of a corpus manifest into its ``[K, h, w]``
token grid. A shard folder holds::

    index.json        format, the tokenizer's identity, the manifest it came from, the shards
    shard-00000.npz   tokens [n, K, h, w] uint16 + identifier, modality, dataset, label, split,
                      row (index in the manifest); the rows that could not be read (+ reason)
    ...
    skipped.csv       every unreadable row and why (written when the run completes)

Shard ``i`` covers manifest rows ``[i·S, (i+1)·S)``; each shard and the index are written
atomically, and the index lists the shards already done, so an interrupted run resumes
where it stopped and never writes half a shard.

**Identity.** The index records the tokenizer's ``tokenizer_id`` (``config_hash`` of its
config, as token files do) *and* a fingerprint of its weights: a stage-1-only tokenizer and
its stage-2 child share the architecture, hence the config hash, but not the codes, so
tokens are only exchangeable between models with the same weights. A consumer (a GPT) calls
:func:`check_same_tokenizer` and refuses tokens of another tokenizer.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from meditok.data.modalities import modality_key
from meditok.data.tokens import token_dtype
from meditok.errors import ImageReadError, InvalidInputError, MedITokError
from meditok.utils.config import config_hash
from meditok.utils.io import atomic_write_bytes, atomic_write_text

FORMAT = "meditok-token-shards/1"
INDEX_NAME = "index.json"
LABEL_FIELDS = ("identifier", "modality", "dataset", "label", "split", "row")


# ----------------------------------------------------------------------------- identity
def weights_fingerprint(model: torch.nn.Module) -> str:
    """Short sha256 of every tensor of ``model.state_dict()`` (names, shapes, fp32 values)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        t = t.float() if t.is_floating_point() else t
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def tokenizer_identity(tokenizer, spec: str | None = None) -> dict[str, Any]:
    """What a token consumer needs to know about the tokenizer that made its tokens."""
    cfg = tokenizer.config
    m = cfg.model
    grid = m.grid_size()
    return {"spec": str(spec) if spec is not None else None,
            "name": (cfg.meta or {}).get("name"),
            "tokenizer_id": config_hash(cfg.to_dict()),
            "weights": weights_fingerprint(tokenizer),
            "grid": [int(grid), int(grid)],
            "num_codebooks": int(m.num_codebooks), "codebook_size": int(m.codebook_size),
            "image_size": int(cfg.preprocess.image_size)}


def describe_tokenizer(ident: dict[str, Any]) -> str:
    label = ident.get("spec") or ident.get("name") or "unnamed tokenizer"
    return f"{label!r} (config {ident.get('tokenizer_id')}, weights {ident.get('weights')})"


def same_tokenizer(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.get("tokenizer_id") == b.get("tokenizer_id") and a.get("weights") == b.get("weights")


def check_same_tokenizer(found: dict[str, Any], expected: dict[str, Any], where: str,
                         needed_by: str = "this model") -> None:
    """Raise :class:`InvalidInputError` unless ``found`` and ``expected`` name one tokenizer."""
    if not same_tokenizer(found, expected):
        raise InvalidInputError(
            f"{where}: tokens were made by tokenizer {describe_tokenizer(found)}, but {needed_by} "
            f"needs tokenizer {describe_tokenizer(expected)}; tokens of another tokenizer mean "
            f"other codes. Pretokenize again with --tokenizer {expected.get('spec') or '<that tokenizer>'}")


# ----------------------------------------------------------------------------- reading
@dataclass
class TokenShards:
    """All shards of a folder, concatenated (tokens stay uint16 in memory)."""

    root: Path
    tokens: np.ndarray                       #: [N, K, h, w]
    labels: dict[str, np.ndarray]            #: one array per LABEL_FIELDS entry
    tokenizer: dict[str, Any]
    index: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def select(self, mask: np.ndarray) -> "TokenShards":
        mask = np.asarray(mask)
        return TokenShards(self.root, self.tokens[mask], {k: v[mask] for k, v in self.labels.items()},
                           self.tokenizer, self.index)

    def split(self, name: str | None) -> "TokenShards":
        return self if not name else self.select(self.labels["split"] == name)

    def counts(self, key: str = "modality") -> dict[str, int]:
        values, n = np.unique(self.labels[key], return_counts=True)
        return {str(v): int(c) for v, c in zip(values, n)}


def read_index(root: str | Path) -> dict[str, Any]:
    root = Path(root)
    path = root / INDEX_NAME
    if not path.is_file():
        raise InvalidInputError(f"{root}: not a token shard folder (no {INDEX_NAME}; make one with "
                                "'meditok synth pretokenize')")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{path}: cannot read the shard index ({exc})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise InvalidInputError(f"{path}: not a {FORMAT} index")
    return index


def load_token_shards(root: str | Path, expected_tokenizer: dict[str, Any] | None = None,
                      needed_by: str = "this model") -> TokenShards:
    """Read a complete shard folder; with ``expected_tokenizer`` refuse other tokenizers' tokens."""
    root = Path(root)
    index = read_index(root)
    if expected_tokenizer is not None:
        check_same_tokenizer(index["tokenizer"], expected_tokenizer, str(root), needed_by)
    if not index.get("complete"):
        done, total = len(index.get("shards", [])), index.get("num_shards", "?")
        raise InvalidInputError(f"{root}: pretokenisation did not finish ({done} of {total} shards); "
                                "run the same 'meditok synth pretokenize' command again to resume")
    tokens, labels = [], {k: [] for k in LABEL_FIELDS}
    for entry in index["shards"]:
        path = root / entry["file"]
        try:
            with np.load(path, allow_pickle=False) as data:
                tokens.append(data["tokens"])
                for k in LABEL_FIELDS:
                    labels[k].append(data[k])
        except (OSError, ValueError, KeyError, EOFError) as exc:
            raise InvalidInputError(f"{path}: unreadable token shard ({type(exc).__name__}: {exc})") from None
    ident = index["tokenizer"]
    shape = (0, ident["num_codebooks"], *ident["grid"])
    toks = np.concatenate(tokens) if tokens else np.zeros(shape, np.uint16)
    labs = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in labels.items()}
    return TokenShards(root, toks, labs, ident, index)


# ----------------------------------------------------------------------------- writing
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_shard(path: Path, tokens: np.ndarray, labels: dict[str, list], skipped: list[tuple[str, str]]) -> None:
    buf = io.BytesIO()
    arrays = {"tokens": tokens,
              "identifier": np.array(labels["identifier"], dtype=str),
              "modality": np.array(labels["modality"], dtype=str),
              "dataset": np.array(labels["dataset"], dtype=str),
              "label": np.array(labels["label"], dtype=np.int64),
              "split": np.array(labels["split"], dtype=str),
              "row": np.array(labels["row"], dtype=np.int64),
              "skipped_identifier": np.array([s[0] for s in skipped], dtype=str),
              "skipped_reason": np.array([s[1] for s in skipped], dtype=str)}
    np.savez(buf, **arrays)  # uint16 codes barely compress; plain npz keeps loading fast
    atomic_write_bytes(path, buf.getvalue())


def pretokenize(manifest: str | Path, tokenizer, out_dir: str | Path, *, spec: str | None = None,
                splits: Sequence[str] | None = None, shard_size: int = 1024, batch_size: int = 32,
                overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Tokenise every row of ``manifest`` (optionally only ``splits``) into shards in ``out_dir``.

    Resumes an interrupted run with the same manifest, tokenizer and shard size; refuses a
    folder made from anything else unless ``overwrite``. Unreadable images are skipped and
    reported. Returns the index.
    """
    from tqdm.auto import tqdm

    from meditok.data.manifest import read_manifest
    from meditok.data.preprocess import load_image

    manifest, out = Path(manifest), Path(out_dir)
    rows = read_manifest(manifest)
    if splits:
        rows = [r for r in rows if r.get("split") in set(splits)]
    if not rows:
        raise InvalidInputError(f"{manifest}: no rows" + (f" in splits {list(splits)}" if splits else ""))
    if shard_size < 1 or batch_size < 1:
        raise InvalidInputError("shard_size and batch_size must be >= 1")
    ident = tokenizer_identity(tokenizer, spec)
    source = {"manifest": str(manifest.resolve()), "manifest_sha256": _sha256(manifest),
              "splits": sorted(splits) if splits else None, "shard_size": int(shard_size)}
    num_shards = (len(rows) + shard_size - 1) // shard_size
    index: dict[str, Any] = {"format": FORMAT, "tokenizer": ident, "source": source,
                             "num_rows": len(rows), "num_shards": num_shards, "shards": [],
                             "complete": False}
    if (out / INDEX_NAME).exists():
        old = read_index(out)
        old_src = old.get("source", {})
        differs = [what for what, bad in (
            (f"tokenizer {describe_tokenizer(old['tokenizer'])}", not same_tokenizer(old["tokenizer"], ident)),
            (f"manifest {old_src.get('manifest')} (another sha256)",
             old_src.get("manifest_sha256") != source["manifest_sha256"]),
            (f"splits {old_src.get('splits')}", old_src.get("splits") != source["splits"])) if bad]
        if overwrite:
            for entry in old.get("shards", []):
                (out / entry["file"]).unlink(missing_ok=True)
        elif differs:
            raise MedITokError(f"{out} holds tokens made from another input: {'; '.join(differs)}; "
                               "pass --overwrite to replace them")
        elif old.get("complete"):
            return old
        else:  # resume with the shard layout the interrupted run chose
            shard_size = int(old_src.get("shard_size", shard_size))
            source["shard_size"] = shard_size
            num_shards = (len(rows) + shard_size - 1) // shard_size
            index.update(source=source, num_shards=num_shards)
            index["shards"] = [e for e in old["shards"] if (out / e["file"]).is_file()]
    out.mkdir(parents=True, exist_ok=True)
    done = {e["index"] for e in index["shards"]}
    device = next(tokenizer.parameters()).device
    pre = tokenizer.config.preprocess
    dtype = token_dtype(ident["codebook_size"])
    bar = tqdm(total=len(rows), desc="pretokenize", unit="img", disable=not progress,
               initial=sum(e["rows"][1] - e["rows"][0] for e in index["shards"]))
    for i in range(num_shards):
        if i in done:
            continue
        start, stop = i * shard_size, min((i + 1) * shard_size, len(rows))
        grids, labels = [], {k: [] for k in LABEL_FIELDS}
        skipped: list[tuple[str, str]] = []
        for b0 in range(start, stop, batch_size):
            images, kept = [], []
            for r in range(b0, min(b0 + batch_size, stop)):
                row = rows[r]
                path = Path(row["identifier"])
                path = path if path.is_absolute() else manifest.parent / path
                mod = modality_key(row.get("modality")) or "unknown"
                try:
                    images.append(load_image(path, pre, modality=None if mod == "unknown" else mod))
                    kept.append((r, row, mod))
                except ImageReadError as exc:
                    skipped.append((row["identifier"], exc.reason))
            if images:
                grids.append(tokenizer.tokenize(torch.stack(images).to(device)).cpu().numpy().astype(dtype))
            for r, row, mod in kept:
                labels["identifier"].append(row["identifier"])
                labels["modality"].append(mod)
                labels["dataset"].append(row.get("dataset") or "")
                labels["label"].append(int(row.get("label", -1)))
                labels["split"].append(row.get("split") or "")
                labels["row"].append(r)
            bar.update(min(b0 + batch_size, stop) - b0)
        shape = (0, ident["num_codebooks"], *ident["grid"])
        tokens = np.concatenate(grids) if grids else np.zeros(shape, dtype)
        name = f"shard-{i:05d}.npz"
        _write_shard(out / name, tokens, labels, skipped)
        index["shards"].append({"index": i, "file": name, "rows": [start, stop],
                                "count": int(tokens.shape[0]), "skipped": len(skipped)})
        index["shards"].sort(key=lambda e: e["index"])
        atomic_write_text(out / INDEX_NAME, json.dumps(index, indent=2))
    bar.close()
    index["complete"] = True
    index["num_tokenized"] = sum(e["count"] for e in index["shards"])
    index["num_skipped"] = sum(e["skipped"] for e in index["shards"])
    _write_skipped(out, index)
    atomic_write_text(out / INDEX_NAME, json.dumps(index, indent=2))
    return index


def save_token_shards(shards: TokenShards, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write ``shards`` (e.g. a :meth:`TokenShards.select` subset) as a complete one-shard folder."""
    out = Path(out_dir)
    if (out / INDEX_NAME).exists() and not overwrite:
        raise MedITokError(f"{out} already holds token shards; pass overwrite=True to replace them")
    out.mkdir(parents=True, exist_ok=True)
    _write_shard(out / "shard-00000.npz", shards.tokens, {k: v.tolist() for k, v in shards.labels.items()}, [])
    index = {"format": FORMAT, "tokenizer": dict(shards.tokenizer),
             "source": {**shards.index.get("source", {}), "subset_of": str(shards.root)},
             "num_rows": len(shards), "num_shards": 1, "complete": True,
             "shards": [{"index": 0, "file": "shard-00000.npz", "rows": [0, len(shards)],
                         "count": len(shards), "skipped": 0}],
             "num_tokenized": len(shards), "num_skipped": 0}
    atomic_write_text(out / INDEX_NAME, json.dumps(index, indent=2))
    return out


def _write_skipped(out: Path, index: dict[str, Any]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["identifier", "reason"])
    for entry in index["shards"]:
        with np.load(out / entry["file"], allow_pickle=False) as data:
            for ident, reason in zip(data["skipped_identifier"], data["skipped_reason"]):
                writer.writerow([str(ident), str(reason)])
    atomic_write_text(out / "skipped.csv", buf.getvalue())
