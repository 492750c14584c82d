"""Tokenizer verbs: top-level ``demo``, ``tokenize``, ``detokenize``, ``reconstruct``, ``info``,
``convert-official``, and the ``meditok tokenizer {train,eval}`` group (with the aliases
``meditok train`` / ``meditok eval``)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def _model(args: argparse.Namespace):
    from meditok.tokenizer.hub import load_tokenizer

    model = load_tokenizer(args.checkpoint, args.device)
    if getattr(args, "fast_decoder", False):
        from meditok.tokenizer.kernels.fastpath import enable_fast_decoder

        enable_fast_decoder(model)  # same tokens; reconstructions within ~1e-5 of the eager decoder
    return model


def _inputs(args: argparse.Namespace):
    """Input items (files, volumes, DICOM series, multi-frame files), named before reading."""
    from meditok.data.inputs import collect_inputs
    from meditok.errors import MedITokError

    missing = [p for p in args.inputs if not Path(p).exists()]
    if missing:
        raise MedITokError(f"input not found: {', '.join(map(str, missing))}")
    items = collect_inputs(args.inputs, volumes=True)
    if not items:
        raise MedITokError(f"no supported image files found in {', '.join(map(str, args.inputs))}")
    return items


def _job_options(args: argparse.Namespace) -> dict:
    return {"size": args.size, "resize": args.resize, "allow_large": args.allow_large,
            "pseudonymize": args.pseudonymize, "planes": tuple(args.planes), "step": args.step,
            "precision": args.precision}


def _policy_line(model, args: argparse.Namespace) -> str:
    from meditok.tokenizer.jobs import policy_for

    pol = policy_for(model, args.size, args.resize, args.allow_large)
    size = "native size" if pol.size is None else f"{pol.size} px"
    what = "longer side" if pol.resize == "keep-aspect" else "square"
    return (f"resolution: {pol.resize}, {what} {size}, sides multiples of {pol.multiple} "
            f"(checkpoint trained at {model.config.preprocess.image_size} px)")


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
    items = _inputs(args)
    print(_policy_line(model, args))
    report = tokenize_files(model, items, args.out, args.batch_size, args.overwrite,
                            modality=args.modality, **_job_options(args))
    print(report.summary())
    print(f"tokens written to {args.out}")
    return 0


def _detokenize(args: argparse.Namespace) -> int:
    from meditok.tokenizer.jobs import detokenize_file

    model = _model(args)
    written = detokenize_file(model, args.tokens, args.out, args.batch_size, args.overwrite,
                              allow_large=args.allow_large, volume_format=args.volume_format)
    print(f"{len(written)} files written to {args.out}")
    return 0


def _reconstruct(args: argparse.Namespace) -> int:
    from meditok.tokenizer.jobs import reconstruct_files

    model = _model(args)
    items = _inputs(args)
    print(_policy_line(model, args))
    report, rows = reconstruct_files(model, items, args.out, args.batch_size,
                                     args.overwrite, modality=args.modality, **_job_options(args))
    if rows:
        mean_psnr = sum(r["psnr"] for r in rows) / len(rows)
        mean_ssim = sum(r["ssim"] for r in rows) / len(rows)
        print(f"mean PSNR {mean_psnr:.2f} dB, mean SSIM {mean_ssim:.4f} (0-1) over {len(rows)} "
              "items")
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

    from meditok.utils.lock import output_lock

    dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    with output_lock(args.out):
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

    def job(p: argparse.ArgumentParser) -> None:
        from meditok.tokenizer.resolution import DEFAULT_SIZE, MAX_SIDE

        p.add_argument("--size", default=None,
                       help=f"model input size: longer side in px (default {DEFAULT_SIZE}, chosen "
                            "from measurements: benchmarks/results/resolution.md) or 'native'")
        p.add_argument("--resize", choices=["keep-aspect", "squash"], default="keep-aspect",
                       help="keep-aspect (default; sides rounded to multiples of the model's "
                            "downsampling factor, non-square grids) or squash to size x size")
        p.add_argument("--allow-large", action="store_true",
                       help=f"allow model inputs above {MAX_SIDE} px per side")
        p.add_argument("--pseudonymize", action="store_true",
                       help="name outputs by content hash; the hash → path map is written to a "
                            "local-only file (never share it)")
        p.add_argument("--planes", nargs="+", default=["axial"],
                       choices=["axial", "coronal", "sagittal"],
                       help="volumes (NIfTI/NRRD/MHA, DICOM series, multi-frame DICOM): planes "
                            "to slice along (default axial)")
        p.add_argument("--step", type=int, default=1,
                       help="volumes: every STEP-th slice (default 1: every slice)")
        p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                       help="fp32 (default, exact) or bf16 autocast (opt-in fast mode, ~97 %% "
                            "of tokens equal to fp32)")
        p.add_argument("--fast-decoder", action="store_true",
                       help="sub-pixel decoder upsampling: same tokens, reconstructions within "
                            "~1e-5, fewer multiply-adds")

    p = subparsers.add_parser("tokenize", help="images, volumes, DICOM series → tokens .npz")
    p.add_argument("inputs", nargs="+", help="image files, volumes or folders (PNG/JPEG/TIFF/"
                                             "DICOM/NIfTI/NRRD/MHA)")
    p.add_argument("--out", required=True, help="output .npz")
    common(p)
    modality(p)
    job(p)
    p.set_defaults(func=_tokenize)

    p = subparsers.add_parser("detokenize", help="tokens .npz → PNG images / NIfTI or DICOM volumes")
    p.add_argument("tokens")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--volume-format", choices=["nifti", "dicom", "both"], default="nifti",
                   help="token volumes: NIfTI in the source geometry (default) and/or a DICOM "
                        "series with fresh UIDs and no identifiers")
    p.add_argument("--allow-large", action="store_true",
                   help="decode grids above the size / count limits")
    common(p)
    p.set_defaults(func=_detokenize)

    p = subparsers.add_parser("reconstruct", help="input | reconstruction | error panels + metrics.csv")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--out", required=True, help="output folder")
    common(p, batch=8)
    modality(p)
    job(p)
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
