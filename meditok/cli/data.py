"""``meditok data ...``: build-corpus, shard, qc, slice (thin wrappers over meditok.data)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _build_corpus(args: argparse.Namespace) -> int:
    from meditok.data.corpus import build_corpus, summary_markdown

    summary = build_corpus(args.shared, args.out, workers=args.workers, sources=args.sources,
                           extra=args.extra, force=args.force, progress=not args.quiet,
                           extra_csv=args.extra_csv)
    print(summary_markdown(summary))
    return 0


def _shard(args: argparse.Namespace) -> int:
    from meditok.data.shards import write_shards
    from meditok.utils.lock import output_lock

    with output_lock(args.out):
        index = write_shards(args.manifest, args.out, root=args.root,
                             samples_per_shard=args.per_shard, split=args.split)
    print(f"wrote {index['num_samples']} samples in {len(index['shards'])} shards to {args.out}")
    return 0


def _qc(args: argparse.Namespace) -> int:
    from meditok.data.quality import QCConfig, check_quality
    from meditok.data.readers import iter_image_files, read_image
    from meditok.errors import ImageReadError

    cfg = QCConfig(min_side=args.min_side)
    bad = 0
    for f in iter_image_files(args.inputs):
        try:
            res = check_quality(read_image(f), cfg)
            verdict = "ok" if res.passed else "reject:" + ",".join(res.reasons)
        except ImageReadError as exc:
            verdict = f"unreadable: {exc.reason}"
        except Exception as exc:  # noqa: BLE001 - one odd file is reported, the others go on
            verdict = f"unreadable: unexpected {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        bad += verdict != "ok"
        print(f"{verdict}\t{f}")
    print(f"{bad} rejected", file=sys.stderr)
    return 0


def _slice(args: argparse.Namespace) -> int:
    from meditok.data.inputs import InputItem, write_local_map
    from meditok.data.readers import read_volume
    from meditok.data.volumes import SliceConfig, slice_volume
    from meditok.utils.lock import output_lock

    src = Path(args.volume)
    vol = read_volume(src, modality=args.modality)
    cfg = SliceConfig(step=args.step, planes=tuple(args.planes))
    # Series folders and scan files are often named after the patient: outputs are named by
    # content hash unless a stem is given; the hash → path map stays in OUT/_local/.
    item = InputItem(src, src.name, "series" if src.is_dir() else "volume",
                     tuple(sorted(f for f in src.iterdir() if f.is_file())) if src.is_dir() else ())
    stem = args.stem or item.content_id()
    with output_lock(args.out):
        kept, rejected = slice_volume(vol, args.out, stem, cfg, modality=args.modality)
        if not args.stem:
            write_local_map(Path(args.out) / "_local" / "sources.csv", [item], [stem])
    print(json.dumps({"kept": len(kept), "rejected": len(rejected), "stem": stem}))
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``data`` command and its sub-verbs to a top-level ``meditok`` parser."""
    p = subparsers.add_parser("data", help="data curation: corpus, shards, QC, volume slicing")
    sub = p.add_subparsers(dest="data_command", required=True)

    b = sub.add_parser("build-corpus", help="build the offline corpus (resumable)")
    b.add_argument("--shared", default="../shared/data", help="shared real-data folder")
    b.add_argument("--out", required=True, help="corpus output folder")
    b.add_argument("--workers", type=int, default=2)
    b.add_argument("--sources", nargs="*", default=None,
                   help="subset of: medmnist isic vqa_rad fundus sam_med2d volumes package_samples")
    b.add_argument("--extra", nargs="*", default=None, metavar="PATH[=MODALITY]",
                   help="more files/folders to include; FOLDER=MODALITY (e.g. scans/us=ultrasound) "
                        "sets the modality of its files, else the DICOM header decides")
    b.add_argument("--extra-csv", default=None, metavar="CSV",
                   help="user files with their modality: columns path, modality[, caption, label]")
    b.add_argument("--force", action="store_true", help="redo finished jobs")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=_build_corpus)

    s = sub.add_parser("shard", help="pack a manifest into WebDataset tar shards")
    s.add_argument("manifest")
    s.add_argument("--out", required=True)
    s.add_argument("--root", default=None, help="folder identifiers are relative to")
    s.add_argument("--per-shard", type=int, default=1000)
    s.add_argument("--split", default=None)
    s.set_defaults(func=_shard)

    q = sub.add_parser("qc", help="run the 2D quality rules on files/folders")
    q.add_argument("inputs", nargs="+")
    q.add_argument("--min-side", type=int, default=128)
    q.set_defaults(func=_qc)

    v = sub.add_parser("slice", help="volume → 2D slices (App. A.2.1)")
    v.add_argument("volume", help="NIfTI / NRRD / MHA file or DICOM series folder")
    v.add_argument("--out", required=True)
    v.add_argument("--modality", choices=["ct", "mri"], default=None)
    v.add_argument("--step", type=int, default=5)
    v.add_argument("--planes", nargs="+", default=["axial", "coronal", "sagittal"])
    v.add_argument("--stem", default=None,
                   help="output name prefix (default: a content hash; the hash → path map is "
                        "written to OUT/_local/sources.csv, which stays on this machine)")
    v.set_defaults(func=_slice)
    return p
