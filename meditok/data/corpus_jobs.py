"""The units of work of a corpus build, run in worker processes (see :mod:`meditok.data.corpus`).

A job is a small picklable dict (:mod:`meditok.data.sources`); :func:`run_job` processes it
and records its result in ``out/_jobs/{job_id}.json``. Bad inputs become rejects; an output
that cannot be written raises :class:`OutputWriteError` and nothing is recorded, so the job is
redone by the next build. Rejects of user / DICOM files name them by content hash only.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from meditok.data import sources as S
from meditok.data.benchmarks import iter_medmnist
from meditok.data.manifest import sha256_file
from meditok.data.quality import MEDMNIST_QC, QCConfig, check_quality, proxy_uint8
from meditok.data.readers import MedicalImage, read_image, read_volume
from meditok.data.volumes import SliceConfig, iter_volume_slices, normalize_mri, save_ct_png
from meditok.errors import ImageReadError, MedITokError
from meditok.utils.io import atomic_path, atomic_write_text

#: DICOM BodyPartExamined values specific enough to go into a caption ("PARTIALBODY" is not).
BODY_PARTS = {"head", "brain", "skull", "neck", "chest", "breast", "heart", "abdomen", "pelvis",
              "spine", "knee", "hip", "shoulder", "hand", "foot", "ankle", "elbow", "wrist"}


class OutputWriteError(MedITokError):
    """An output of the corpus could not be written (disk full, permissions): the job stays
    undone rather than being recorded with missing images."""


def _write(fn, path: Path, *args) -> None:
    """Run a writer; an OS error becomes :class:`OutputWriteError` (never a reject)."""
    try:
        fn(path, *args)
    except OSError as exc:
        raise OutputWriteError(f"cannot write {path.name}: {exc.strerror or exc}") from None


def source_id(src: str | Path) -> str:
    """``sha256:<16 hex>`` of a file's bytes: how user files are named in rejects and logs."""
    try:
        return "sha256:" + hashlib.sha256(Path(src).read_bytes()).hexdigest()[:16]
    except OSError:
        return "sha256:" + hashlib.sha256(str(src).encode()).hexdigest()[:16] + "-path"


def _scrub(text: str, src: Path) -> str:
    """Drop the source path and file name from an error message (they can carry identifiers)."""
    for needle in (str(src), str(src.resolve()) if src.exists() else "", src.name):
        if needle:
            text = text.replace(needle, "<source>")
    return text


def hash_split(key: str, val: float = 0.1, test: float = 0.1) -> str:
    """Deterministic train/val/test assignment from a stable key."""
    u = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if u < test else "val" if u < test + val else "train"


def _save_u8(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    if path.exists():
        return
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(arr)).save(tmp, format="PNG")


def _to_storable_u8(img: MedicalImage) -> np.ndarray:
    """8-bit array to store: uint8 as is (alpha dropped), MRI percentile-scaled, others min-max."""
    a = img.array
    if img.kind == "uint8":
        a = a[..., :3] if a.ndim == 3 and a.shape[2] == 4 else a
        return np.clip(a, 0, 255).astype(np.uint8)
    if img.modality == "mri" and a.ndim == 2:
        return np.rint((normalize_mri(a) + 1.0) * 127.5).astype(np.uint8)
    return proxy_uint8(img)


def _row(out: Path, path: Path, modality: str, dataset: str, split: str, caption: str, label: int) -> dict:
    return {"identifier": path.relative_to(out).as_posix(), "modality": modality, "dataset": dataset,
            "split": split, "caption": caption, "label": int(label), "source_sha256": sha256_file(path)}


def _reject_source(item: dict, dataset: str) -> str:
    """Public datasets: their published name; user / DICOM files: a content hash only."""
    return f"{dataset}/{item['name']}" if item.get("name") else source_id(item["src"])


def _file_item(item: dict, job: dict, out: Path) -> tuple[dict | None, dict | None]:
    dataset = item.get("dataset", job["dataset"])
    src = Path(item["src"])
    reject = {"source": _reject_source(item, dataset), "dataset": dataset}
    try:
        img = read_image(src)
    except ImageReadError as exc:
        return None, {**reject, "reason": "unreadable", "detail": _scrub(exc.reason, src)}
    modality, cap = item["modality"], item["caption"]
    if modality == "from_dicom":
        modality = S.HINT_TO_MODALITY.get(img.modality or "", "")
        if not modality:
            return None, {**reject, "reason": "modality_unknown",
                          "detail": f"{img.modality or 'not in the file'}; give it with --extra "
                                    "FOLDER=MODALITY or --extra-csv"}
        part = str(img.meta.get("BodyPartExamined", "")).strip().lower()
        cap = S.caption(modality, f"of the {part}" if part in BODY_PARTS else "")
    elif not cap:
        cap = S.caption(modality)
    qc = check_quality(img, QCConfig())
    if not qc.passed:
        return None, {**reject, "reason": f"qc_{qc.reason}", "detail": json.dumps(qc.stats)}
    name = item["name"] or hashlib.sha256(src.read_bytes()).hexdigest()[:16]
    split = hash_split(f"{dataset}/{name}")
    path = out / "images" / dataset / split / f"{name}.png"
    if img.kind == "hu":
        if not path.exists():
            _write(save_ct_png, path, np.clip(img.array, -1000, 2000))
    else:
        _write(_save_u8, path, _to_storable_u8(img))
    return _row(out, path, modality, dataset, split, cap, item["label"]), None


