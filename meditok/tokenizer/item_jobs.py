"""The batch verbs' handling of one non-2D item: a volume, a DICOM series or a multi-frame file.

:func:`tokenize_item`, :func:`reconstruct_item` and :func:`decode_item` are called by
:mod:`meditok.tokenizer.jobs` for every item that is not a plain 2D file. A volume with a
single slice (a 2D NIfTI) is handed back as a 2D model input.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from meditok.data.inputs import InputItem
from meditok.data.tokens import TokenItem
from meditok.errors import InvalidInputError, MedITokError
from meditok.tokenizer import frame_jobs as FJ
from meditok.tokenizer import resolution as R
from meditok.tokenizer import volume_jobs as VJ
from meditok.tokenizer.model import MedITok
from meditok.utils.io import atomic_write_bytes


def _refuse(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise MedITokError(f"{path} already exists; pass --overwrite to replace it")


def plane_suffix(plane: str) -> str:
    """Output-name suffix of a plane (none for the default axial plane)."""
    return "" if plane == "axial" else f"_{plane}"


def _load(model: MedITok, item: InputItem, modality: str | None, policy: R.Resolution):
    """``('frames', Frames)``, ``('volume', Volume)`` or ``('image', [3, H, W] tensor)``."""
    if item.kind == "multiframe":
        from meditok.data.dicom_frames import read_dicom_frames

        fr = read_dicom_frames(item.path)
        if fr.layout in ("frames", "tiles"):
            return "frames", fr
    vol = VJ.load_volume(item, modality)
    if vol.array.shape[0] == 1:  # one slice (a 2D NIfTI): an image
        img = vol.slice(0)
        return "image", R.model_input(img, model.config.preprocess, policy, modality or vol.modality)
    return "volume", vol


def tokenize_item(model: MedITok, item: InputItem, label: str, modality: str | None,
                  policy: R.Resolution, planes: tuple[str, ...], step: int,
                  batch_size: int) -> list[TokenItem] | torch.Tensor:
    """Token items of a volume / series / multi-frame file (a tensor for a one-slice volume)."""
    kind, data = _load(model, item, modality, policy)
    if kind == "image":
        return data
    if kind == "frames":
        tokens, info, _ = FJ.tokenize_frames(model, data, policy, batch_size, str(item.path))
        return [TokenItem(label, tokens, info)]
    return [TokenItem(label, tokens, info) for tokens, info, _ in
            VJ.tokenize_planes(model, data, modality, policy, planes, step, batch_size)]


def _row(label: str, output: str, kind: str, modality: str | None, source_size: str,
         model_size: tuple[int, int], d: int, psnr: float, ssim: float) -> dict[str, Any]:
    return {"source": label, "output": output, "kind": kind, "modality": modality or "",
            "source_size": source_size, "model_size": f"{model_size[0]}x{model_size[1]}",
            "grid": f"{model_size[0] // d}x{model_size[1] // d}", "psnr": round(psnr, 3),
            "ssim": round(ssim, 4)}


def reconstruct_item(model: MedITok, item: InputItem, label: str, stems: dict[str, str],
                     out_dir: Path, modality: str | None, policy: R.Resolution,
                     planes: tuple[str, ...], step: int, batch_size: int,
                     overwrite: bool) -> list[dict] | torch.Tensor:
    """Reconstruct one volume / series / multi-frame file; rows for ``metrics.csv``.

    ``stems`` maps a plane (``""`` for frames) to the item's output stem."""
    from meditok.tokenizer.jobs import save_png

    kind, data = _load(model, item, modality, policy)
    if kind == "image":
        return data
    d = model.config.model.downsample
    if kind == "frames":
        return _reconstruct_frames(model, data, item, label, next(iter(stems.values())), out_dir,
                                   policy, batch_size, overwrite, d)
    windowed = VJ.windowed(data, model, modality)
    unit, mod = windowed[0], windowed[1]
    rows = []
    for tokens, info, views in VJ.tokenize_planes(model, data, mod, policy, planes, step,
                                                  batch_size, windowed):
        stem = stems[info["plane"]]
        nii, png = out_dir / f"{stem}.nii.gz", out_dir / f"{stem}.png"
        _refuse(nii, overwrite)
        _refuse(png, overwrite)
        ref = VJ.reference_grid(unit, info)
        rec, ssims = VJ.decode_planes(model, tokens, info, batch_size, views)
        mse = float(np.mean((rec.astype(np.float64) - ref) ** 2))
        atomic_write_bytes(nii, VJ.nifti_bytes(info, rec))
        save_png(VJ.middle_panel(ref, rec, info["plane"]), png)
        shape = "x".join(str(s) for s in data.array.shape)
        row = _row(label, nii.relative_to(out_dir).as_posix(), f"volume:{info['plane']}", mod,
                   shape, tuple(info["input_size"]), d, 10 * np.log10(1.0 / max(mse, 1e-12)),
                   float(np.mean(ssims)))
        rows.append({**row, "slices": len(tokens)})  # not a CSV column: the report counts slices
    return rows


