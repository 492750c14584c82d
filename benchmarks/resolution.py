"""At which resolution should `meditok tokenize / reconstruct` run the shipped model?

Measures the bundled ``meditok-small`` (trained at 64 px) on held-out images of five
modalities — files whose corpus split is ``test`` (never trained on) plus a volume the corpus
rejected (``breast1``, modality undocumented, never in the corpus) — with the verbs' own
resize policy (aspect kept, longer side = SIZE, sides multiples of 8) at several sizes:

* ``psnr_model`` / ``ssim_model``: reconstruction vs the model input at that size (what
  ``metrics.csv`` reports);
* ``psnr_ref`` / ``ssim_ref``: the reconstruction upsampled (bilinear) to a fixed reference
  resolution (the same image at longer side 512) vs the image at that resolution — how much
  of the user's image survives the round trip, comparable across sizes;
* seconds per image (tokenize + detokenize, batch 1, 2 threads) and tokens per image.

Usage: python benchmarks/resolution.py [--shared ../shared/data] [--sizes 64,128,...]
Writes benchmarks/results/resolution.json and resolution.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from meditok import MedITok
from meditok.data.corpus_jobs import hash_split
from meditok.data.preprocess import to_unit
from meditok.data.readers import read_image, read_volume
from meditok.data.sources import vqa_rad_modality
from meditok.metrics.image import psnr, ssim
from meditok.tokenizer.resolution import Resolution, model_input
from meditok.utils.io import atomic_write_text

HERE = Path(__file__).resolve().parent
REF_SIDE = 512


def held_out(shared: Path, per_modality: int) -> list[tuple[str, str, object]]:
    """(name, modality, MedicalImage) of test-split images of five modalities."""
    out: list[tuple[str, str, object]] = []
    qs = json.loads((shared / "vqa_rad" / "trainset.json").read_text())
    qs += json.loads((shared / "vqa_rad" / "testset.json").read_text())
    by_img: dict[str, list] = {}
    for q in qs:
        by_img.setdefault(q["image_name"], []).append(q)
    counts: dict[str, int] = {}
    for img in sorted((shared / "vqa_rad" / "images").glob("*.jpg")):
        mod = vqa_rad_modality(by_img.get(img.name, []))
        key = {"X-ray": "xray", "CT": "ct", "MRI": "mri"}.get(mod)
        if key is None or hash_split(f"vqa_rad/{img.stem}") != "test" or counts.get(key, 0) >= per_modality:
            continue
        counts[key] = counts.get(key, 0) + 1
        out.append((f"vqa_rad/{img.name}", key, read_image(img)))
    fundus = [f for f in sorted((shared / "retina_vessels" / "CHASE_DB1").glob("Image_*.jpg"))
              if hash_split(f"chase_db1/chase_{f.stem}") == "test"]
    fundus += [f for f in sorted((shared / "retina_vessels" / "DRIVE").glob("*/images/*.tif"))
               if hash_split(f"drive/drive_{f.stem}") == "test"]
    out += [(f"fundus/{f.name}", "fundus", read_image(f)) for f in fundus[:per_modality]]
    isic = [f for f in sorted((shared / "isic_cc0_550").glob("ISIC_*.jpg"))
            if hash_split(f"isic/{f.stem}") == "test"]
    out += [(f"isic/{f.name}", "dermoscopy", read_image(f)) for f in isic[:per_modality]]
    sam = [f for f in sorted((shared / "sam_med2d_demo" / "images").glob("*.png"))
           if hash_split(f"sam_med2d/{f.stem}") == "test"]
    out += [(f"sam_med2d/{f.name}", "ct", read_image(f)) for f in sam[:per_modality]]
    series = shared / "ct_volume" / "example_ct_dicom"
    if series.is_dir() and hash_split("totalsegmentator_dicom/series") == "test":
        out.append(("ct_dicom_series (middle slice)", "ct", read_volume(series).slice()))
    breast = shared / "radiomics_nrrd" / "breast1_image.nrrd"
    if breast.exists():
        vol = read_volume(breast)
        out.append(("radiomics/breast1 (never in the corpus)", "mri", vol.slice()))
    return out


@torch.no_grad()
def measure(model: MedITok, images, sizes: list[int]) -> list[dict]:
    pre = model.config.preprocess
    rows = []
    for name, mod, img in images:
        ref_policy = Resolution(REF_SIDE, max_side=None)
        ref = model_input(img, pre, ref_policy, mod)[None]
        for size in sizes:
            x = model_input(img, pre, Resolution(size, max_side=None), mod)[None]
            t0 = time.perf_counter()
            tok = model.tokenize(x)
            rec = model.detokenize(tok)
            dt = time.perf_counter() - t0
            up = F.interpolate(rec, size=ref.shape[-2:], mode="bilinear", align_corners=False,
                               antialias=rec.shape[-1] > ref.shape[-1]).clamp(-1, 1)
            rows.append({"image": name, "modality": mod, "source": list(img.array.shape[:2]),
                         "size": size, "model_input": list(x.shape[-2:]),
                         "tokens": int(tok.numel()), "seconds": round(dt, 4),
                         "psnr_model": float(psnr(to_unit(rec), to_unit(x))[0]),
                         "ssim_model": float(ssim(to_unit(rec), to_unit(x))[0]),
                         "psnr_ref": float(psnr(to_unit(up), to_unit(ref))[0]),
                         "ssim_ref": float(ssim(to_unit(up), to_unit(ref))[0])})
        print(name, mod, [round(r["psnr_ref"], 2) for r in rows[-len(sizes):]], flush=True)
    return rows


def summarise(rows: list[dict], sizes: list[int]) -> dict:
    summary = {}
    for size in sizes:
        sub = [r for r in rows if r["size"] == size]
        mods = sorted({r["modality"] for r in sub})
        summary[str(size)] = {
            "n": len(sub),
            **{k: float(np.mean([r[k] for r in sub])) for k in
               ("psnr_model", "ssim_model", "psnr_ref", "ssim_ref", "seconds", "tokens")},
            "psnr_ref_per_modality": {m: float(np.mean([r["psnr_ref"] for r in sub if r["modality"] == m]))
                                      for m in mods}}
    return summary


def conclusion(summary: dict, sizes: list[int]) -> str:
    """The trade-off in words: dB gained and time multiplied per step of size."""
    parts = []
    for a, b in zip(sizes, sizes[1:]):
        sa, sb = summary[str(a)], summary[str(b)]
        parts.append(f"{a}→{b}: {sb['psnr_ref'] - sa['psnr_ref']:+.2f} dB for "
                     f"{sb['seconds'] / max(sa['seconds'], 1e-9):.1f}x the time")
    return "Gain per step (PSNR vs the reference): " + "; ".join(parts) + "."


def markdown(result: dict) -> str:
    sizes = result["sizes"]
    lines = ["# Resolution of the batch verbs (meditok-small, held-out images)", "",
             f"{result['n_images']} held-out images ({', '.join(result['modalities'])}); machine: "
             f"{result['machine']}; load before: {result['load']}.", "",
             "| size (longer side) | PSNR at model res | SSIM at model res | PSNR vs 512-px reference "
             "| SSIM vs reference | s / image | tokens / image |", "|---|---|---|---|---|---|---|"]
    for s in sizes:
        m = result["summary"][str(s)]
        lines.append(f"| {s} | {m['psnr_model']:.2f} | {m['ssim_model']:.3f} | {m['psnr_ref']:.2f} | "
                     f"{m['ssim_ref']:.3f} | {m['seconds']:.3f} | {m['tokens']:.0f} |")
    lines += ["", "PSNR vs the 512-px reference, per modality:", "",
              "| size | " + " | ".join(result["modalities"]) + " |",
              "|---|" + "---|" * len(result["modalities"])]
    for s in sizes:
        per = result["summary"][str(s)]["psnr_ref_per_modality"]
        lines.append(f"| {s} | " + " | ".join(f"{per.get(m, float('nan')):.2f}" for m in result["modalities"]) + " |")
    lines += ["", result["conclusion"], ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--sizes", default="64,128,192,256,384,512")
    ap.add_argument("--per-modality", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    load = os.getloadavg()
    model = MedITok.from_pretrained("meditok-small").eval()
    images = held_out(args.shared, args.per_modality)
    rows = measure(model, images, sizes)
    summary = summarise(rows, sizes)
    result = {"sizes": sizes, "n_images": len(images), "modalities": sorted({m for _, m, _ in images}),
              "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads, "
                         f"torch {torch.__version__}", "load": [round(v, 2) for v in load],
              "summary": summary, "rows": rows,
              "conclusion": conclusion(summary, sizes)}
    (HERE / "results").mkdir(exist_ok=True)
    atomic_write_text(HERE / "results" / "resolution.json", json.dumps(result, indent=1))
    atomic_write_text(HERE / "results" / "resolution.md", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
