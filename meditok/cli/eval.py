"""``meditok tokenizer eval {recon,probe,volume,efficiency,codebook}`` (alias ``meditok eval``).

A thin layer over :mod:`meditok.tokenizer.bench`. Every verb writes ``<name>.json`` +
``<name>.md`` into ``--out`` (default ``runs/eval/<checkpoint name>``, shared by all verbs of
one checkpoint so that ``meditok report runs/eval/<name>`` picks everything up). CHECKPOINT is
anything :func:`meditok.tokenizer.hub.load_tokenizer` takes: a directory or file, a bundled
name (``meditok-small``) or ``preset:NAME``.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

DEFAULT_DATA_ROOT = os.environ.get("MEDITOK_SHARED_DATA", "../shared/data")


def _common(p: argparse.ArgumentParser, checkpoint: bool = True) -> None:
    if checkpoint:
        p.add_argument("checkpoint", help="pretrained directory/file, a bundled name "
                                          "(meditok-small), or preset:NAME (untrained)")
    p.add_argument("--out", type=Path, default=None,
                   help="output directory (default runs/eval/<checkpoint name>)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of an earlier run in --out")


def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, help="manifest CSV/Parquet (identifier, modality, ...)")
    p.add_argument("--split", default=None, help="only manifest rows of this split")
    p.add_argument("--images", nargs="+", type=Path, help="image files or folders instead of "
                                                          "a manifest")
    p.add_argument("--modality", default="unknown", help="modality of --images")
    p.add_argument("--limit", type=int, default=None, help="first N samples only")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` verb group (the tokenizer's benchmarks) to a parser."""
    ev = subparsers.add_parser("eval", help="benchmarks: reconstruction, probing, 3D, "
                                            "efficiency, codebook")
    sub = ev.add_subparsers(dest="eval_command", metavar="BENCHMARK", required=True)

    p = sub.add_parser("recon", help="PSNR/SSIM/rFID per modality (paper Table 1)")
    _common(p)
    _source_args(p)
    p.add_argument("--no-fid", action="store_true", help="skip rFID (faster)")
    p.add_argument("--grid", type=int, default=4, help="examples per modality in the grids")
    p.set_defaults(func=cmd_recon)

    p = sub.add_parser("probe", help="linear probing mAP/AUC (paper Table 2)")
    _common(p)
    p.add_argument("--data-root", type=Path, default=Path(DEFAULT_DATA_ROOT))
    p.add_argument("--datasets", default="breastmnist,pneumoniamnist,isic")
    p.add_argument("--features", default="tokens",
                   help="comma list of tokens (flattened quantized_latents), features, embed")
    p.add_argument("--no-pixels", action="store_true", help="skip the raw-pixel baseline")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--probe-batch", type=int, default=128)
    p.add_argument("--max-epochs", type=int, default=1000)
    p.add_argument("--patience", type=int, default=20)
    p.add_argument("--monitor", default="loss", choices=["loss", "auc"],
                   help="early-stopping signal on the validation split")
    p.add_argument("--max-train", type=int, default=None, help="cap the training split size")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("volume", help="3D volumes by axial slices (App. D.2)")
    _common(p)
    p.add_argument("volumes", nargs="+", type=Path, help="NIfTI files, DICOM folders, NRRD")
    p.add_argument("--modality", default="auto", choices=["auto", "ct", "mri"])
    p.add_argument("--fid", action="store_true", help="also slice-level rFID")
    p.add_argument("--features", default="features",
                   help="per-volume feature vector: features, embed, tokens or none")
    p.set_defaults(func=cmd_volume)

    p = sub.add_parser("efficiency", help="images/s and peak memory (App. D.6 Table S4)")
    _common(p, checkpoint=False)
    p.add_argument("checkpoints", nargs="+", help="one or more checkpoints / preset:NAME")
    p.add_argument("--settings", default=None,
                   help="BATCHxRES list, e.g. 16x256,8x512,4 (default: paper + CPU-sized)")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=cmd_efficiency)

    p = sub.add_parser("codebook", help="code usage, perplexity and t-SNE (App. D.4)")
    _common(p)
    _source_args(p)
    p.add_argument("--medmnist", default=None, help="use a MedMNIST set instead, e.g. "
                                                    "breastmnist:test")
    p.add_argument("--data-root", type=Path, default=Path(DEFAULT_DATA_ROOT))
    p.add_argument("--tsne-points", type=int, default=512, help="per sub-codebook; 0: no t-SNE")
    p.set_defaults(func=cmd_codebook)


# ----------------------------------------------------------------------------- handlers
def _out(args: argparse.Namespace, label: str | None, result_name: str) -> Path:
    """The output folder, refused when it already holds this benchmark's results (unless
    ``--overwrite``) — several benchmarks of one checkpoint share a folder on purpose. Checked
    before the model is loaded."""
    from meditok.errors import MedITokError
    from meditok.tokenizer.hub import checkpoint_label

    out = args.out or Path("runs") / "eval" / (label or checkpoint_label(args.checkpoint))
    existing = [out / f"{result_name}{ext}" for ext in (".json", ".md")]
    if any(p.exists() for p in existing) and not getattr(args, "overwrite", False):
        raise MedITokError(f"{out} already holds {result_name} results; pass --overwrite to "
                           "replace them or choose another --out")
    return out


def _locked(out: Path):
    from meditok.utils.lock import output_lock

    return output_lock(out)


