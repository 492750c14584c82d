"""Build the offline training corpus from ``../shared/data`` and package samples.

``build_corpus(shared, out)`` writes::

    out/images/{dataset}/{split}/{name}.png   8-bit PNG, or 16-bit HU+1024 PNG for CT slices
    out/manifest.csv / manifest.parquet       identifier, modality, dataset, split, caption, label, source_sha256
    out/rejects.csv                           source, dataset, reason, detail
    out/summary.json / summary.md             counts per modality / dataset / split, rejects per reason
    out/_jobs/{job_id}.json                   finished units of work (resume / idempotence)

Work is cut into small jobs run by ``workers`` processes; a finished job is never redone, a
bad file becomes a reject and the build goes on. Splits: MedMNIST keeps its official split;
every other item (a whole volume for slices) goes to train/val/test 80/10/10 by a hash of
its name, so re-runs and machines agree. Names of DICOM-derived images are content hashes:
nothing from DICOM headers or DICOM file names reaches the corpus.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from meditok.data import sources as S
from meditok.data.manifest import dedup_rows, sha256_file, write_manifest, write_rejects
from meditok.data.quality import MEDMNIST_QC, QCConfig, check_quality, proxy_uint8
from meditok.data.benchmarks import iter_medmnist
from meditok.data.readers import MedicalImage, read_image, read_volume
from meditok.data.volumes import SliceConfig, iter_volume_slices, normalize_mri, save_ct_png
from meditok.errors import ImageReadError
from meditok.utils.io import atomic_path, atomic_write_text

log = logging.getLogger(__name__)
#: DICOM BodyPartExamined values specific enough to go into a caption ("PARTIALBODY" is not).
BODY_PARTS = {"head", "brain", "skull", "neck", "chest", "breast", "heart", "abdomen", "pelvis",
              "spine", "knee", "hip", "shoulder", "hand", "foot", "ankle", "elbow", "wrist"}


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


def _file_item(item: dict, job: dict, out: Path) -> tuple[dict | None, dict | None]:
    dataset = item.get("dataset", job["dataset"])
    src = Path(item["src"])
    reject = {"source": str(src), "dataset": dataset}
    try:
        img = read_image(src)
    except ImageReadError as exc:
        return None, {**reject, "reason": "unreadable", "detail": exc.reason}
    modality, cap = item["modality"], item["caption"]
    if modality == "from_dicom":
        modality = S.HINT_TO_MODALITY.get(img.modality or "", "")
        if not modality:
            return None, {**reject, "reason": "modality_unknown", "detail": str(img.modality)}
        part = str(img.meta.get("BodyPartExamined", "")).strip().lower()
        cap = S.caption(modality, f"of the {part}" if part in BODY_PARTS else "")
    qc = check_quality(img, QCConfig())
    if not qc.passed:
        return None, {**reject, "reason": f"qc_{qc.reason}", "detail": json.dumps(qc.stats)}
    name = item["name"] or hashlib.sha256(src.read_bytes()).hexdigest()[:16]
    split = hash_split(f"{dataset}/{name}")
    path = out / "images" / dataset / split / f"{name}.png"
    if img.kind == "hu":
        if not path.exists():
            save_ct_png(path, np.clip(img.array, -1000, 2000))
    else:
        _save_u8(path, _to_storable_u8(img))
    return _row(out, path, modality, dataset, split, cap, item["label"]), None


def _run_files(job: dict, out: Path) -> tuple[list, list]:
    rows, rejects = [], []
    for item in job["items"]:
        try:
            row, rej = _file_item(item, job, out)
        except Exception as exc:  # never let one file stop the build
            row, rej = None, {"source": item["src"], "dataset": job["dataset"], "reason": "error",
                              "detail": f"{type(exc).__name__}: {exc}"}
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
        _save_u8(path, img.array.astype(np.uint8))
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
                save_ct_png(path, s.array, cfg.ct_offset)
        else:
            _save_u8(path, u8)
        cap = S.caption(job["modality"], job["detail"], f"{s.plane} slice")
        rows.append(_row(out, path, job["modality"], job["dataset"], split, cap, -1))
    return rows, rejects


def run_job(job: dict, out: str | Path, slice_cfg: SliceConfig | None = None) -> dict:
    """Process one job and record its result in ``out/_jobs/{job_id}.json`` (atomic)."""
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
    except Exception as exc:  # a whole unreadable source: one reject, the build goes on
        detail = exc.reason if isinstance(exc, ImageReadError) else f"{type(exc).__name__}: {exc}"
        rows, rejects = [], [{"source": job.get("src", job["job_id"]), "dataset": job["dataset"],
                              "reason": "unreadable" if isinstance(exc, ImageReadError) else "error",
                              "detail": detail}]
    result = {"job_id": job["job_id"], "rows": rows, "rejects": rejects}
    atomic_write_text(out / "_jobs" / f"{job['job_id']}.json", json.dumps(result))
    return result


def collect_jobs(shared: str | Path | None, sources: list[str] | None = None,
                 extra: list[str | Path] | None = None) -> tuple[list[dict], list[dict]]:
    """All jobs of the selected sources plus static rejects (volumes of unknown modality)."""
    jobs, rejects = [], []
    if shared is not None:
        shared = Path(shared)
        for name in sources or list(S.SOURCES):
            if name not in S.SOURCES:
                raise ValueError(f"unknown source {name!r}; choose from {sorted(S.SOURCES)}")
            jobs += S.SOURCES[name](shared)
        if sources is None or "volumes" in sources:
            rejects += S.unknown_volume_rejects(shared)
    if extra:
        jobs += S.folder_jobs([Path(p) for p in extra])
    return jobs, rejects


def summarize(rows: list[dict], rejects: list[dict], duplicates: int) -> dict[str, Any]:
    return {"images": len(rows), "rejects": len(rejects), "duplicates_dropped": duplicates,
            "per_modality": dict(sorted(Counter(r["modality"] for r in rows).items())),
            "per_dataset": dict(sorted(Counter(r["dataset"] for r in rows).items())),
            "per_split": dict(sorted(Counter(r["split"] for r in rows).items())),
            "rejects_per_reason": dict(sorted(Counter(r["reason"] for r in rejects).items()))}


def summary_markdown(summary: dict[str, Any]) -> str:
    lines = ["# Corpus summary", "", f"images: {summary['images']}, rejects: {summary['rejects']}, "
             f"duplicates dropped: {summary['duplicates_dropped']}", ""]
    for key in ("per_modality", "per_dataset", "per_split", "rejects_per_reason"):
        lines += [f"## {key.replace('_', ' ')}", "", "| name | count |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in summary[key].items()] + [""]
    return "\n".join(lines)


def build_corpus(shared: str | Path | None, out: str | Path, workers: int = 2,
                 sources: list[str] | None = None, extra: list[str | Path] | None = None,
                 force: bool = False, progress: bool = True,
                 slice_cfg: SliceConfig | None = None) -> dict[str, Any]:
    """Build (or finish) the corpus; returns the summary dict. See the module docstring."""
    from tqdm import tqdm

    out = Path(out)
    (out / "_jobs").mkdir(parents=True, exist_ok=True)
    jobs, static_rejects = collect_jobs(shared, sources, extra)
    results: dict[str, dict] = {}
    todo = []
    for job in jobs:
        done = out / "_jobs" / f"{job['job_id']}.json"
        if done.exists() and not force:
            try:
                results[job["job_id"]] = json.loads(done.read_text())
                continue
            except ValueError:
                pass
        todo.append(job)
    bar = tqdm(total=len(todo), desc="corpus jobs", unit="job", disable=not progress)
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(run_job, j, out, slice_cfg): j for j in todo}
            for fut in as_completed(futures):
                j = futures[fut]
                try:
                    results[j["job_id"]] = fut.result()
                except Exception as exc:  # a worker died: record and go on
                    results[j["job_id"]] = {"rows": [], "rejects": [
                        {"source": j["job_id"], "dataset": j["dataset"], "reason": "error",
                         "detail": f"{type(exc).__name__}: {exc}"}]}
                bar.update()
    else:
        for j in todo:
            results[j["job_id"]] = run_job(j, out, slice_cfg)
            bar.update()
    bar.close()
    all_rows = sorted((r for res in results.values() for r in res["rows"]), key=lambda r: r["identifier"])
    rejects = static_rejects + [r for res in results.values() for r in res["rejects"]]
    rows, dups = dedup_rows(all_rows)
    rejects += [{"source": d["identifier"], "dataset": d["dataset"], "reason": "duplicate",
                 "detail": d["duplicate_of"]} for d in dups]
    rejects.sort(key=lambda r: (r["dataset"], r["source"]))
    write_manifest(rows, out / "manifest.csv")
    write_rejects(rejects, out / "rejects.csv")
    summary = summarize(rows, rejects, len(dups))
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    atomic_write_text(out / "summary.md", summary_markdown(summary))
    return summary


__all__ = ["build_corpus", "run_job", "collect_jobs", "hash_split", "summarize"]
