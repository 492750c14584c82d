"""Tokenizer verbs: top-level ``demo``, ``tokenize``, ``detokenize``, ``reconstruct``, ``info``,
``convert-official``, and the ``meditok tokenizer {train,eval}`` group (with the aliases
``meditok train`` / ``meditok eval``)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def _model(args: argparse.Namespace):
    from meditok.tokenizer.hub import load_tokenizer

    return load_tokenizer(args.checkpoint, args.device)


def _inputs(args: argparse.Namespace) -> list[Path]:
    from meditok.data.readers import iter_image_files
    from meditok.errors import MedITokError

    missing = [p for p in args.inputs if not Path(p).exists()]
    if missing:
        raise MedITokError(f"input not found: {', '.join(map(str, missing))}")
    files = iter_image_files(args.inputs)
    if not files:
        raise MedITokError(f"no supported image files found in {', '.join(map(str, args.inputs))}")
    return files


def _demo(args: argparse.Namespace) -> int:
    from meditok.tokenizer.demo import run_demo

    report, rows = run_demo(args.out, args.checkpoint, overwrite=args.overwrite, device=args.device)
    for row in rows:
        print(f"{row['psnr']:7.2f} dB  SSIM {row['ssim']:.3f}  {row['modality']:<10} {Path(row['source']).name}")
    print(report.summary())
    print(f"panels (input | reconstruction | |error|) and metrics.csv written to {args.out}")
    return 0


def _tokenize(args: argparse.Namespace) -> int:
    from meditok.tokenizer.jobs import tokenize_files

    model = _model(args)
    report = tokenize_files(model, _inputs(args), args.out, args.batch_size, args.overwrite,
                            modality=args.modality)
    print(report.summary())
    print(f"tokens written to {args.out}")
    return 0


def _detokenize(args: argparse.Namespace) -> int:
    from meditok.tokenizer.jobs import detokenize_file

    model = _model(args)
    written = detokenize_file(model, args.tokens, args.out, args.batch_size, args.overwrite)
    print(f"{len(written)} images written to {args.out}")
    return 0


def _reconstruct(args: argparse.Namespace) -> int:
    from meditok.tokenizer.jobs import reconstruct_files

    model = _model(args)
    report, rows = reconstruct_files(model, _inputs(args), args.out, args.batch_size,
                                     args.overwrite, modality=args.modality)
    if rows:
        mean_psnr = sum(r["psnr"] for r in rows) / len(rows)
        mean_ssim = sum(r["ssim"] for r in rows) / len(rows)
        print(f"mean PSNR {mean_psnr:.2f} dB, mean SSIM {mean_ssim:.4f} over {len(rows)} images")
    print(report.summary())
    return 0 if rows else 1


def _info(args: argparse.Namespace) -> int:
    model = _model(args)
    cfg = model.config
    info = {
        "preset": cfg.preset,
        "parameters": model.num_parameters(),
        "downsample": cfg.model.downsample,
        "grid": f"{cfg.model.grid_size()}x{cfg.model.grid_size()} at {cfg.model.image_size}px",
        "codebooks": f"{cfg.model.num_codebooks} x {cfg.model.codebook_size} x {cfg.model.code_dim}",
        "preprocess": cfg.to_dict()["preprocess"],
        "meta": cfg.meta,
    }
    print(json.dumps(info, indent=2))
    return 0


def _convert(args: argparse.Namespace) -> int:
    import torch

    from meditok.tokenizer.hub import convert_official

    dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    out = convert_official(args.source, args.out, dtype=dtype)
    print(f"converted {args.source} → {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the tokenizer verbs to the ``meditok`` parser."""
    def common(p: argparse.ArgumentParser, batch: int = 16) -> None:
        p.add_argument("--checkpoint", "-c", default=None,
                       help="pretrained directory or bundled name (default: meditok-small)")
        p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
        p.add_argument("--batch-size", type=int, default=batch)
        p.add_argument("--overwrite", action="store_true", help="replace existing outputs")

    p = subparsers.add_parser("demo", help="reconstruct the real sample images bundled with "
                              "pydicom/nilearn/scikit-image using the bundled checkpoint")
    p.add_argument("--out", default="outputs/demo")
    common(p)
    p.set_defaults(func=_demo)

    def modality(p: argparse.ArgumentParser) -> None:
        p.add_argument("--modality", default=None,
                       help="modality of the inputs (ct, mri, xray, ...): decides the intensity "
                            "mapping, e.g. a 16-bit CT PNG holds HU + offset and is CT-windowed; "
                            "default: from the file (DICOM header, meditok CT PNG tag)")

    p = subparsers.add_parser("tokenize", help="images (files or folders) → tokens .npz")
    p.add_argument("inputs", nargs="+", help="image files or folders (PNG/JPEG/TIFF/DICOM/NIfTI)")
    p.add_argument("--out", required=True, help="output .npz")
    common(p)
    modality(p)
    p.set_defaults(func=_tokenize)

    p = subparsers.add_parser("detokenize", help="tokens .npz → PNG images")
    p.add_argument("tokens")
    p.add_argument("--out", required=True, help="output folder")
    common(p)
    p.set_defaults(func=_detokenize)

    p = subparsers.add_parser("reconstruct", help="input | reconstruction | error panels + metrics.csv")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--out", required=True, help="output folder")
    common(p, batch=8)
    modality(p)
    p.set_defaults(func=_reconstruct)

    p = subparsers.add_parser("info", help="describe a checkpoint")
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="pretrained directory or bundled name (default: meditok-small)")
    p.set_defaults(device="cpu")
    p.set_defaults(func=_info)

    p = subparsers.add_parser("convert-official", help="import the released meditok_simple_v1.pth")
    p.add_argument("source", help="path of meditok_simple_v1.pth (plain state dict)")
    p.add_argument("out", help="output directory (config.json + model.safetensors)")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    p.set_defaults(func=_convert)


def register_family(subparsers: argparse._SubParsersAction) -> None:
    """``meditok tokenizer train|eval``: the tokenizer family's training and benchmarks."""
    from meditok.cli import eval as eval_cli
    from meditok.cli import train as train_cli

    p = subparsers.add_parser("tokenizer", help="train and benchmark the MedITok tokenizer")
    sub = p.add_subparsers(dest="tokenizer_command", metavar="VERB", required=True)
    train_cli.register(sub)
    eval_cli.register(sub)
