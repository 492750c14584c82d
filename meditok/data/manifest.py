"""Corpus manifests (CSV + Parquet) and reject lists.

A manifest row is ``identifier, modality, dataset, split, caption, label, source_sha256``:
``identifier`` is the image path relative to the corpus root, ``source_sha256`` the SHA-256
of the stored image file (used to drop exact duplicates). Rows never carry DICOM patient
attributes: identifiers are built by the corpus builder from dataset names and counters or
hashes, never from DICOM headers or original DICOM file names.
"""
from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path
from typing import Iterable

from meditok.errors import InvalidInputError
from meditok.utils.io import atomic_path, atomic_write_text
from meditok.utils.lazy import require

COLUMNS = ("identifier", "modality", "dataset", "split", "caption", "label", "source_sha256")
REJECT_COLUMNS = ("source", "dataset", "reason", "detail")
#: The paper's eight modalities (manifest spelling).
MODALITIES = ("CT", "MRI", "X-ray", "ultrasound", "dermoscopy", "endoscopy", "fundus", "pathology")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dedup_rows(rows: Iterable[dict]) -> tuple[list[dict], list[dict]]:
    """Keep the first row of each ``source_sha256``; return ``(unique, duplicates)``."""
    seen: dict[str, str] = {}
    unique, dups = [], []
    for r in rows:
        key = r["source_sha256"]
        if key in seen:
            dups.append({**r, "duplicate_of": seen[key]})
        else:
            seen[key] = r["identifier"]
            unique.append(r)
    return unique, dups


def _csv_text(rows: list[dict], columns: tuple[str, ...]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: r.get(c, "") for c in columns})
    return buf.getvalue()


def write_manifest(rows: list[dict], path: str | Path, parquet: bool = True) -> list[Path]:
    """Write ``rows`` to ``path`` (``.csv``) and, if asked, the same table next to it as Parquet."""
    path = Path(path).with_suffix(".csv")
    for r in rows:
        missing = [c for c in COLUMNS if c not in r]
        if missing:
            raise ValueError(f"manifest row {r.get('identifier')!r} lacks columns {missing}")
    atomic_write_text(path, _csv_text(rows, COLUMNS))
    written = [path]
    if parquet:
        pd = require("pandas", "data")
        require("pyarrow", "data")
        frame = pd.DataFrame([{c: r[c] for c in COLUMNS} for r in rows], columns=list(COLUMNS))
        frame["label"] = frame["label"].astype("int64")
        with atomic_path(path.with_suffix(".parquet")) as tmp:
            frame.to_parquet(tmp, index=False)
        written.append(path.with_suffix(".parquet"))
    return written


def write_rejects(rejects: list[dict], path: str | Path) -> Path:
    """Write the reject list (``source, dataset, reason, detail``) as CSV."""
    path = Path(path)
    atomic_write_text(path, _csv_text(rejects, REJECT_COLUMNS))
    return path


def read_manifest(path: str | Path) -> list[dict]:
    """Read a manifest written by :func:`write_manifest` (``.csv`` or ``.parquet``)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: manifest not found")
    if path.suffix == ".parquet":
        pd = require("pandas", "data")
        rows = pd.read_parquet(path).to_dict("records")
    else:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    if rows and "identifier" not in rows[0]:
        raise InvalidInputError(f"{path}: manifest has no 'identifier' column "
                                f"(columns: {sorted(rows[0])})")
    for r in rows:
        r["label"] = int(r.get("label", -1) if r.get("label", "") != "" else -1)
        for c in COLUMNS:
            if c != "label":
                r[c] = "" if r.get(c) is None else str(r.get(c))
    return rows
