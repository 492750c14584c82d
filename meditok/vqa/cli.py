"""``meditok vqa {train,eval,ask}``: medical VQA with MedITok as the vision tower of a small LM.

Examples::

    meditok vqa train configs/vqa/stage_a_small.yaml
    meditok vqa train configs/vqa/stage_b_small.yaml --loop.steps 300
    meditok vqa eval --model meditok-vqa-small --label "MedITok-small + SmolLM2" --out results/
    meditok vqa ask scan.jpg "Is there a fracture?"
    meditok vqa ask --batch questions.jsonl --out answers.jsonl
"""
from __future__ import annotations

import argparse

from meditok.utils.cliargs import add_runtime_arguments, apply_threads
import sys

DEFAULT_MODEL = "meditok-vqa-small"
DEFAULT_VQA_RAD = "../shared/data/vqa_rad"


def _train(args: argparse.Namespace) -> int:
    from meditok.engine.launch import run_training
    from meditok.vqa.config import VQATrainConfig
    from meditok.vqa.train import train

    return run_training(args, VQATrainConfig, lambda cfg: train(cfg, progress=cfg.loop.progress),
                        "meditok vqa train", lambda cfg: cfg.loop.output_dir, done="adapter")


def _eval(args: argparse.Namespace) -> int:
    from meditok.utils.lock import output_lock
    from meditok.utils.results import pct
    from meditok.vqa.bench import build_table, evaluate_model

    apply_threads(args)
    models = args.model or [DEFAULT_MODEL]
    labels = args.label or []
    if labels and len(labels) != len(models):
        print("meditok vqa eval: error: give one --label per --model", file=sys.stderr)
        return 2
    labels = labels or models
    with output_lock(args.out):
        for spec, label in zip(models, labels):
            rec = evaluate_model(spec, label, args.vqa_rad, args.out, args.device, args.batch_size,
                                 args.overwrite, not args.quiet, split=args.split,
                                 mismatched=args.mismatched_images, contrast_alpha=args.contrast_alpha)
            s = rec["scores"]
            print(f"{label}: closed acc {pct(s['closed']['closed_accuracy'])} %, open recall "
                  f"{pct(s['open']['open_recall'])} %, open acc {pct(s['open']['open_accuracy'])} % "
                  f"({rec['questions']} questions, {rec['eval_wall_s']} s)")
        result = build_table(args.vqa_rad, args.out, split=args.split, order=args.order or labels)
    print(f"table with {len(result['order'])} model(s) + baselines written to {args.out}/vqa_rad.md")
    return 0


def _ask(args: argparse.Namespace) -> int:
    from meditok.errors import InvalidInputError
    from meditok.vqa.ask import ask, ask_batch
    from meditok.vqa.model import VQAModel

    apply_threads(args)
    if args.batch:
        if not args.out:
            raise InvalidInputError("--batch needs --out FILE.jsonl")
        if args.image or args.question:
            raise InvalidInputError("give either IMAGE QUESTION or --batch FILE, not both")
    elif not args.image or args.question is None:
        raise InvalidInputError("give IMAGE and QUESTION (or --batch questions.jsonl --out answers.jsonl)")
    model = VQAModel.from_pretrained(args.model, map_location=args.device)
    if args.contrast_alpha is not None:
        model.config.contrast.alpha = args.contrast_alpha
        model.config.contrast.validate()
    if args.batch:
        summary = ask_batch(model, args.batch, args.out, args.overwrite, args.batch_size, not args.quiet)
        print(f"{summary['answered']} answered, {summary['errors']} with errors → {summary['out']}")
        return 0 if summary["answered"] or not summary["errors"] else 1
    print(ask(model, args.image, args.question, args.modality))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``meditok vqa …`` to the top-level parser."""
    group = subparsers.add_parser("vqa", help="medical visual question answering (LLaVA-style)",
                                  description="MedITok as the vision tower of a small LM (paper §4.5).")
    verbs = group.add_subparsers(dest="verb", metavar="VERB")
    group.set_defaults(func=lambda a: (group.print_help(), 2)[1])

    p = verbs.add_parser("train", help="train one stage (A: projector, B: projector + LoRA)",
                         description="Train from a YAML config (configs/vqa/); dotted overrides such as "
                                     "--loop.steps 100 follow the config path. Resumes from the newest "
                                     "checkpoint in loop.output_dir.")
    from meditok.engine.launch import add_train_arguments

    add_train_arguments(p)
    p.set_defaults(func=_train)

    p = verbs.add_parser("eval", help="score adapters on the full VQA-RAD test (or val) split (+ baselines)")
    p.add_argument("--model", action="append", help=f"adapter folder or bundled name (repeatable; default {DEFAULT_MODEL})")
    p.add_argument("--label", action="append", help="row name per --model")
    p.add_argument("--order", nargs="*", help="row order of the table (labels)")
    p.add_argument("--vqa-rad", default=DEFAULT_VQA_RAD, help="VQA-RAD folder")
    p.add_argument("--out", required=True, help="result folder (predictions, per-model JSON, vqa_rad.md)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--overwrite", action="store_true", help="re-answer even if predictions exist")
    p.add_argument("--mismatched-images", action="store_true",
                   help="control: each question sees another test image (fixed derangement, seed 0)")
    p.add_argument("--contrast-alpha", type=float, default=None,
                   help="visual contrastive decoding strength instead of the adapter's own "
                        "(model.contrast.alpha; 0: plain greedy)")
    p.add_argument("--split", choices=("test", "val"), default="test",
                   help="test (the release's 451 questions) or val (questions held out of train; "
                        "for adapters trained with data.train_split train-val)")
    add_runtime_arguments(p)
    p.set_defaults(func=_eval)

    p = verbs.add_parser("ask", help="answer a question about an image (or a JSONL batch)")
    p.add_argument("image", nargs="?", help="image file (PNG/JPEG/DICOM/…)")
    p.add_argument("question", nargs="?", help="the question")
    p.add_argument("--batch", help="JSONL file of {\"image\": …, \"question\": …} lines")
    p.add_argument("--out", help="answers JSONL (with --batch)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--modality", help="modality of IMAGE (ct, mri, xray, …) when it matters for reading it")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"adapter folder or bundled name (default {DEFAULT_MODEL})")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--contrast-alpha", type=float, default=None,
                   help="visual contrastive decoding strength instead of the adapter's own (0: plain greedy)")
    add_runtime_arguments(p)
    p.set_defaults(func=_ask)