def _run_files(job: dict, out: Path) -> tuple[list, list]:
    rows, rejects = [], []
    for item in job["items"]:
        try:
            row, rej = _file_item(item, job, out)
        except OutputWriteError:
            raise  # the job stays undone: rerun to finish it
        except Exception as exc:  # never let one bad file stop the build
            src = Path(item["src"])
            row, rej = None, {"source": _reject_source(item, job["dataset"]),
                              "dataset": job["dataset"], "reason": "error",
                              "detail": _scrub(f"{type(exc).__name__}: {exc}", src)}
        (rows.append(row) if row else rejects.append(rej))
    return rows, rejects


def _run_medmnist(job: dict, out: Path) -> tuple[list, list]:
    rows, rejects = [], []
    for split, idx, img, label in iter_medmnist(job["path"], job["split"]):
        qc = check_quality(img, MEDMNIST_QC)
        if not qc.passed:
            rejects.append({"source": f"{job['dataset']}:{split}:{idx}", "dataset": job["dataset"],
                            "reason": f"qc_{qc.reason}", "detail": json.dumps(qc.stats)})
            continue
        path = out / "images" / job["dataset"] / split / f"{split}_{idx:05d}.png"
        _write(_save_u8, path, img.array.astype(np.uint8))
        cap = S.caption(job["modality"], job["detail"], job["classes"].get(str(label), ""))
        rows.append(_row(out, path, job["modality"], job["dataset"], split, cap, label))
    return rows, rejects


def _run_volume(job: dict, out: Path, cfg: SliceConfig) -> tuple[list, list]:
    is_ct = job["modality"] == "CT"
    vol = read_volume(job["src"], modality="ct" if is_ct else "mri")
    split = hash_split(f"{job['dataset']}/{job['name']}")
    qc_cfg = QCConfig(min_side=job.get("qc_min_side", QCConfig.min_side))
    rows, rejects = [], []
    for s in iter_volume_slices(vol, cfg):
        source = f"{job['dataset']}/{job['name']}:{s.plane}{s.index:04d}"
        if not s.kept:
            rejects.append({"source": source, "dataset": job["dataset"], "reason": s.reason,
                            "detail": json.dumps({k: round(v, 3) for k, v in s.stats.items()})})
            continue
        if is_ct:
            qc = check_quality(MedicalImage(s.array, "hu", "ct"), qc_cfg)
        else:
            u8 = np.rint((s.array + 1.0) * 127.5).astype(np.uint8)
            qc = check_quality(u8, qc_cfg)
        if not qc.passed:
            rejects.append({"source": source, "dataset": job["dataset"], "reason": f"qc_{qc.reason}",
                            "detail": json.dumps(qc.stats)})
            continue
        path = out / "images" / job["dataset"] / split / f"{job['name']}_{s.plane}{s.index:04d}.png"
        if is_ct:
            if not path.exists():
                _write(save_ct_png, path, s.array, cfg.ct_offset)
        else:
            _write(_save_u8, path, u8)
        cap = S.caption(job["modality"], job["detail"], f"{s.plane} slice")
        rows.append(_row(out, path, job["modality"], job["dataset"], split, cap, -1))
    return rows, rejects


def run_job(job: dict, out: str | Path, slice_cfg: SliceConfig | None = None) -> dict:
    """Process one job and record its result in ``out/_jobs/{job_id}.json`` (atomic).

    Raises :class:`OutputWriteError` (and records nothing) when an output or the job record
    cannot be written, so the job is redone by the next build."""
    out = Path(out)
    try:
        import torch

        torch.set_num_threads(1)  # one process per core: no oversubscription
        if job["kind"] == "files":
            rows, rejects = _run_files(job, out)
        elif job["kind"] == "medmnist":
            rows, rejects = _run_medmnist(job, out)
        elif job["kind"] == "volume":
            rows, rejects = _run_volume(job, out, slice_cfg or SliceConfig())
        else:
            raise ValueError(f"unknown job kind {job['kind']!r}")
    except OutputWriteError:
        raise
    except Exception as exc:  # a whole unreadable source: one reject, the build goes on
        detail = exc.reason if isinstance(exc, ImageReadError) else f"{type(exc).__name__}: {exc}"
        name = f"{job['dataset']}/{job['name']}" if job.get("name") else job["job_id"]
        rows, rejects = [], [{"source": name, "dataset": job["dataset"],
                              "reason": "unreadable" if isinstance(exc, ImageReadError) else "error",
                              "detail": _scrub(detail, Path(job["src"])) if job.get("src") else detail}]
    result = {"job_id": job["job_id"], "rows": rows, "rejects": rejects}
    _write(atomic_write_text, out / "_jobs" / f"{job['job_id']}.json", json.dumps(result))
    return result


def _worker_init(parent: int) -> None:
    """Pool workers exit when the build process dies (even by SIGKILL): a watchdog thread
    notices the parent is gone (the worker was re-parented) within a second."""
    import os
    import threading
    import time

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=watch, name="meditok-parent-watch", daemon=True).start()
