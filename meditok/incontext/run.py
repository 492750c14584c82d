"""``meditok incontext run``: one prompt pair + one query image → the query's label image.

Images are any file :func:`meditok.data.readers.read_image` reads (PNG/JPEG/TIFF, DICOM, the
middle slice of NIfTI/NRRD), mapped to ``[0, 1]`` by the model's intensity contract (CT window
[-100, 200] HU as MVG §4.1, MRI percentiles). For segmentation the prompt label is a mask PNG
(0 = background, up to 16 class values, grey or colour-coded) of exactly the prompt image's
size; the output is a mask at the query's own size (one class: 255 = foreground; several: the
prompt's values), and ``D_overlay.png`` beside it shows prompt, prompt label, query and
prediction. For denoising / inpainting the "label" is the prompt's clean image and the output
the restored query.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meditok.data.preprocess import interpret, scale_intensity, to_channels_first
from meditok.data.readers import read_image
from meditok.errors import InvalidInputError
from meditok.incontext import colour as colouring
from meditok.incontext.episodes import canvas, resize_image, resize_mask
from meditok.incontext.infer import (
    STRATEGIES,
    Embedder,
    PromptBank,
    TiledQuery,
    as_method,
    load_model,
    run_tiles,
    tile_query,
)
from meditok.incontext.sources import Item
from meditok.utils.io import atomic_path
from meditok.utils.lock import output_lock

DEFAULT_MODEL = "meditok-mvg-small"
MAX_CLASSES = len(colouring.COLOUR_SET)
RUN_TASKS = ("segmentation", "denoising", "inpainting")


def read_unit(path: str | Path, pre: Any, modality: str | None = None, slice_index: int | None = None) -> np.ndarray:
    """A file → ``H x W x 3`` float32 in ``[0, 1]`` at its own size (the model's contract)."""
    img = interpret(read_image(path, modality=modality, slice_index=slice_index), modality, pre)
    t = to_channels_first(scale_intensity(img, pre), img.path, pre.channel_policy)
    return ((t.permute(1, 2, 0).numpy() + 1.0) / 2.0).clip(0, 1).astype(np.float32)


def read_mask(path: str | Path, shape: tuple[int, int]) -> tuple[dict[str, np.ndarray], list[Any]]:
    """A prompt label mask → ``({"c0": bool mask, …}, [value per class])``; refuses a file of
    another size than the prompt image or one that is not a mask (a photograph, a float map)."""
    arr = read_image(path).array
    if arr.shape[:2] != tuple(shape):
        raise InvalidInputError(f"{path}: the prompt label is {arr.shape[1]}x{arr.shape[0]} (WxH) but the "
                                f"prompt image is {shape[1]}x{shape[0]}; give the mask of that image")
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    if arr.ndim == 3 and np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
        arr = arr[..., 0]
    flat = arr.reshape(-1, 1) if arr.ndim == 2 else arr.reshape(-1, arr.shape[2])
    values, inverse = np.unique(flat, axis=0, return_inverse=True)
    if np.any(values != np.round(values)):
        raise InvalidInputError(f"{path}: the prompt label has non-integer values; it must be a mask "
                                "(0 = background, one integer value or colour per class)")
    background = [i for i, v in enumerate(values) if not v.any()]
    if not background and len(values) > 1:
        background = [int(np.argmin(values.sum(1)))]
    fg = [i for i in range(len(values)) if i not in background]
    if len(fg) > MAX_CLASSES:
        kind = "grey" if arr.ndim == 2 else "colour"
        raise InvalidInputError(f"{path}: the prompt label has {len(values)} distinct {kind} values; a "
                                f"segmentation mask has 0 = background and at most {MAX_CLASSES} class values "
                                "(is this a photograph instead of a mask?)")
    if not fg:
        raise InvalidInputError(f"{path}: the prompt label is empty (no foreground pixel)")
    inverse = inverse.reshape(arr.shape[:2])
    masks = {f"c{j}": inverse == i for j, i in enumerate(fg)}
    vals = [values[i].tolist() if arr.ndim == 3 else values[i][0].item() for i in fg]
    return masks, vals


@dataclass
class RunResult:
    out: Path
    overlay: Path
    tiles: int
    mode: str


def _write_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def _overlay(img: np.ndarray, labels: np.ndarray | None, colours: list[np.ndarray]) -> np.ndarray:
    out = img.copy()
    if labels is not None:
        for k, c in enumerate(colours):
            m = labels == k + 1
            out[m] = 0.45 * out[m] + 0.55 * c
    return (out * 255).round().astype(np.uint8)


def _panel(tiles: list[np.ndarray], height: int = 256) -> np.ndarray:
    rows = []
    for t in tiles:
        w = max(1, int(round(t.shape[1] * height / t.shape[0])))
        rows.append((resize_image(t.astype(np.float32) / 255.0, (height, w)) * 255).round().astype(np.uint8))
        rows.append(np.full((height, 4, 3), 255, np.uint8))
    return np.concatenate(rows[:-1], 1)


def run_incontext(prompt_image: str | Path, prompt_label: str | Path, query: str | Path, out: str | Path, *,
                  task: str = "segmentation", model: str | Path | None = None, mode: str = "auto",
                  scale: float = 1.0, prompt_select: str = "position", modality: str | None = None,
                  overwrite: bool = False, device: str = "cpu", model_obj: Any = None,
                  inference: str = "auto") -> RunResult:
    """Predict ``query``'s label image from one prompt pair; write ``out`` and ``*_overlay.png``.
    ``inference``: the objective the label is decoded with — ``auto`` is the one each task was
    mostly trained with (segmentation: AR, 100 % of its episodes; denoising / inpainting: MIM, 90 %)."""
    if task not in RUN_TASKS:
        raise InvalidInputError(f"--task must be one of {RUN_TASKS}, got {task!r}")
    if inference not in ("auto", "ar", "mim"):
        raise InvalidInputError(f"--inference must be auto, ar or mim, got {inference!r}")
    if inference == "auto":
        inference = "ar" if task == "segmentation" else "mim"
    if mode not in ("auto", "tiled", "whole"):
        raise InvalidInputError(f"--mode must be auto, tiled or whole, got {mode!r}")
    if prompt_select not in STRATEGIES:
        raise InvalidInputError(f"--prompt-select must be one of {STRATEGIES}")
    if not 0.05 <= scale <= 4.0:
        raise InvalidInputError(f"--scale {scale} outside [0.05, 4]")
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise InvalidInputError(f"{out}: the output must be a .png file")
    overlay = out.with_name(out.stem + "_overlay.png")
    for p in (out, overlay):
        if p.exists() and not overwrite:
            raise InvalidInputError(f"{p} exists; pass --overwrite to replace it")
    net = model_obj if model_obj is not None else load_model(model or DEFAULT_MODEL, device)
    cfg = getattr(net, "config", None)
    pre = getattr(cfg, "preprocess", None)
    cell = getattr(cfg, "cell", None) or net.cell
    if pre is None:
        from meditok.incontext.model import _mvg_preprocess
        pre = _mvg_preprocess()
    px = read_unit(prompt_image, pre, modality)
    x = read_unit(query, pre, modality)
    method = as_method("model", net, inference)
    out.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(out, is_dir=False):
        if task == "segmentation":
            masks, values = read_mask(prompt_label, px.shape[:2])
            colours = {k: (colouring.WHITE if len(masks) == 1 else colouring.COLOUR_SET[i])
                       for i, k in enumerate(masks)}
            tiled = mode == "tiled" or (mode == "auto" and min(x.shape[:2]) * scale > 2 * cell)
            s = scale if tiled else None
            item = Item(px, "prompt", masks)
            if tiled:
                bank = PromptBank.build([item], s, cell)
                tq = tile_query(x, s, cell, bank, colours, prompt_select,
                                embedder=Embedder() if prompt_select == "nearest" else None)
            else:  # whole image squashed to one cell (and the prompt too)
                sq = lambda a: resize_image(a, (cell, cell))
                plabs = {k: resize_mask(v, (cell, cell)) for k, v in masks.items()}
                cv = canvas(np.stack([sq(px), colouring.paint(plabs, colours, (cell, cell)), sq(x),
                                      np.zeros((cell, cell, 3), np.float32)]))
                tq = TiledQuery(cv[None], [(0, 0)], (cell, cell), (cell, cell), x.shape[:2])
            rgb = run_tiles(method, tq, "segmentation")
            dec = colouring.decode(rgb, colours)
            if len(values) == 1:
                mask = np.where(dec == 1, 255, 0).astype(np.uint8)
            else:
                first = np.asarray(values[0])
                mask = np.zeros(dec.shape + first.shape, np.uint8 if np.max(values) < 256 else np.uint16)
                for k, v in enumerate(values):
                    mask[dec == k + 1] = v
            _write_png(out, mask)
            cols = list(colours.values())
            prompt_map = np.zeros(px.shape[:2], np.int64)
            for k, m in enumerate(masks.values()):
                prompt_map[m] = k + 1
            panel = _panel([_overlay(px, None, cols), _overlay(px, prompt_map, cols), _overlay(x, None, cols),
                            _overlay(x, dec, cols)])
            n_tiles = len(tq.starts)
            used = "tiled" if tiled else "whole"
        else:
            py = read_unit(prompt_label, pre, modality)
            if py.shape[:2] != px.shape[:2]:
                raise InvalidInputError(f"{prompt_label}: the prompt label image is {py.shape[1]}x{py.shape[0]} "
                                        f"(WxH) but the prompt image is {px.shape[1]}x{px.shape[0]}")
            sq = lambda a: resize_image(a, (cell, cell))
            cv = canvas(np.stack([sq(px), sq(py), sq(x), np.zeros((cell, cell, 3), np.float32)]))[None]
            pred = ((method.fn(cv, task)[0].float() + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy()
            restored = resize_image(pred, x.shape[:2])
            img = (restored * 255).round().astype(np.uint8)
            _write_png(out, img[..., 0] if np.allclose(img[..., 0], img[..., 1], atol=2) else img)
            panel = _panel([(a * 255).round().astype(np.uint8) for a in (px, py, x, restored)])
            n_tiles, used = 1, "whole"
        _write_png(overlay, panel)
    return RunResult(out, overlay, n_tiles, used)
