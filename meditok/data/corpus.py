"""Build the offline training corpus from ``../shared/data`` and package samples.

``build_corpus(shared, out)`` writes::

    out/images/{dataset}/{split}/{name}.png   8-bit PNG, or 16-bit HU+1024 PNG for CT slices
    out/manifest.csv / manifest.parquet       identifier, modality, dataset, split, caption, label, source_sha256
    out/rejects.csv                           source, dataset, reason, detail
    out/summary.json / summary.md             counts per modality / dataset / split, rejects per reason
    out/_jobs/{job_id}.json                   finished units of work (resume / idempotence)

    out/_local/sources.csv                    content hash → source path of user files (local only)

Work is cut into small jobs run by ``workers`` processes; a finished job is never redone, a
bad file becomes a reject and the build goes on. A job whose *outputs* cannot be written (disk
full, permissions) is not a reject: nothing is recorded for it, so the next run redoes it, and
the build ends with a one-line error instead of a corpus silently missing images. Only one
build writes a corpus at a time (a lock on ``out``); temporary files of killed writes are
removed when a build starts; worker processes exit when the build process dies.

Splits: MedMNIST keeps its official split; every other item (a whole volume for slices) goes
to train/val/test 80/10/10 by a hash of its name, so re-runs and machines agree. Names of
DICOM-derived and user-supplied (``extra``) images are content hashes, and their rejects are
recorded by content hash too: nothing from DICOM headers or user paths and file names reaches
the curated outputs. The hash → path map is kept in ``_local/sources.csv`` — for the user's
machine only, never to be shared (``meditok data shard`` packs the manifest's images only).
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from meditok.data import sources as S
from meditok.data.corpus_jobs import (OutputWriteError, _worker_init, hash_split, run_job,
                                      source_id)
from meditok.data.manifest import dedup_rows, write_manifest, write_rejects
from meditok.data.volumes import SliceConfig
from meditok.errors import MedITokError
from meditok.utils.io import atomic_write_text, remove_stale_temps
from meditok.utils.lock import output_lock

log = logging.getLogger(__name__)


class CorpusIncompleteError(MedITokError):
    """Some jobs could not write their outputs; rerun the build to finish them."""


def collect_jobs(shared: str | Path | None, sources: list[str] | None = None,
                 extra: list[str | Path] | None = None,
                 extra_csv: str | Path | None = None) -> tuple[list[dict], list[dict]]:
    """All jobs of the selected sources plus static rejects (volumes of unknown modality).

    ``extra``: user files/folders, each optionally ``PATH=MODALITY``; ``extra_csv``: a CSV
    of ``path, modality[, caption, label]`` (paths relative to the CSV's folder)."""
    jobs, rejects = [], []
    if shared is not None:
        shared = Path(shared)
        for name in list(S.SOURCES) if sources is None else sources:  # [] selects none
            if name not in S.SOURCES:
                raise ValueError(f"unknown source {name!r}; choose from {sorted(S.SOURCES)}")
            jobs += S.SOURCES[name](shared)
        if sources is None or "volumes" in sources:
            rejects += S.unknown_volume_rejects(shared)
    if extra or extra_csv:
        jobs += S.extra_jobs(extra or [], extra_csv)
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
                 slice_cfg: SliceConfig | None = None,
                 extra_csv: str | Path | None = None) -> dict[str, Any]:
    """Build (or finish) the corpus; returns the summary dict. See the module docstring.

    Raises :class:`CorpusIncompleteError` when some jobs could not write their outputs
    (nothing is recorded for them; rerun to finish)."""
    out = Path(out)
    jobs, static_rejects = collect_jobs(shared, sources, extra, extra_csv)
    with output_lock(out):
        removed = remove_stale_temps(out)
        if removed:
            log.info("removed %d temporary files left by an interrupted build", len(removed))
        (out / "_jobs").mkdir(parents=True, exist_ok=True)
        results, incomplete = _run_jobs(jobs, out, workers, force, progress, slice_cfg)
        _write_local_map(out, jobs)
        if incomplete:
            shown = "; ".join(f"{j}: {r}" for j, r in incomplete[:3])
            raise CorpusIncompleteError(
                f"{len(incomplete)} of {len(jobs)} jobs could not write their outputs ({shown}); "
                "nothing was recorded for them and no manifest was written — free space (or fix "
                f"permissions) and rerun the same command to finish {out}")
        return _finish(out, results, static_rejects)


def _run_jobs(jobs: list[dict], out: Path, workers: int, force: bool, progress: bool,
              slice_cfg: SliceConfig | None) -> tuple[dict[str, dict], list[tuple[str, str]]]:
    import os

    from tqdm import tqdm

    results: dict[str, dict] = {}
    todo = []
    for job in jobs:
        done = out / "_jobs" / f"{job['job_id']}.json"
        if done.exists() and not force:
            try:
                results[job["job_id"]] = json.loads(done.read_text())
                continue
            except (ValueError, OSError):
                pass  # a damaged record: redo the job
        todo.append(job)
    incomplete: list[tuple[str, str]] = []
    bar = tqdm(total=len(todo), desc="corpus jobs", unit="job", disable=not progress)
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=workers, initializer=_worker_init,
                                 initargs=(os.getpid(),)) as pool:
            futures = {pool.submit(run_job, j, out, slice_cfg): j for j in todo}
            for fut in as_completed(futures):
                j = futures[fut]
                try:
                    results[j["job_id"]] = fut.result()
                except Exception as exc:  # a write failed or a worker died: the job stays undone
                    incomplete.append((j["job_id"], f"{type(exc).__name__}: {exc}"[:200]))
                bar.update()
    else:
        for j in todo:
            try:
                results[j["job_id"]] = run_job(j, out, slice_cfg)
            except OutputWriteError as exc:
                incomplete.append((j["job_id"], str(exc)))
            bar.update()
    bar.close()
    return results, incomplete


def _write_local_map(out: Path, jobs: list[dict]) -> None:
    """content hash → path of the user / DICOM files (local only; never in shared outputs)."""
    import csv
    import io

    items = [it for j in jobs for it in j.get("items", []) if not it.get("name")]
    if not items:
        return
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["source_id", "path"])
    for it in items:
        writer.writerow([source_id(it["src"]), str(Path(it["src"]).resolve())])
    try:
        atomic_write_text(out / "_local" / "sources.csv", buf.getvalue())
    except OSError as exc:
        log.warning("could not write the local source map: %s", exc)


def _finish(out: Path, results: dict[str, dict], static_rejects: list[dict]) -> dict[str, Any]:
    all_rows = sorted((r for res in results.values() for r in res["rows"]), key=lambda r: r["identifier"])
    rejects = static_rejects + [r for res in results.values() for r in res["rejects"]]
    rows, dups = dedup_rows(all_rows)
    rejects += [{"source": d["identifier"], "dataset": d["dataset"], "reason": "duplicate",
                 "detail": d["duplicate_of"]} for d in dups]
    rejects.sort(key=lambda r: (r["dataset"], r["source"]))
    summary = summarize(rows, rejects, len(dups))
    try:
        write_manifest(rows, out / "manifest.csv")
        write_rejects(rejects, out / "rejects.csv")
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
        atomic_write_text(out / "summary.md", summary_markdown(summary))
    except OSError as exc:
        raise CorpusIncompleteError(f"cannot write the manifest in {out} ({exc.strerror or exc}); "
                                    "every job is recorded: rerun the same command") from None
    return summary


__all__ = ["build_corpus", "run_job", "collect_jobs", "hash_split", "summarize",
           "OutputWriteError", "CorpusIncompleteError", "source_id"]