def _model(args: argparse.Namespace):
    """The checkpoint string → model (one resolver for every verb), on the resolved device."""
    from meditok.tokenizer.hub import checkpoint_label, load_tokenizer
    from meditok.utils.device import resolve_device, seed_everything

    args.device = str(resolve_device(args.device))
    seed_everything(args.seed)
    return load_tokenizer(args.checkpoint, args.device), checkpoint_label(args.checkpoint)


def _samples(args: argparse.Namespace):
    from meditok.data.benchmarks import samples_from_manifest, samples_from_paths
    from meditok.errors import InvalidInputError

    if args.data:
        samples = samples_from_manifest(args.data, args.split)
    elif args.images:
        samples = samples_from_paths(args.images, args.modality)
    else:
        raise InvalidInputError("give --data MANIFEST or --images PATH ...")
    samples = samples[: args.limit] if args.limit else samples
    if not samples:
        raise InvalidInputError("no input images found")
    return samples


def _done(out: Path, name: str) -> int:
    print((out / f"{name}.md").read_text(encoding="utf-8"))
    print(f"results: {out / (name + '.json')}")
    return 0


def cmd_recon(args: argparse.Namespace) -> int:
    from meditok.tokenizer.bench.reconstruction import RESULT_NAME, evaluate_reconstruction

    out = _out(args, None, RESULT_NAME)
    model, label = _model(args)
    with _locked(out):
        evaluate_reconstruction(model, _samples(args), batch_size=args.batch_size,
                                device=args.device, compute_fid=not args.no_fid,
                                grid_examples=args.grid, out_dir=out, label=label, seed=args.seed,
                                progress=not args.quiet)
    return _done(out, RESULT_NAME)


def cmd_probe(args: argparse.Namespace) -> int:
    from meditok.metrics.probe import ProbeConfig
    from meditok.tokenizer.bench.probe_bench import RESULT_NAME, run_probe

    out = _out(args, None, RESULT_NAME)
    model, label = _model(args)
    cfg = ProbeConfig(lr=args.lr, batch_size=args.probe_batch, max_epochs=args.max_epochs,
                      patience=args.patience, monitor=args.monitor)
    with _locked(out):
        run_probe(model, args.data_root, datasets=_list(args.datasets), kinds=_list(args.features),
                  pixel_baseline=not args.no_pixels, config=cfg, batch_size=args.batch_size,
                  device=args.device, out_dir=out, label=label, seed=args.seed,
                  max_train=args.max_train, progress=not args.quiet)
    return _done(out, RESULT_NAME)


def cmd_volume(args: argparse.Namespace) -> int:
    import sys

    from meditok.errors import InvalidInputError
    from meditok.tokenizer.bench.volume import RESULT_NAME, evaluate_volumes

    missing = [str(p) for p in args.volumes if not Path(p).exists()]
    if missing:
        raise InvalidInputError(f"volume not found: {', '.join(missing)}")
    out = _out(args, None, RESULT_NAME)
    model, label = _model(args)
    with _locked(out):
        result = evaluate_volumes(model, args.volumes, out, batch_size=args.batch_size,
                                  device=args.device, modality=args.modality, compute_fid=args.fid,
                                  feature_kind=None if args.features == "none" else args.features,
                                  label=label, seed=args.seed, progress=not args.quiet)
    for s in result["skipped"]:
        print(f"meditok eval volume: skipped {s['item']}: {s['reason']}", file=sys.stderr)
    return _done(out, RESULT_NAME)


def cmd_efficiency(args: argparse.Namespace) -> int:
    from meditok.tokenizer.bench.efficiency import RESULT_NAME, run_efficiency
    from meditok.tokenizer.hub import checkpoint_label, load_tokenizer
    from meditok.utils.device import resolve_device

    args.device = str(resolve_device(args.device))
    models = [(checkpoint_label(c), load_tokenizer(c, args.device)) for c in args.checkpoints]
    out = _out(args, "efficiency", RESULT_NAME)
    with _locked(out):
        run_efficiency(models, settings=args.settings, device=args.device, iters=args.iters,
                       warmup=args.warmup, amp=args.amp, out_dir=out, seed=args.seed,
                       threads=args.threads, progress=not args.quiet)
    return _done(out, RESULT_NAME)


def cmd_codebook(args: argparse.Namespace) -> int:
    from meditok.data.benchmarks import load_medmnist
    from meditok.data.preprocess import uint8_to_input
    from meditok.tokenizer.bench.codebook import RESULT_NAME, analyse_codebook, batches_from_samples

    out = _out(args, None, RESULT_NAME)
    model, label = _model(args)
    pre = model.config.preprocess
    if args.medmnist:
        name, _, split = args.medmnist.partition(":")
        images = load_medmnist(args.data_root / "medmnist", name)[split or "test"].images
        images = images[: args.limit] if args.limit else images
        source = (uint8_to_input(images[i:i + args.batch_size], pre)
                  for i in range(0, len(images), args.batch_size))
        total, dataset = len(images), args.medmnist
    else:
        samples = _samples(args)
        source = batches_from_samples(samples, pre, args.batch_size)
        total, dataset = len(samples), str(args.data or "images")
    with _locked(out):
        analyse_codebook(model, source, out_dir=out, total=total, device=args.device,
                         tsne_points=args.tsne_points, label=label, seed=args.seed,
                         dataset=dataset, progress=not args.quiet)
    return _done(out, RESULT_NAME)


def _list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]
