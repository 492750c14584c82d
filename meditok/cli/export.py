"""``meditok export CKPT --format onnx|torchscript OUT``: the tokenizer's two halves as
standalone models (images → tokens, tokens → images), checked against PyTorch."""
from __future__ import annotations

import argparse
from pathlib import Path


def _export(args: argparse.Namespace) -> int:
    import dataclasses

    from meditok.errors import MedITokError
    from meditok.tokenizer.export import export
    from meditok.tokenizer.hub import load_tokenizer
    from meditok.tokenizer.kernels.cpu import configure

    configure(args.threads)
    model = load_tokenizer(args.checkpoint, "cpu")
    images = None
    if args.check:
        from meditok.data.preprocess import load_images

        missing = [p for p in args.check if not Path(p).is_file()]
        if missing:
            raise MedITokError(f"--check image not found: {missing[0]}")
        size = args.image_size or model.config.preprocess.image_size
        images = load_images(args.check, dataclasses.replace(model.config.preprocess, image_size=size))
    info = export(model, args.out, fmt=args.format, batch=args.batch, image_size=args.image_size,
                  overwrite=args.overwrite, check_images=images)
    c = info["check"]
    print(f"wrote {Path(args.out) / info['tokenize']} and {Path(args.out) / info['detokenize']} "
          f"({info['exporter']}, {info['export_seconds']} s)")
    print(f"check on {c['images']} {'image' if c['images'] == 1 else 'images'}"
          f"{'' if args.check else ' (random example)'}: tokens equal to PyTorch "
          f"{c['tokens_equal']}/{c['tokens']} ({100 * c['token_agreement']:.3f} %), "
          f"decoder max |Δ| {c['recon_max_abs_diff']:.2e}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="export the tokenizer halves to ONNX or TorchScript",
        description="Write OUT/tokenize.{onnx,pt} (images [B,3,H,W] in [-1,1] → tokens "
                    "[B,K,h,w] int64), OUT/detokenize.{onnx,pt} (tokens → images) and "
                    "OUT/export.json, then compare both with PyTorch.")
    p.add_argument("checkpoint", help="pretrained directory, weights file, bundled name "
                                      "(meditok-small) or preset:NAME")
    p.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    p.add_argument("out", help="output directory")
    p.add_argument("--image-size", type=int, default=None,
                   help="example image side for tracing (default: the checkpoint's)")
    p.add_argument("--batch", type=int, default=1, help="example batch for tracing")
    p.add_argument("--check", nargs="*", default=None, metavar="IMAGE",
                   help="real images to compare the exported models with PyTorch on")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.set_defaults(func=_export)
