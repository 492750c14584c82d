"""Batch jobs over the user's files: tokenize to an ``.npz``, detokenize, reconstruct with panels.

The rules every job follows:

* Every input item is named before anything is read (:mod:`meditok.data.inputs`): relative to
  the input root, unique, or a content hash with ``pseudonymize`` (the source paths then go to
  a local-only map, ``_local/sources.csv`` in an output folder or ``<out>.sources.csv`` next to
  a token file). A file that fails never shifts another file's name.
* Each item either succeeds or is reported with its reason — any exception type, caught at
  the item (or batch) boundary — and the batch goes on.
* Images run at the resize policy's resolution (:mod:`meditok.tokenizer.resolution`; default
  aspect-preserving, longer side 256) and the resolutions used are reported.
* Volumes, DICOM series and multi-frame files are processed whole
  (:mod:`~meditok.tokenizer.volume_jobs`, :mod:`~meditok.tokenizer.frame_jobs`) when the inputs
  are :class:`~meditok.data.inputs.InputItem` s from ``collect_inputs(..., volumes=True)`` —
  what the CLI passes — or when ``volumes=True``; plain paths with the default
  ``volumes=False`` are 2D images as :func:`meditok.data.readers.read_image` reads them (the
  middle slice of a volume, as the demo shows its MNI sample).
* The output is locked (:mod:`meditok.utils.lock`) for the whole job, written atomically, and
  never overwritten unless ``overwrite=True``.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from meditok.data.inputs import InputItem, collect_inputs, output_names, write_local_map
from meditok.data.modalities import modality_key
from meditok.data.readers import read_image
from meditok.data.tokens import TokenItem, read_token_file, write_token_file
from meditok.errors import MedITokError
from meditok.tokenizer import resolution as R
from meditok.tokenizer.model import MedITok
from meditok.tokenizer.panels import error_map  # noqa: F401  (re-exported: jobs.error_map)
from meditok.utils.io import atomic_path, remove_stale_temps
from meditok.utils.lock import output_lock


@dataclass
class BatchReport:
    """What a batch job did: items processed, items skipped (with reasons), resolutions used."""

    done: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    resolutions: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    downsample: int = 8

    def summary(self) -> str:
        lines = [f"{len(self.done)} processed, {len(self.skipped)} skipped"]
        if self.resolutions:
            lines.append("model input: " + R.describe(self.resolutions, self.downsample))
        lines += self.notes
        lines += [f"  skipped {name}: {reason}" for name, reason in self.skipped]
        return "\n".join(lines)


def _device(model: MedITok) -> torch.device:
    """Inputs go where the model is (callers place the model; jobs never move it)."""
    return model.logit_scale.device


def _refuse_overwrite(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise MedITokError(f"{path} already exists; pass --overwrite to replace it")


def _reason(exc: BaseException) -> str:
    """One line for the report: our errors say it themselves, anything else is named."""
    if isinstance(exc, MedITokError):
        text = getattr(exc, "reason", None) or str(exc)
    else:
        text = f"unexpected {type(exc).__name__}: {exc}"
    return " ".join(str(text).split())[:300]


def as_items(inputs: Sequence[Path | str | InputItem], volumes: bool = False) -> list[InputItem]:
    """Items of paths (files/folders, :func:`meditok.data.inputs.collect_inputs`) or items."""
    if all(isinstance(i, InputItem) for i in inputs):
        return list(inputs)  # type: ignore[arg-type]
    return collect_inputs([Path(i) for i in inputs], volumes)  # type: ignore[arg-type]


def policy_for(model: MedITok, size: int | str | None = None, resize: str = "keep-aspect",
               allow_large: bool = False) -> R.Resolution:
    try:
        return R.Resolution.parse(size, resize, model.config.model.downsample, allow_large)
    except ValueError as exc:
        raise MedITokError(str(exc)) from None


class _Batcher:
    """Groups model inputs of the same size into batches; a failing batch reports its items."""

    def __init__(self, run: Callable[[list[int], torch.Tensor], None],
                 fail: Callable[[int, str], None], batch_size: int):
        self.run, self.fail, self.batch_size = run, fail, max(1, batch_size)
        self.pending: dict[tuple, list[tuple[int, torch.Tensor]]] = {}

    def add(self, key: int, x: torch.Tensor) -> None:
        bucket = self.pending.setdefault(tuple(x.shape), [])
        bucket.append((key, x))
        if len(bucket) >= self.batch_size:
            self._run(tuple(x.shape))
        elif sum(len(b) for b in self.pending.values()) >= 4 * self.batch_size:
            self.flush()  # many distinct sizes: bound the memory held in waiting inputs

    def _run(self, shape: tuple) -> None:
        bucket = self.pending.pop(shape, [])
        if not bucket:
            return
        keys = [k for k, _ in bucket]
        try:
            self.run(keys, torch.stack([x for _, x in bucket]))
        except Exception as exc:  # noqa: BLE001 - the batch's items are reported, the job goes on
            for k in keys:
                self.fail(k, _reason(exc))

    def flush(self) -> None:
        for shape in list(self.pending):
            self._run(shape)


@dataclass
class _Job:
    """The common skeleton: items, their stored labels, output stems, the report."""

    model: MedITok
    items: list[InputItem]
    pseudonymize: bool
    policy: R.Resolution
    modality: str | None
    modalities: dict[str, str]
    planes: tuple[str, ...] = ("axial",)

    def __post_init__(self) -> None:
        from meditok.tokenizer.item_jobs import plane_suffix

        # Output stems for every (item, plane) at once, so that no two outputs can collide.
        expanded = [(i, p) for i, it in enumerate(self.items)
                    for p in (self.planes if it.kind != "image" else ("",))]
        stems = output_names([self.items[i] for i, _ in expanded], self.pseudonymize,
                             [plane_suffix(p) if p else "" for _, p in expanded])
        self.plane_stems: dict[int, dict[str, str]] = {}
        for (i, p), stem in zip(expanded, stems):
            self.plane_stems.setdefault(i, {})[p] = stem
        self.stems = [next(iter(self.plane_stems[i].values())) for i in range(len(self.items))]
        self.labels = (output_names(self.items, True) if self.pseudonymize
                       else [it.name for it in self.items])
        self.report = BatchReport(downsample=self.model.config.model.downsample)
        self.failed: set[int] = set()

    def modality_of(self, i: int) -> str | None:
        return self.modalities.get(str(self.items[i].path), self.modality)

    def fail(self, i: int, reason: str) -> None:
        self.failed.add(i)
        self.report.skipped.append((self.items[i].name, reason))

    def image_input(self, i: int) -> tuple[torch.Tensor, str]:
        """The model input of a 2D item and its source size ``"HxW"``."""
        mod = self.modality_of(i)
        img = read_image(self.items[i].path, modality=modality_key(mod))
        x = R.model_input(img, self.model.config.preprocess, self.policy, mod)
        return x, f"{img.array.shape[0]}x{img.array.shape[1]}"

    def each(self, handle: Callable[[int], None], desc: str) -> None:
        for i in tqdm(range(len(self.items)), desc=desc, unit="item"):
            try:
                handle(i)
            except Exception as exc:  # noqa: BLE001 - any failure is this item's, not the batch's
                self.fail(i, _reason(exc))

    def finish(self, order: dict[int, object]) -> list:
        """Results in input order (every item either produced a result or is in ``skipped``)."""
        self.report.done = [self.items[i].name for i in sorted(order) if i not in self.failed]
        return [order[i] for i in sorted(order) if i not in self.failed]


def _planes(planes: Sequence[str], step: int) -> tuple[str, ...]:
    from meditok.data.volumes import PLANES

    bad = [p for p in planes if p not in PLANES]
    if bad or not planes:
        raise MedITokError(f"--planes must be among {PLANES}, got {list(planes)}")
    if int(step) < 1:
        raise MedITokError(f"--step must be >= 1, got {step}")
    return tuple(dict.fromkeys(planes))


def _local_map_path(out: Path, is_dir: bool) -> Path:
    return out / "_local" / "sources.csv" if is_dir else out.with_name(out.name + ".sources.csv")


# ----------------------------------------------------------------------------- tokenize
def tokenize_files(model: MedITok, paths: Sequence[Path | str | InputItem], out: str | Path,
                   batch_size: int = 16, overwrite: bool = False, modality: str | None = None, *,
                   size: int | str | None = None, resize: str = "keep-aspect",
                   allow_large: bool = False, pseudonymize: bool = False,
                   planes: Sequence[str] = ("axial",), step: int = 1,
                   volumes: bool = False, modalities: dict[str, str] | None = None,
                   precision: str = "fp32") -> BatchReport:
    """Tokenize files, volumes and series into one token file (:mod:`meditok.data.tokens`).

    ``precision="bf16"`` is the opt-in fast mode (encoder under bf16 autocast: ~97 % of tokens
    equal to fp32 on real images, see benchmarks/results/throughput_modes_*.md)."""
    from meditok.tokenizer import item_jobs

    out = Path(out)
    job = _Job(model, as_items(paths, volumes), pseudonymize, policy_for(model, size, resize, allow_large),
               modality, modalities or {}, _planes(planes, step))
    results: dict[int, list[TokenItem]] = {}

    def run(keys: list[int], x: torch.Tensor) -> None:
        tok = model.tokenize(x.to(_device(model)), precision).cpu()
        for k, t in zip(keys, tok):
            hw = list(x.shape[-2:])
            results[k] = [TokenItem(job.labels[k], t[None], {"kind": "image", "input_size": hw,
                                                              "modality": job.modality_of(k)})]
            job.report.resolutions[tuple(hw)] += 1

    batcher = _Batcher(run, job.fail, batch_size)

    def handle(i: int) -> None:
        item = job.items[i]
        if item.kind == "image":
            batcher.add(i, job.image_input(i)[0])
            return
        got = item_jobs.tokenize_item(model, item, job.labels[i], job.modality_of(i), job.policy,
                                      tuple(planes), step, batch_size)
        if isinstance(got, torch.Tensor):  # a one-slice volume: an image after all
            batcher.add(i, got)
            return
        results[i] = got
        for t in got:
            job.report.resolutions[tuple(t.info["input_size"])] += int(t.grids.shape[0])

    with output_lock(out, is_dir=False):
        _refuse_overwrite(out, overwrite)
        job.each(handle, "tokenize")
        batcher.flush()
        done = job.finish(results)
        if not done:
            raise MedITokError("no readable input among the inputs:\n" + job.report.summary())
        write_token_file(out, [t for group in done for t in group], None, model.config.to_dict())
        if pseudonymize:
            write_local_map(_local_map_path(out, False), job.items, job.labels)
            job.report.notes.append(f"pseudonym → source map (keep it local): {_local_map_path(out, False)}")
    return job.report


def load_tokens(path: str | Path) -> tuple[torch.Tensor, list[str]]:
    """Read a token file of same-size 2D grids → (tokens [N,K,h,w], source names)."""
    tf = read_token_file(path)
    return tf.tokens, tf.names


def save_png(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


# ----------------------------------------------------------------------------- reconstruct
def write_csv(path: Path, rows: list[dict]) -> None:
    """Rows as CSV (atomic), columns :data:`FIELDS`."""
    import csv
    import io

    from meditok.utils.io import atomic_write_text

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


FIELDS = ["source", "output", "kind", "modality", "source_size", "model_size", "grid", "psnr", "ssim"]


def reconstruct_files(model: MedITok, paths: Sequence[Path | str | InputItem], out_dir: str | Path,
                      batch_size: int = 8, overwrite: bool = False,
                      modalities: dict[str, str] | None = None,
                      modality: str | None = None, *, size: int | str | None = None,
                      resize: str = "keep-aspect", allow_large: bool = False,
                      pseudonymize: bool = False, planes: Sequence[str] = ("axial",),
                      step: int = 1, volumes: bool = False,
                      precision: str = "fp32") -> tuple[BatchReport, list[dict]]:
    """Write ``<name>.png`` panels (input | reconstruction | |error|) and ``metrics.csv``;
    volumes also get ``<name>_<plane>.nii.gz`` in their source geometry.

    PSNR/SSIM (SSIM in 0–1 units, as everywhere in meditok) are computed on the model-input
    images mapped to [0, 1] (``data_range=1``); for volumes over the voxels of the source grid
    in the windowed domain. ``modalities`` maps a path to its modality (the demo's samples);
    ``modality`` applies to every other path.
    """
    from meditok.data.preprocess import to_unit
    from meditok.metrics.image import psnr, ssim
    from meditok.tokenizer import item_jobs
    from meditok.tokenizer.panels import image_panel

    out_dir = Path(out_dir)
    job = _Job(model, as_items(paths, volumes), pseudonymize, policy_for(model, size, resize, allow_large),
               modality, modalities or {}, _planes(planes, step))
    rows: dict[int, list[dict]] = {}
    sizes: dict[int, str] = {}
    d = model.config.model.downsample

    def run(keys: list[int], x: torch.Tensor) -> None:
        x = x.to(_device(model))
        rec = model.reconstruct(x, precision)
        p_vals = psnr(to_unit(rec), to_unit(x)).tolist()
        s_vals = ssim(to_unit(rec), to_unit(x)).tolist()
        h, w = x.shape[-2:]
        for k, inp, out, pv, sv in zip(keys, x, rec, p_vals, s_vals):
            target = out_dir / f"{job.stems[k]}.png"
            _refuse_overwrite(target, overwrite)
            save_png(image_panel(inp.cpu(), out.cpu()), target)
            rows[k] = [{"source": job.labels[k], "output": target.relative_to(out_dir).as_posix(),
                        "kind": "image", "modality": job.modality_of(k) or "",
                        "source_size": sizes.get(k, ""), "model_size": f"{h}x{w}",
                        "grid": f"{h // d}x{w // d}", "psnr": round(pv, 3), "ssim": round(sv, 4)}]
            job.report.resolutions[(int(h), int(w))] += 1

    batcher = _Batcher(run, job.fail, batch_size)

    def handle(i: int) -> None:
        item = job.items[i]
        if item.kind == "image":
            x, sizes[i] = job.image_input(i)
            batcher.add(i, x)
            return
        got = item_jobs.reconstruct_item(model, item, job.labels[i], job.plane_stems[i], out_dir,
                                         job.modality_of(i), job.policy, tuple(planes), step,
                                         batch_size, overwrite)
        if isinstance(got, torch.Tensor):
            batcher.add(i, got)
            return
        rows[i] = got
        for r in got:
            hh, ww = (int(v) for v in r["model_size"].split("x"))
            job.report.resolutions[(hh, ww)] += int(r.get("slices", 1))

    metrics_path = out_dir / "metrics.csv"
    with output_lock(out_dir):
        _refuse_overwrite(metrics_path, overwrite)
        remove_stale_temps(out_dir)
        job.each(handle, "reconstruct")
        batcher.flush()
        done = [r for group in job.finish(rows) for r in group]
        if done:
            write_csv(metrics_path, done)
            if pseudonymize:
                write_local_map(_local_map_path(out_dir, True), job.items, job.labels)
                job.report.notes.append(f"pseudonym → source map (keep it local): "
                                        f"{_local_map_path(out_dir, True)}")
    return job.report, done


# detokenize lives in its own module (decoding token files); re-exported here for callers
from meditok.tokenizer.decode_jobs import detokenize_file  # noqa: E402,F401  (after the helpers it uses)
