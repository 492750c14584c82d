"""Training throughput (images/s) per preset → benchmarks/results/train_speed.{json,md}

Times complete optimiser steps of :class:`meditok.tokenizer.train.Trainer` (generator + discriminator
+ logit-scale clamp) on real ISIC images from ``../shared/data`` (random images if absent:
speed does not depend on content). Two objectives per preset:

* ``full``: the reference stage-1 recipe (LPIPS when the image side is >= 48, PatchGAN with
  DiffAug + BCR and the adaptive weight, contrastive alignment to EfficientNet-Lite0);
* ``lean``: reconstruction + VQ + alignment only (``--loss.lpips 0 --loss.gan 0``).

    python benchmarks/train_speed.py                  # CPU: tiny, small (fp32)
    python benchmarks/train_speed.py --large          # + large (slow on CPU)
    python benchmarks/train_speed.py --device cuda    # GPU, bf16 autocast, all presets

Results from several devices are merged into one file (keyed by device).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from meditok.tokenizer.train import Trainer, TrainConfig
from meditok.utils.io import atomic_write_text

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("MEDITOK_SHARED_DATA", HERE.parents[1] / "shared" / "data"))
BATCH = {"cpu": {"tiny": 16, "small": 16, "large": 2}, "cuda": {"tiny": 64, "small": 64, "large": 16}}
TEACHER_SIZE = {"tiny": 64, "small": 128, "large": None}


def real_images(n: int, size: int) -> tuple[torch.Tensor, str]:
    files = sorted((SHARED / "isic_cc0_550").glob("ISIC_*.jpg"))[:n]
    if len(files) < n:
        return torch.rand(n, 3, size, size) * 2 - 1, "random"
    from meditok.data.preprocess import PreprocessConfig
    from meditok.data.preprocess import load_images

    return load_images(files, PreprocessConfig(image_size=size)), "isic"


def bench(preset: str, variant: str, device: str, batch: int, steps: int, out: Path) -> dict:
    over = {"model": {"preset": preset}, "stage": 1, "device": device,
            "precision": "bf16" if device == "cuda" else "fp32",
            "align": {"vision_teacher_size": TEACHER_SIZE[preset]},
            "data": {"batch_size": batch}, "steps": steps + 2, "output_dir": str(out),
            "tensorboard": False, "progress": False}
    if preset == "large":
        over["model"]["grad_checkpointing"] = device == "cuda"
    if variant == "lean":
        over["loss"] = {"lpips": 0.0, "gan": 0.0}
    cfg = TrainConfig.from_dict(over)
    trainer = Trainer(cfg)
    size = trainer.model.config.model.image_size
    images, source = real_images(batch, size)
    batch_d = {"image": images, "caption": ["dermoscopy image"] * batch}
    dev = trainer.device
    for _ in range(2):  # warm-up (allocator, kernels)
        trainer.train_step([batch_d])
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        metrics = trainer.train_step([batch_d])
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    res = {"preset": preset, "variant": variant, "device": dev.type, "precision": cfg.precision,
           "batch": batch, "image_size": size, "steps": steps, "images": source,
           "lpips": trainer.lpips is not None, "gan": trainer.disc is not None,
           "s_per_step": round(dt / steps, 3), "img_per_s": round(batch * steps / dt, 2),
           "params_M": round(trainer.model.num_parameters() / 1e6, 2),
           "final_loss_total": round(metrics["loss_total"], 4)}
    if dev.type == "cuda":
        res["peak_mem_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(json.dumps(res), flush=True)
    return res


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--large", action="store_true", help="include the large preset on CPU")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--presets", nargs="*", default=None)
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    presets = args.presets or (["tiny", "small", "large"] if device == "cuda" or args.large
                               else ["tiny", "small"])
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in presets:
            for variant in ("full", "lean"):
                rows.append(bench(preset, variant, device, BATCH[device][preset], args.steps,
                                  Path(tmp) / f"{preset}_{variant}"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "train_speed.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[device] = {"device_name": device_name(device), "torch": torch.__version__,
                    "command": "python benchmarks/train_speed.py " + " ".join(
                        a for a in os.sys.argv[1:]), "results": rows}
    atomic_write_text(path, json.dumps(data, indent=2))
    lines = ["# Training throughput", "",
             "Complete optimiser steps (generator + discriminator) of `meditok.tokenizer.train.Trainer`, "
             "stage-1 objective. `full`: LPIPS (if side >= 48) + PatchGAN/DiffAug/BCR + contrastive "
             "alignment to EfficientNet-Lite0; `lean`: `--loss.lpips 0 --loss.gan 0`.", ""]
    for dev, block in data.items():
        lines += [f"## {dev}: {block['device_name']} (torch {block['torch']})", "",
                  f"`{block['command']}`", "",
                  "| preset | variant | precision | batch | px | s/step | img/s | peak GiB |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in block["results"]:
            lines.append(f"| {r['preset']} | {r['variant']} | {r['precision']} | {r['batch']} | "
                         f"{r['image_size']} | {r['s_per_step']} | {r['img_per_s']} | "
                         f"{r.get('peak_mem_GiB', '-')} |")
        lines.append("")
    atomic_write_text(out / "train_speed.md", "\n".join(lines))
    print(f"wrote {path} and {out / 'train_speed.md'}")


if __name__ == "__main__":
    main()
