"""``meditok synth {pretokenize,train,sample,eval,bundle}``: modality-conditioned image synthesis.

Examples::

    meditok synth pretokenize corpus/manifest.csv --tokenizer meditok-small --out runs/synthesis/tokens
    meditok synth train configs/synthesis/small.yaml --data.shards runs/synthesis/tokens
    meditok synth sample --condition ultrasound --n 64 --seed 1 --out samples/
    meditok synth eval corpus/manifest.csv --generator meditok-gpt-small --out results/
"""
from __future__ import annotations

import argparse

from meditok.utils.cliargs import add_runtime_arguments, apply_threads


def _pretokenize(args: argparse.Namespace) -> int:
    from meditok.data.token_shards import describe_tokenizer, pretokenize
    from meditok.tokenizer.hub import load_tokenizer

    apply_threads(args)
    tok = load_tokenizer(args.tokenizer, args.device)
    index = pretokenize(args.manifest, tok, args.out, spec=args.tokenizer, splits=args.split,
                        shard_size=args.shard_size, batch_size=args.batch_size,
                        overwrite=args.overwrite, progress=not args.quiet)
    print(f"{index.get('num_tokenized')} images tokenised into {len(index['shards'])} shards in {args.out} "
          f"({index.get('num_skipped')} skipped, see skipped.csv); tokenizer "
          f"{describe_tokenizer(index['tokenizer'])}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from meditok.engine.launch import run_training
    from meditok.synthesis.config import SynthConfig
    from meditok.synthesis.train import train

    return run_training(args, SynthConfig, train, "meditok synth train",
                        lambda cfg: cfg.loop.output_dir, done="generator")


def _settings(args: argparse.Namespace) -> dict:
    return {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
            "cfg_scale": args.cfg_scale}


def _sample(args: argparse.Namespace) -> int:
    from meditok.synthesis.model import Synthesizer, resolve_conditions
    from meditok.synthesis.sample import sample_to_folder

    apply_threads(args)
    synth = Synthesizer.load(args.generator, args.tokenizer, args.device)
    conds = resolve_conditions(synth, args.condition)
    record = sample_to_folder(synth, conds, args.n, args.out, seed=args.seed, batch_size=args.batch_size,
                              overwrite=args.overwrite, progress=not args.quiet, **_settings(args))
    for cond, files in record["files"].items():
        print(f"{cond}: {len(files) - 1} images + {files[-1]}")
    print(f"written to {args.out} (settings {record['settings']}, seed {args.seed})")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from meditok.synthesis.bench import EvalConfig, run_evaluation

    apply_threads(args)
    cfg = EvalConfig(n=args.n, ref_cap=args.ref_cap, seed=args.seed, batch_size=args.batch_size,
                     device=args.device, features_cache=args.features_cache, grid_n=args.grid_n)
    labels = args.label or []
    result = run_evaluation(args.manifest, args.generator or ["meditok-gpt-small"], args.out, cfg,
                            labels=labels, overwrite=args.overwrite, progress=not args.quiet,
                            settings=_settings(args))
    print(result["markdown"])
    print(f"results written to {args.out}")
    return 0


def _bundle(args: argparse.Namespace) -> int:
    from meditok.synthesis.bundle import bundle_generator

    out = bundle_generator(args.src, args.dst, args.name or args.dst.rstrip("/").split("/")[-1],
                           metrics=args.metrics, label=args.label, overwrite=args.overwrite,
                           sampling=_settings(args))
    print(f"generator bundled into {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``meditok synth …`` to the top-level parser."""
    group = subparsers.add_parser("synth", help="modality-conditioned image synthesis (LlamaGen-style GPT)",
                                  description="Autoregressive synthesis on MedITok tokens (paper §4.4).")
    verbs = group.add_subparsers(dest="verb", metavar="VERB")
    group.set_defaults(func=lambda a: (group.print_help(), 2)[1])

    p = verbs.add_parser("pretokenize", help="tokenise every image of a manifest into token shards")
    p.add_argument("manifest", help="corpus manifest (.csv / .parquet)")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory, bundled name or preset:NAME")
    p.add_argument("--out", required=True, help="shard folder (resumes an interrupted run)")
    p.add_argument("--split", action="append", help="only these splits (repeatable; default: all)")
    p.add_argument("--shard-size", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--overwrite", action="store_true", help="replace shards of another tokenizer/manifest")
    add_runtime_arguments(p)
    p.set_defaults(func=_pretokenize)

    p = verbs.add_parser("train", help="train or resume a conditional GPT on token shards",
                         description="Train from a YAML config (configs/synthesis/); dotted overrides "
                                     "such as --loop.steps 100 --data.shards DIR follow the config path.")
    from meditok.engine.launch import add_train_arguments

    add_train_arguments(p)
    p.set_defaults(func=_train)

    def sampling(p: argparse.ArgumentParser) -> None:
        p.add_argument("--temperature", type=float, default=None, help="default: the generator's")
        p.add_argument("--top-k", type=int, default=None, help="0: off")
        p.add_argument("--top-p", type=float, default=None, help="1: off")
        p.add_argument("--cfg-scale", type=float, default=None, help="classifier-free guidance (1: off)")
        p.add_argument("--batch-size", type=int, default=64)

    p = verbs.add_parser("sample", help="generate images for a condition (one PNG each + a grid)")
    p.add_argument("--condition", nargs="+", required=True,
                   help="modality (xray, ultrasound, dermoscopy, fundus, ct, mri, …), a class "
                        "condition (pneumoniamnist:pneumonia) or 'all'")
    p.add_argument("--n", type=int, default=16, help="images per condition")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--generator", default=None, help="generator directory (default: meditok-gpt-small)")
    p.add_argument("--tokenizer", default=None, help="default: the tokenizer the generator records")
    p.add_argument("--overwrite", action="store_true")
    sampling(p)
    add_runtime_arguments(p)
    p.set_defaults(func=_sample)

    p = verbs.add_parser("bundle", help="copy a trained generator with fp16 weights and a model card")
    p.add_argument("src", help="trained generator directory (runs/…/final)")
    p.add_argument("dst", help="destination (e.g. meditok/weights/meditok-gpt-small)")
    p.add_argument("--name", default=None, help="model name (default: the destination folder name)")
    p.add_argument("--metrics", default=None, help="synthesis_eval.json to quote in the card")
    p.add_argument("--label", default=None, help="the generator's label in that file")
    p.add_argument("--overwrite", action="store_true")
    for flag, kind in (("--temperature", float), ("--top-k", int), ("--top-p", float), ("--cfg-scale", float)):
        p.add_argument(flag, type=kind, default=None, help="new default sampling setting")
    p.set_defaults(func=_bundle)

    p = verbs.add_parser("eval", help="gFID, diversity and conditional accuracy per modality")
    p.add_argument("manifest", help="corpus manifest whose images are the real reference")
    p.add_argument("--generator", action="append", help="generator(s) to compare (repeatable)")
    p.add_argument("--label", action="append", help="table label per --generator")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=100, help="generated images per condition")
    p.add_argument("--ref-cap", type=int, default=400, help="most real reference images per condition")
    p.add_argument("--grid-n", type=int, default=16, help="images in each result grid")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--features-cache", default=None, help="file caching the real images' features")
    p.add_argument("--overwrite", action="store_true")
    sampling(p)
    add_runtime_arguments(p)
    p.set_defaults(func=_eval)
