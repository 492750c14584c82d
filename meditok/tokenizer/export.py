"""Export the two halves of a tokenizer — images → token indices and indices → images — to
ONNX or TorchScript, and check the exported models against PyTorch.

The exported graphs contain only standard operators: the nearest-code search is written as
``argmax(f_k @ books_kᵀ)`` per sub-codebook (the reference arithmetic; no compiled extension
is needed to run them) with the normalised codebooks baked in as constants. Batch size and
image size are dynamic (multiples of the model's downsampling factor).

    from meditok.tokenizer.export import export
    export(model, "out/", fmt="onnx")          # out/tokenize.onnx, out/detokenize.onnx, out/export.json
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from meditok.errors import InvalidInputError, MedITokError
from meditok.utils.io import atomic_write_text

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
OPSET = 18


class TokenizeGraph(nn.Module):
    """``images [B, 3, H, W]`` fp32 in [-1, 1] → ``tokens [B, K, H/d, W/d]`` int64."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.register_buffer("books", model.quantizer.codebook_vectors().detach().clone())
        self.downsample = int(model.config.model.downsample)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        latents, _ = self.model._encode(images)
        f = self.model.quantizer._normalized_chunks(latents)  # [K, B*L, d]
        # one matmul per sub-codebook: the [K, B*L, V] score tensor is never whole
        idx = torch.stack([torch.argmax(f[k] @ self.books[k].transpose(0, 1), dim=-1)
                           for k in range(self.books.shape[0])])
        b = images.shape[0]
        h = images.shape[2] // self.downsample
        w = images.shape[3] // self.downsample
        return idx.reshape(self.books.shape[0], b, h, w).transpose(0, 1)


