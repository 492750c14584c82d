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
    python benchmarks/train_speed.py --before-after   # small full recipe: today vs fast objective

Results from several devices are merged into one file (keyed by device).

``--before-after`` times one ``small`` full-recipe trainer, alternating step by step between
the original objective (adaptive GAN weight from two extra backward passes through LPIPS and
D, LPIPS in fp32) and the fast one (one backward, LPIPS trunk in bf16 where native), so that
both see the same machine load; it records wall and process CPU time per step, threads, the
OpenMP wait policy and the load average → ``train_speed_before_after.{json,md}``.
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


def before_after(steps: int, batch: int, out_dir: Path, tmp: Path) -> dict:
    """Alternate single steps of the original and the fast objective on one trainer."""
    from meditok.tokenizer.kernels.cpu import describe

    cfg = TrainConfig.from_dict({
        "model": {"preset": "small"}, "stage": 1, "device": "cpu", "precision": "fp32",
        "align": {"vision_teacher_size": TEACHER_SIZE["small"]}, "data": {"batch_size": batch},
        "steps": 2 * steps + 4, "output_dir": str(tmp / "ba"), "tensorboard": False,
        "progress": False})
    trainer = Trainer(cfg)
    size = trainer.model.config.model.image_size
    images, source = real_images(batch, size)
    batch_d = {"image": images, "caption": ["dermoscopy image"] * batch}
    variants = {"today": ("reference", "fp32"), "one_backward": ("one_backward", "fp32"),
                "fast": ("one_backward", cfg.loss.lpips_precision)}

    def use(name: str) -> None:
        trainer.loss_fn.adaptive, prec = variants[name]
        if trainer.lpips is not None:
            trainer.lpips.precision = prec

    for name in variants:  # warm-up (allocator; step 0 has no GAN term: warm-up factor 0)
        use(name)
        trainer.train_step([batch_d])
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    logs: dict[str, list[float]] = {k: [] for k in variants}
    loads = []
    for i in range(steps):
        order = list(variants) if i % 2 == 0 else list(reversed(list(variants)))
        for name in order:
            use(name)
            t0, c0 = time.perf_counter(), time.process_time()
            m = trainer.train_step([batch_d])
            times[name].append((time.perf_counter() - t0, time.process_time() - c0))
            logs[name].append(m["w_gan"])
        loads.append(os.getloadavg()[0])
    med = {k: float(np.median([w for w, _ in v])) for k, v in times.items()}
    cpu = {k: float(np.median([c for _, c in v])) for k, v in times.items()}
    ratios = [a[0] / b[0] for a, b in zip(times["today"], times["fast"])]
    ratios_ob = [a[0] / b[0] for a, b in zip(times["today"], times["one_backward"])]
    use("fast")
    trunk_fast = trainer.lpips.trunk_precision(trainer.device) if trainer.lpips else None
    res = {
        "preset": "small", "recipe": "full (LPIPS + PatchGAN/DiffAug/BCR + adaptive weight + alignment)",
        "batch": batch, "image_size": size, "images": source, "steps_each": steps,
        "lpips_trunk_fast": trunk_fast,
        "today": {"s_per_step_median": round(med["today"], 3), "img_per_s": round(batch / med["today"], 2),
                  "cpu_s_per_step_median": round(cpu["today"], 3)},
        "one_backward": {"s_per_step_median": round(med["one_backward"], 3),
                         "img_per_s": round(batch / med["one_backward"], 2),
                         "cpu_s_per_step_median": round(cpu["one_backward"], 3)},
        "fast": {"s_per_step_median": round(med["fast"], 3), "img_per_s": round(batch / med["fast"], 2),
                 "cpu_s_per_step_median": round(cpu["fast"], 3)},
        "speedup_one_backward_only": round(float(np.median(ratios_ob)), 3),
        "speedup_median_of_ratios": round(float(np.median(ratios)), 3),
        "speedup_cpu_time": round(cpu["today"] / cpu["fast"], 3),
        "ratios": [round(r, 3) for r in ratios],
        "w_gan_today": [round(w, 5) for w in logs["today"]],
        "w_gan_fast": [round(w, 5) for w in logs["fast"]],
        "note": "steps alternate on one trainer, so w_gan of different variants belong to different steps",
        "load_avg_during": [round(x, 2) for x in loads],
        "environment": describe(),
        "command": "python benchmarks/train_speed.py " + " ".join(os.sys.argv[1:]),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "train_speed_before_after.json", json.dumps(res, indent=2))
    env = res["environment"]
    md = ["# Training speed before / after (small, full recipe)", "",
          f"`{res['command']}` — {env['cpu_model']}, {env['torch_threads']} threads, "
          f"OMP_WAIT_POLICY={env['OMP_WAIT_POLICY']}, load avg during the run "
          f"{min(loads):.1f}–{max(loads):.1f} (shared machine), torch {env['torch']}.", "",
          "Steps alternate between the two objectives on one trainer (same load for both); "
          "medians over the steps.", "",
          "| objective | s/step (wall) | img/s | CPU s/step |", "|---|---|---|---|",
          f"| today: adaptive weight by two extra LPIPS/D backward passes, LPIPS fp32 | "
          f"{res['today']['s_per_step_median']} | {res['today']['img_per_s']} | {res['today']['cpu_s_per_step_median']} |",
          f"| one backward, LPIPS fp32 | {res['one_backward']['s_per_step_median']} | "
          f"{res['one_backward']['img_per_s']} | {res['one_backward']['cpu_s_per_step_median']} |",
          f"| fast: one backward, LPIPS trunk {res['lpips_trunk_fast']} | {res['fast']['s_per_step_median']} | "
          f"{res['fast']['img_per_s']} | {res['fast']['cpu_s_per_step_median']} |", "",
          f"Speed-up: **x{res['speedup_median_of_ratios']}** (median of per-pair wall ratios), "
          f"x{res['speedup_cpu_time']} in CPU time; the one-backward weight alone: "
          f"x{res['speedup_one_backward_only']}.", ""]
    atomic_write_text(out_dir / "train_speed_before_after.md", "\n".join(md))
    print(json.dumps(res, indent=2))
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
    ap.add_argument("--before-after", action="store_true",
                    help="small full recipe: original vs fast objective, alternating steps")
    ap.add_argument("--batch", type=int, default=16, help="batch of --before-after")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: available CPUs)")
    args = ap.parse_args()
    from meditok.tokenizer.kernels.cpu import configure_threads

    configure_threads(args.threads)
    if args.before_after:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            before_after(args.steps, args.batch, Path(args.out), Path(tmp))
        return
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
    from meditok.tokenizer.kernels.cpu import describe

    data[device] = {"device_name": device_name(device), "torch": torch.__version__,
                    "environment": describe(),
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
