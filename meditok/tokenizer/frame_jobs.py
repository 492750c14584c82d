"""Multi-frame DICOM in the batch verbs: colour frame sequences and tiled whole-slide images.

Every frame goes through the model (none is dropped). A tiled slide (``layout == 'tiles'``)
keeps each tile's offset in the slide, so decoded tiles are put back together into one mosaic
at the slide's resolution; colour frames (ultrasound cine, secondary capture) stay a sequence.
Intensities are mapped once for the whole file (uint8 as the model contract, other kinds by
one window over all frames) so tiles and frames stay comparable.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from meditok.data.dicom_frames import Frames, assemble_tiles
from meditok.data.preprocess import percentile_window, window
from meditok.tokenizer import resolution as R
from meditok.tokenizer.model import MedITok


def frames_to_model_range(fr: Frames, pre) -> torch.Tensor:
    """``[F, 3, h, w]`` in ``[-1, 1]`` at the frames' own size."""
    a = torch.from_numpy(np.ascontiguousarray(fr.array, np.float32))
    if fr.kind == "uint8":
        x = a / 255.0 * 2.0 - 1.0
    elif fr.kind == "hu":
        x = window(a, *pre.ct_window)
    else:
        lo, hi = percentile_window(a, pre.mri_percentiles) if fr.kind == "float" else (float(a.min()), float(a.max()))
        x = window(a, lo, hi if hi > lo else lo + 1.0)
    if x.ndim == 3:
        x = x[:, None].expand(-1, 3, -1, -1)
    else:
        x = x[..., :3].permute(0, 3, 1, 2)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
    return x.contiguous()


def frames_info(fr: Frames, input_hw: tuple[int, int]) -> dict[str, Any]:
    info: dict[str, Any] = {"kind": fr.layout, "frame_shape": [int(fr.array.shape[1]), int(fr.array.shape[2])],
                            "input_size": list(input_hw), "modality": fr.modality}
    if fr.layout == "tiles":
        info["positions"] = fr.positions.tolist()
        info["total_shape"] = list(fr.total_shape)
    return info


@torch.no_grad()
def tokenize_frames(model: MedITok, fr: Frames, policy: R.Resolution, batch_size: int,
                    path: str) -> tuple[torch.Tensor, dict[str, Any], torch.Tensor]:
    """(tokens ``[F, K, h, w]``, item info, model inputs ``[F, 3, H, W]``)."""
    x = frames_to_model_range(fr, model.config.preprocess)
    out_hw = policy.target(int(x.shape[-2]), int(x.shape[-1]))
    policy.check(path, out_hw, tuple(x.shape[-2:]))
    x = R.resize_to(x, out_hw) if policy.resize != "squash" else R.apply(x, policy, path)
    device = model.logit_scale.device
    tokens = torch.cat([model.tokenize(x[i:i + batch_size].to(device)).cpu()
                        for i in range(0, len(x), batch_size)])
    return tokens, frames_info(fr, tuple(x.shape[-2:])), x


@torch.no_grad()
def decode_frames(model: MedITok, tokens: torch.Tensor, info: dict[str, Any],
                  batch_size: int) -> torch.Tensor:
    """Decoded frames ``[F, 3, h, w]`` in ``[-1, 1]`` at the frames' source size."""
    device = model.logit_scale.device
    hw = tuple(info["frame_shape"])
    outs = []
    for i in range(0, len(tokens), batch_size):
        y = model.detokenize(tokens[i:i + batch_size].to(device)).cpu()
        if tuple(y.shape[-2:]) != hw:
            y = F.interpolate(y, size=hw, mode="bilinear", align_corners=False,
                              antialias=y.shape[-2] > hw[0] or y.shape[-1] > hw[1]).clamp(-1, 1)
        outs.append(y)
    return torch.cat(outs)


def mosaic(frames: torch.Tensor, info: dict[str, Any]) -> torch.Tensor:
    """Tiles ``[T, 3, h, w]`` → the slide ``[3, H, W]`` (``info`` of a ``tiles`` item)."""
    tiles = frames.permute(0, 2, 3, 1).numpy()
    img = assemble_tiles(tiles, np.asarray(info["positions"]), tuple(info["total_shape"]))
    return torch.from_numpy(img).permute(2, 0, 1).contiguous()


def source_frames(x: torch.Tensor, info: dict[str, Any]) -> torch.Tensor:
    """Model inputs resized back to the frames' source size (the reference of the metrics)."""
    hw = tuple(info["frame_shape"])
    if tuple(x.shape[-2:]) == hw:
        return x
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False,
                         antialias=x.shape[-2] > hw[0] or x.shape[-1] > hw[1]).clamp(-1, 1)