def _reconstruct_frames(model, fr, item, label, stem, out_dir, policy, batch_size, overwrite, d):
    from meditok.data.preprocess import to_unit
    from meditok.metrics.image import psnr, ssim
    from meditok.tokenizer.jobs import save_png
    from meditok.tokenizer.panels import image_panel

    tokens, info, x = FJ.tokenize_frames(model, fr, policy, batch_size, str(item.path))
    device = model.logit_scale.device
    recs = torch.cat([model.detokenize(tokens[i:i + batch_size].to(device)).cpu()
                      for i in range(0, len(tokens), batch_size)])
    p = psnr(to_unit(recs), to_unit(x)).mean().item()
    s = ssim(to_unit(recs), to_unit(x)).mean().item()
    if info["kind"] == "tiles":
        target = out_dir / f"{stem}.png"
        _refuse(target, overwrite)
        src = FJ.mosaic(FJ.source_frames(x, info), info)
        out = FJ.mosaic(FJ.decode_frames(model, tokens, info, batch_size), info)
        save_png(image_panel(src, out), target)
    else:
        target = out_dir / stem
        for j in range(len(recs)):
            path = target / f"frame{j:04d}.png"
            _refuse(path, overwrite)
            save_png(image_panel(x[j], recs[j]), path)
    shape = "x".join(str(v) for v in fr.array.shape[:3])
    return [{**_row(label, target.relative_to(out_dir).as_posix(), info["kind"], fr.modality, shape,
                    tuple(x.shape[-2:]), d, p, s), "slices": len(recs)}]


def decode_item(model: MedITok, it: TokenItem, out_dir: Path, stem: str, batch_size: int,
                overwrite: bool, volume_format: str = "nifti") -> list[Path]:
    """Write one decoded non-image token item; returns the files written."""
    from meditok.data.preprocess import uint8_hwc
    from meditok.tokenizer.jobs import save_png

    info = it.info
    if it.kind in ("frames", "tiles"):
        frames = FJ.decode_frames(model, it.grids, info, batch_size)
        if it.kind == "tiles":
            path = out_dir / f"{stem}.png"
            _refuse(path, overwrite)
            save_png(uint8_hwc(FJ.mosaic(frames, info)), path)
            return [path]
        written = []
        for j, frame in enumerate(frames):
            path = out_dir / stem / f"frame{j:04d}.png"
            _refuse(path, overwrite)
            save_png(uint8_hwc(frame), path)
            written.append(path)
        return written
    if it.kind != "volume":
        raise InvalidInputError(f"item {it.name!r}: unknown kind {it.kind!r}")
    _check_volume_info(it)
    unit, _ = VJ.decode_planes(model, it.grids, info, batch_size)
    written = []
    if volume_format in ("nifti", "both"):
        path = out_dir / f"{stem}.nii.gz"
        _refuse(path, overwrite)
        atomic_write_bytes(path, VJ.nifti_bytes(info, unit))
        written.append(path)
    if volume_format in ("dicom", "both"):
        from meditok.data.dicom_write import write_dicom_series

        if info["plane"] != "axial":
            raise InvalidInputError(f"item {it.name!r}: DICOM output is written for axial token "
                                    "volumes only; use --volume-format nifti")
        folder = out_dir / f"{stem}_dicom"
        _refuse(folder, overwrite)
        vol = VJ.output_volume(info)
        written += write_dicom_series(folder, VJ.native_values(unit, info), vol.affine, vol.world,
                                      info.get("modality"))
    return written


def _check_volume_info(it: TokenItem) -> None:
    """The geometry of a stored token volume must fit its grids (a damaged file fails here)."""
    info = it.info
    try:
        shape = [int(s) for s in info["volume_shape"]]
        axis = VJ._AXIS[info["plane"]]
        ok = (len(shape) == 3 and len(info["indices"]) == it.grids.shape[0]
              and np.asarray(info["affine"], float).shape == (4, 4) and len(info["window"]) == 2
              and all(0 <= int(j) < shape[axis] for j in info["indices"])
              and len(info["slice_shape"]) == 2)
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise InvalidInputError(f"item {it.name!r}: its volume geometry is missing or does not "
                                f"match its {it.grids.shape[0]} grids")
    from meditok.data.readers import check_size, max_volume_voxels

    check_size(it.name, shape, max_volume_voxels(), "voxels")
