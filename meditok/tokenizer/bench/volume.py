"""3D volumes by slices (paper App. D.2, Table S2).

Every axial slice is tokenised and reconstructed independently; the reconstructed slices are
stacked back into the source voxel grid and written as NIfTI with the source geometry (NIfTI
input: the original affine and header; DICOM/NRRD input: their LPS affine converted to RAS).
Intensities are windowed to ``[0, 1]`` first (CT: ``PreprocessConfig.ct_window`` in HU; other
modalities: the volume's ``mri_percentiles``), metrics are computed in that windowed domain
and the output is mapped back to native units (HU for CT) within the window.

Volume-level features for classification are the mean of per-slice features
(:func:`volume_features`).
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from meditok.data.preprocess import resize_to_square, to_uint8
from meditok.data.readers import Volume, read_volume
from meditok.data.volumes import guess_modality, to_nifti, volume_window
from meditok.errors import ImageReadError, InvalidInputError
from meditok.metrics.image import fid_value, make_fid, ssim
from meditok.utils.device import seed_everything
from meditok.utils.io import atomic_path, atomic_write_bytes
from meditok.utils.results import markdown_table, write_results

from .probe import model_features

RESULT_NAME = "volume"


@dataclass
class SlicedVolume:
    """Axial slices of a volume (:func:`meditok.data.readers.read_volume`, display
    orientation), windowed to ``[0, 1]``."""

    unit: np.ndarray                     #: float32 [Z, H, W] in [0, 1]
    window: tuple[float, float]          #: native values mapped to 0 and 1
    modality: str
    path: str
    volume: Volume

    def to_native(self, unit: np.ndarray) -> np.ndarray:
        lo, hi = self.window
        return unit * (hi - lo) + lo

    def to_nifti(self, native_zyx: np.ndarray):
        """A NIfTI image of ``native_zyx`` in the source geometry (CT stored as int16 HU)."""
        if self.modality == "ct":
            return to_nifti(self.volume, np.rint(native_zyx), np.int16)
        return to_nifti(self.volume, native_zyx, np.float32)


def load_sliced_volume(path: str | Path, preprocess, modality: str = "auto") -> SlicedVolume:
    """Read a NIfTI file, a DICOM series folder or an NRRD/MHA file as windowed axial slices."""
    vol = read_volume(path, None if modality == "auto" else modality)
    if min(vol.array.shape) < 2:
        raise ImageReadError(path, f"is not a 3D volume (shape {list(vol.array.shape)}, z y x); "
                                   "use `meditok reconstruct` for 2D images")
    mod = guess_modality(vol) if modality == "auto" else modality
    lo, hi = volume_window(vol, mod, preprocess)
    unit = ((np.clip(vol.array, lo, hi) - lo) / (hi - lo)).astype(np.float32)
    return SlicedVolume(unit, (lo, hi), mod, str(path), vol)


# ----------------------------------------------------------------------------- slices
def _slices_to_input(unit: np.ndarray, size: int) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(unit)).float()[:, None] * 2.0 - 1.0
    return resize_to_square(x.expand(-1, 3, -1, -1).contiguous(), size, "squash")


def _output_to_unit(y: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    g = ((y.float().mean(dim=1, keepdim=True) + 1.0) / 2.0)
    if g.shape[-2:] != shape:
        g = F.interpolate(g, size=shape, mode="bilinear", align_corners=False,
                          antialias=g.shape[-1] > shape[1] or g.shape[-2] > shape[0])
    return g.clamp(0.0, 1.0)[:, 0]


@torch.no_grad()
def reconstruct_volume(model, vol: SlicedVolume, batch_size: int = 16,
                       device: str | torch.device = "cpu", compute_fid: bool = False,
                       progress: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
    """Tokenise and reconstruct every slice; returns the ``[0, 1]`` volume and its metrics."""
    size = int(model.config.preprocess.image_size)
    z, h, w = vol.unit.shape
    out = np.empty_like(vol.unit)
    fid = make_fid(device) if compute_fid else None
    ssims = []
    for start in tqdm(range(0, z, batch_size), desc=Path(vol.path).name, unit="batch",
                      disable=not progress, leave=False):
        x = _slices_to_input(vol.unit[start:start + batch_size], size).to(device)
        y = model.reconstruct(x)
        rec = _output_to_unit(y, (h, w)).cpu()
        ref = torch.from_numpy(vol.unit[start:start + batch_size])
        out[start:start + len(rec)] = rec.numpy()
        ssims.append(ssim(rec[:, None], ref[:, None]))
        if fid is not None:
            fid.update(to_uint8(x), real=True)
            fid.update(to_uint8(y), real=False)
    mse = float(np.mean((out.astype(np.float64) - vol.unit) ** 2))
    metrics = {"psnr": float(10 * np.log10(1.0 / max(mse, 1e-12))),
               "ssim": float(torch.cat(ssims).mean()),
               "rfid": fid_value(fid) if fid is not None and z >= 2 else None,
               "slices": int(z), "slice_shape": [int(h), int(w)]}
    return out, metrics


@torch.no_grad()
def volume_features(model, volume: str | Path | SlicedVolume, kind: str = "features",
                    batch_size: int = 16, device: str | torch.device = "cpu",
                    modality: str = "auto") -> torch.Tensor:
    """Volume-level feature vector: the mean over axial slices of per-slice features.

    ``kind`` is ``features`` (mean pre-quantisation tokens), ``embed`` or ``tokens``
    (flattened quantised latents).
    """
    vol = volume if isinstance(volume, SlicedVolume) else \
        load_sliced_volume(volume, model.config.preprocess, modality)
    size = int(model.config.preprocess.image_size)
    total, count = None, 0
    for start in range(0, vol.unit.shape[0], batch_size):
        x = _slices_to_input(vol.unit[start:start + batch_size], size).to(device)
        f = model_features(model, x, kind).double()
        total = f.sum(0) if total is None else total + f.sum(0)
        count += len(f)
    return (total / count).float()


def evaluate_volumes(model, paths: Sequence[str | Path], out_dir: str | Path, *,
                     batch_size: int = 16, device: str | torch.device = "cpu",
                     modality: str = "auto", compute_fid: bool = False,
                     feature_kind: str | None = "features", label: str = "model",
                     seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Reconstruct volumes, write ``<stem>_recon.nii.gz`` (+ features), ``volume.json/.md``."""
    seed_everything(seed)
    if not paths:
        raise InvalidInputError("no volumes given")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, skipped = [], []
    for p in tqdm(list(paths), desc="volumes", unit="vol", disable=not progress):
        try:
            vol = load_sliced_volume(p, model.config.preprocess, modality)
        except ImageReadError as exc:
            skipped.append({"item": str(p), "reason": exc.reason})
            continue
        except Exception as exc:  # noqa: BLE001 - an unforeseen failure of one volume is reported
            skipped.append({"item": str(p), "reason": f"unexpected {type(exc).__name__}: {exc}"})
            continue
        unit, metrics = reconstruct_volume(model, vol, batch_size, device, compute_fid,
                                           progress)
        stem = _stem(Path(p))
        target = out / f"{stem}_recon.nii.gz"
        # Serialise in memory and gzip ourselves so the write stays atomic.
        atomic_write_bytes(target, gzip.compress(vol.to_nifti(vol.to_native(unit)).to_bytes(),
                                                 compresslevel=6, mtime=0))
        row = {"volume": str(p), "output": target.name, "modality": vol.modality,
               "window": list(vol.window), **metrics}
        if feature_kind:
            feats = volume_features(model, vol, feature_kind, batch_size, device)
            fpath = out / f"{stem}_{feature_kind}.pt"
            with atomic_path(fpath) as tmp:
                torch.save(feats, tmp)
            row["features"] = {"kind": feature_kind, "file": fpath.name, "dim": int(len(feats))}
        rows.append(row)
    if not rows:
        reasons = "; ".join(f"{Path(s['item']).name}: {s['reason']}" for s in skipped[:5])
        raise InvalidInputError(f"no usable volume among the inputs ({reasons}); nothing written")
    result = {"label": label, "volumes": rows, "skipped": skipped,
              "conventions": {"slicing": "every axial slice, display orientation, resized "
                                         "(bilinear) to the model input and back",
                              "domain": "PSNR over all voxels and mean per-slice SSIM (0-1), in "
                                        "the windowed [0,1] domain (CT: PreprocessConfig.ct_window "
                                        "HU; others: volume percentiles)",
                              "output": "NIfTI in the source geometry, native units within "
                                        "the window (CT: int16 HU)"}}
    header = ["Volume", "Modality", "Slices", "PSNR (↑)", "SSIM (↑)", "rFID (↓)"]
    table = [[Path(r["volume"]).name, r["modality"], r["slices"], r["psnr"], f"{r['ssim']:.3f}",
              r["rfid"]] for r in rows]
    md = "# 3D by slices (paper Table S2 layout)\n\n" + markdown_table(header, table) + "\n" \
        + "".join(f"* **{k}**: {v}\n" for k, v in result["conventions"].items())
    write_results(out, RESULT_NAME, result, md)
    return result


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name
