"""``meditok incontext {train,eval,run,bundle}``: the in-context medical vision generalist (MVG).

Examples::

    meditok incontext train configs/incontext/small.yaml --data.root ../shared/data
    meditok incontext eval --model meditok-mvg-small --specialist drive=runs/incontext/unet_drive/final \\
        --strategy random nearest --out results/incontext
    meditok incontext run --prompt-image A.tif --prompt-label A_mask.png --query C.tif --out D.png
"""
from __future__ import annotations

import argparse
import sys

from meditok.utils.cliargs import add_runtime_arguments, apply_threads


def _train(args: argparse.Namespace) -> int:
    from meditok.engine.launch import run_training
    from meditok.incontext.config import InContextConfig
    from meditok.incontext.train import train

    return run_training(args, InContextConfig, train, "meditok incontext train",
                        lambda cfg: cfg.loop.output_dir, done="model")


def _pairs(items: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for it in items or []:
        if "=" not in it:
            raise SystemExit(f"meditok incontext eval: error: {what} must look like NAME=CHECKPOINT, got {it!r}")
        k, v = it.split("=", 1)
        out[k] = v
    return out


def _eval(args: argparse.Namespace) -> int:
    from meditok.incontext.bench import run_evaluation

    apply_threads(args)
    models = args.model or ["meditok-mvg-small"]
    labels = args.label or []
    if labels and len(labels) != len(models):
        print("meditok incontext eval: error: give one --label per --model", file=sys.stderr)
        return 2
    pairs = list(zip(labels or models, models))
    result = run_evaluation(pairs, args.out, data_root=args.data, specialists=_pairs(args.specialist, "--specialist"),
                            seg_sets=args.sets, restorations=args.restoration, strategies=args.strategy,
                            max_cases=args.max_cases, seed=args.seed, overwrite=args.overwrite)
    print(f"results written to {args.out} ({result['wall_time_s']} s)")
    return 0


def _run(args: argparse.Namespace) -> int:
    from meditok.incontext.run import run_incontext

    apply_threads(args)
    res = run_incontext(args.prompt_image, args.prompt_label, args.query, args.out, task=args.task,
                        model=args.model, mode=args.mode, inference=args.inference, scale=args.scale,
                        prompt_select=args.prompt_select,
                        modality=args.modality, overwrite=args.overwrite, device=args.device)
    print(f"{res.out} written ({res.mode}, {res.tiles} tile(s)); panel {res.overlay}")
    return 0


def _bundle(args: argparse.Namespace) -> int:
    from meditok.incontext.card import bundle_model

    out = bundle_model(args.src, args.dst, args.name or args.dst.rstrip("/").split("/")[-1],
                       results=args.results, label=args.label, overwrite=args.overwrite)
    print(f"model bundled into {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``meditok incontext …`` to the top-level parser."""
    group = subparsers.add_parser("incontext", help="in-context medical vision generalist (MVG): prompted "
                                                    "segmentation, denoising, inpainting",
                                  description="One model, prompted with an (image, label image) pair, "
                                              "produces the label image of a query (MVG paper).")
    verbs = group.add_subparsers(dest="verb", metavar="VERB")
    group.set_defaults(func=lambda a: (group.print_help(), 2)[1])

    p = verbs.add_parser("train", help="train or resume an MVG / token GPT / U-Net specialist",
                         description="Train from a YAML config (configs/incontext/); dotted overrides such as "
                                     "--loop.steps 100 --data.root ../shared/data follow the config path.")
    from meditok.engine.launch import add_train_arguments

    add_train_arguments(p)
    p.set_defaults(func=_train)

    p = verbs.add_parser("eval", help="mIoU / Dice and MAE / PSNR / SSIM tables (paper Tables 2 and 3)")
    p.add_argument("--model", action="append", help="in-context model(s) (default: meditok-mvg-small)")
    p.add_argument("--label", action="append", help="table label per --model")
    p.add_argument("--specialist", action="append", help="SET=CHECKPOINT of a U-Net specialist (drive=…)")
    p.add_argument("--sets", nargs="*", default=None, help="segmentation sets (default: all)")
    p.add_argument("--restoration", nargs="*", default=None, help="ct_denoise mr_denoise ct_inpaint mr_inpaint")
    p.add_argument("--strategy", nargs="+", default=["position"], help="prompt selection: position random nearest")
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--max-cases", type=int, default=0, help="first N test cases per set (0: all)")
    p.add_argument("--seed", type=int, default=0)
    add_runtime_arguments(p, device=False, quiet=False)
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_eval)

    p = verbs.add_parser("run", help="predict one query's label image from one prompt pair")
    p.add_argument("--prompt-image", required=True, help="prompt image (any readable image, DICOM, NIfTI slice)")
    p.add_argument("--prompt-label", required=True, help="its label: a mask PNG (segmentation) or the clean image")
    p.add_argument("--query", required=True, help="the image to label")
    p.add_argument("--out", required=True, help="output PNG (the overlay panel goes to *_overlay.png)")
    p.add_argument("--task", default="segmentation", choices=["segmentation", "denoising", "inpainting"])
    p.add_argument("--model", default=None, help="checkpoint (default: the bundled meditok-mvg-small)")
    p.add_argument("--mode", default="auto", choices=["auto", "tiled", "whole"],
                   help="tiled: cell-size tiles at --scale (segmentation of large images); whole: squash to one "
                        "cell; auto: tiled when the scaled query is larger than two cells")
    p.add_argument("--scale", type=float, default=1.0,
                   help="native px -> model px for tiling (DRIVE-like fundus 1.0, ~1000 px fundus 0.6, "
                        "512 px CT 0.25)")
    p.add_argument("--prompt-select", default="position", choices=["position", "random", "nearest"])
    p.add_argument("--inference", default="auto", choices=["auto", "ar", "mim"],
                   help="objective the label is decoded with; auto: the one the task was mostly trained with "
                        "(segmentation AR, denoising / inpainting MIM)")
    p.add_argument("--modality", default=None, help="modality hint (ct turns 16-bit / NIfTI values into HU)")
    add_runtime_arguments(p, quiet=False)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_run)

    p = verbs.add_parser("bundle", help="copy a trained model with its weights and a model card")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--name", default=None)
    p.add_argument("--results", default=None, help="incontext_eval.json to quote in the card")
    p.add_argument("--label", default=None, help="the model's label in --results (default: its first model)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_bundle)
