"""``detokenize``: a token file back into images, volumes (NIfTI / DICOM), frames or slides.

The file is checked against the model before anything is decoded (sub-codebooks, code range,
grid sizes and counts: :func:`meditok.data.tokens.check_tokens_for_model`), so a small hostile
file cannot drive unbounded work; outputs are named after the stored (relative or pseudonymous)
names, locked, written atomically and never overwritten silently.
"""
from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from meditok.data.inputs import InputItem, output_names
from meditok.data.tokens import check_tokens_for_model, read_token_file
from meditok.tokenizer import resolution as R
from meditok.tokenizer.model import MedITok
from meditok.utils.io import remove_stale_temps
from meditok.utils.lock import output_lock

#: Grids one token file may ask ``detokenize`` to decode without ``allow_large``.
MAX_GRIDS = 10_000


def _safe_name(name: str) -> str:
    """A stored name as a relative output path: absolute names (first-format files stored
    them) keep their file name only; ``..`` and empty parts are dropped by output_names."""
    p = Path(name)
    return p.name if p.is_absolute() or "\\" in name else name


def detokenize_file(model: MedITok, tokens_path: str | Path, out_dir: str | Path,
                    batch_size: int = 16, overwrite: bool = False, *, allow_large: bool = False,
                    volume_format: str = "nifti") -> list[Path]:
    """Decode a token file: 2D grids → PNGs named after their sources, token volumes → NIfTI
    (``volume_format='dicom'``: a DICOM series with fresh UIDs; ``'both'``), frames → PNGs,
    tiles → one mosaic. Returns the files written."""
    from meditok.data.preprocess import uint8_hwc
    from meditok.tokenizer import item_jobs
    from meditok.tokenizer.jobs import _refuse_overwrite, save_png

    tf = read_token_file(tokens_path)
    cfg = model.config.model
    max_side = None if allow_large else max(1, R.MAX_SIDE // cfg.downsample)
    check_tokens_for_model(tf, cfg.num_codebooks, cfg.codebook_size, max_side,
                           None if allow_large else MAX_GRIDS, tokens_path)
    items = [InputItem(Path(it.name), _safe_name(it.name)) for it in tf.items]
    stems = output_names(items, suffixes=[item_jobs.plane_suffix(it.info.get("plane", "axial"))
                                          if it.kind == "volume" else "" for it in tf.items])
    out_dir = Path(out_dir)
    device = model.logit_scale.device
    written: list[Path] = []
    with output_lock(out_dir):
        remove_stale_temps(out_dir)
        images = [(i, it) for i, it in enumerate(tf.items) if it.kind == "image"]
        for i, it in tqdm(images, desc="detokenize", unit="img", disable=len(images) < 2):
            path = out_dir / f"{stems[i]}.png"
            _refuse_overwrite(path, overwrite)
            save_png(uint8_hwc(model.detokenize(it.grids.to(device)).cpu()[0]), path)
            written.append(path)
        for i, it in enumerate(tf.items):
            if it.kind != "image":
                written += item_jobs.decode_item(model, it, out_dir, stems[i], batch_size,
                                                 overwrite, volume_format)
    return written