class DetokenizeGraph(nn.Module):
    """``tokens [B, K, h, w]`` int64 → ``images [B, 3, h·d, w·d]`` fp32 clamped to [-1, 1]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.register_buffer("books", model.quantizer.codebook_vectors().detach().clone())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, k, h, w = tokens.shape
        flat = tokens.reshape(b, k, h * w)
        latents = torch.cat([F.embedding(flat[:, i], self.books[i]) for i in range(self.books.shape[0])], dim=-1)
        return self.model._decode(self.model._post_project(latents), (h, w)).clamp(-1.0, 1.0)


def _example(model: nn.Module, batch: int, size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = model.config.model
    size = int(size or model.config.preprocess.image_size)
    if size % cfg.downsample:
        raise InvalidInputError(f"image size {size} is not a multiple of {cfg.downsample}")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    with torch.no_grad():
        tokens = model.tokenize(x)
    return x, tokens


def _export_onnx(graph: nn.Module, example: torch.Tensor, path: Path, in_name: str, out_name: str,
                 dynamic: dict[int, str]) -> str:
    from meditok.utils.lazy import require

    require("onnx", "export")
    # The TorchScript-based exporter handles the model's autocast guards and dynamic axes
    # directly; the dynamo exporter is tried second (needs onnxscript).
    errors = []
    for dynamo in (False, True):
        try:
            kwargs: dict[str, Any] = {"input_names": [in_name], "output_names": [out_name],
                                      "opset_version": OPSET, "dynamo": dynamo}
            if dynamo:
                kwargs["dynamic_shapes"] = {"images" if in_name == "images" else "tokens":
                                            {i: torch.export.Dim.AUTO for i in dynamic}}
                kwargs["external_data"] = False
            else:
                kwargs["dynamic_axes"] = {in_name: dynamic, out_name: dynamic}
            with torch.no_grad():
                torch.onnx.export(graph, (example,), str(path), **kwargs)
            return "torchscript-based" if not dynamo else "dynamo"
        except Exception as exc:  # noqa: BLE001 - try the other exporter, report both
            errors.append(f"{'dynamo' if dynamo else 'legacy'}: {type(exc).__name__}: {str(exc)[:300]}")
    raise MedITokError(f"ONNX export of {path.name} failed: " + " | ".join(errors))


def _export_torchscript(graph: nn.Module, example: torch.Tensor, path: Path) -> str:
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation / tracer notes
        traced = torch.jit.trace(graph, (example,), check_trace=False)
        traced = torch.jit.freeze(traced.eval())
    traced.save(str(path))
    return "torch.jit.trace + freeze"


def load_exported(path: str | Path):
    """A callable ``f(tensor) -> tensor`` for an exported ``.onnx`` (onnxruntime, CPU) or
    TorchScript ``.pt`` file."""
    path = Path(path)
    if path.suffix == ".onnx":
        from meditok.utils.lazy import require

        ort = require("onnxruntime", "export")
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name

        def run(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(sess.run(None, {name: x.cpu().numpy()})[0])

        return run
    module = torch.jit.load(str(path), map_location="cpu")

    def run_ts(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x)

    return run_ts


def check_exported(model: nn.Module, out_dir: str | Path, images: torch.Tensor, fmt: str) -> dict[str, Any]:
    """Run the exported halves on ``images`` and compare with PyTorch: token agreement of the
    encoder half, max |Δ| of the decoder half on the PyTorch tokens."""
    out_dir = Path(out_dir)
    ext = FORMATS[fmt]
    with torch.no_grad():
        want = model.tokenize(images)
        rec = model.detokenize(want)
    got = load_exported(out_dir / f"tokenize{ext}")(images)
    got_rec = load_exported(out_dir / f"detokenize{ext}")(want)
    same = (got == want)
    return {"images": int(images.shape[0]), "tokens": int(want.numel()),
            "tokens_equal": int(same.sum()), "token_agreement": float(same.float().mean()),
            "images_all_tokens_equal": int(same.flatten(1).all(1).sum()),
            "recon_max_abs_diff": float((got_rec - rec).abs().max())}


def export(model: nn.Module, out_dir: str | Path, fmt: str = "onnx", batch: int = 1,
           image_size: int | None = None, overwrite: bool = False,
           check_images: torch.Tensor | None = None) -> dict[str, Any]:
    """Write ``tokenize<ext>`` and ``detokenize<ext>`` (+ ``export.json``) into ``out_dir``.

    ``fmt``: ``onnx`` (opset 18, dynamic batch and size) or ``torchscript`` (traced and
    frozen). ``check_images``: real images to compare the exported models with PyTorch on
    (default: the tracing example). Existing files are refused unless ``overwrite``.
    """
    if fmt not in FORMATS:
        raise InvalidInputError(f"--format must be one of {sorted(FORMATS)}, got {fmt!r}")
    out_dir = Path(out_dir)
    ext = FORMATS[fmt]
    targets = [out_dir / f"tokenize{ext}", out_dir / f"detokenize{ext}", out_dir / "export.json"]
    existing = [p for p in targets if p.exists()]
    if existing and not overwrite:
        raise MedITokError(f"{existing[0]} exists; pass --overwrite to replace it")
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    x, tokens = _example(model, batch, image_size)
    enc, dec = TokenizeGraph(model).eval(), DetokenizeGraph(model).eval()
    t0 = time.perf_counter()
    tmp = {p: p.with_name(p.name + ".partial") for p in targets[:2]}
    if fmt == "onnx":
        how = _export_onnx(enc, x, tmp[targets[0]], "images", "tokens", {0: "batch", 2: "height", 3: "width"})
        _export_onnx(dec, tokens, tmp[targets[1]], "tokens", "images", {0: "batch", 2: "height", 3: "width"})
    else:
        how = _export_torchscript(enc, x, tmp[targets[0]])
        _export_torchscript(dec, tokens, tmp[targets[1]])
    for final, partial in tmp.items():  # both halves complete before either is visible
        partial.replace(final)
    info: dict[str, Any] = {
        "format": fmt, "exporter": how, "opset": OPSET if fmt == "onnx" else None,
        "tokenize": targets[0].name, "detokenize": targets[1].name,
        "inputs": {"tokenize": "images float32 [B, 3, H, W] in [-1, 1], H and W multiples of "
                               f"{model.config.model.downsample}",
                   "detokenize": f"tokens int64 [B, {model.config.model.num_codebooks}, h, w]"},
        "example_shape": list(x.shape), "export_seconds": round(time.perf_counter() - t0, 1),
        "torch": torch.__version__, "config": model.config.to_dict(),
    }
    info["check"] = check_exported(model, out_dir, check_images if check_images is not None else x, fmt)
    atomic_write_text(targets[2], json.dumps(info, indent=2))
    return info
