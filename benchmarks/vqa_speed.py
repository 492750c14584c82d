"""Cost of the VQA pipeline per LM on this machine: training step (stage B, packed), answering.

For each LM (default: both packaged ones) the real stage-B data is built (VQA-RAD train,
all questions of an image packed into one sequence, LoRA r=8 on q/k/v/o + projector) and
``--steps`` optimiser steps of one packed image each are timed after a warm-up step: wall and
CPU seconds (``time.process_time``, all threads) per step and per question, peak RSS. Then
``--answer`` test questions are answered greedily in batches of 16. The whole-epoch cost follows
from the measured per-token rate. The 1-minute load average is recorded with every figure
(timings on a shared machine are noisy; the CPU-seconds column is the robust one).

    python benchmarks/vqa_speed.py --lm smollm2-135m --lm gemma3-270m
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from meditok.data.vqa_rad import load_vqa_rad
from meditok.engine.optim import build_adamw
from meditok.utils.results import environment, markdown_table, write_results
from meditok.vqa.config import VQATrainConfig
from meditok.vqa.lm import prompt_template_for
from meditok.vqa.train import build_dataset, build_model


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench(lm: str, vqa_rad: str, steps: int, answer: int, threads: int) -> dict:
    torch.manual_seed(0)
    prompt = {"template": prompt_template_for(lm) or ""}
    cfg = VQATrainConfig.from_dict({"stage": "B", "model": {"lm": lm, "lora": {"r": 8, "alpha": 16},
                                                            "prompt": prompt},
                                    "data": {"vqa_rad": vqa_rad}})
    t0 = time.time()
    model = build_model(cfg, verbose=True)
    load_s = time.time() - t0
    t0 = time.time()
    ds, info = build_dataset(cfg, model, progress=False)
    data_s = time.time() - t0
    model.train()
    opt = build_adamw(model.named_parameters(), 2e-4, (0.9, 0.999), 1e-8, 0.0)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(ds), generator=g).tolist()[:steps + 1]
    rows = []
    for k, i in enumerate(order):
        batch = ds.collate([ds[i]])
        w, c = time.perf_counter(), time.process_time()
        loss, _ = model(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        w, c = time.perf_counter() - w, time.process_time() - c
        if k:  # the first step warms up
            rows.append((w, c, len(ds[i]), ds[i].questions))
    tokens = sum(r[2] for r in rows)
    wall, cpu = sum(r[0] for r in rows), sum(r[1] for r in rows)
    load_train = os.getloadavg()[0]
    test = load_vqa_rad(vqa_rad, "test")[:answer]
    from meditok.vqa.bench import predict
    model.eval()
    w, c = time.perf_counter(), time.process_time()
    preds = predict(model, test, 16, progress=False)
    gw, gc = time.perf_counter() - w, time.process_time() - c
    return {
        "lm": lm, "identity": model.config.meta["lm_identity"], "load_s": round(load_s, 1),
        "data_s": round(data_s, 1), "sequences_per_epoch": info["sequences"],
        "tokens_per_epoch": info["tokens"], "steps_timed": len(rows),
        "wall_s_per_step": wall / len(rows), "cpu_s_per_step": cpu / len(rows),
        "cpu_ms_per_token": 1000 * cpu / tokens, "wall_ms_per_token": 1000 * wall / tokens,
        "epoch_cpu_min_est": cpu / tokens * info["tokens"] / 60,
        "epoch_wall_min_est": wall / tokens * info["tokens"] / 60,
        "answer_questions": len(test), "answer_wall_s_per_question": gw / max(1, len(test)),
        "answer_cpu_s_per_question": gc / max(1, len(test)), "sample_answers": preds[:3],
        "peak_rss_mb": round(_rss_mb()), "load_1min_train": round(load_train, 2),
        "load_1min_end": round(os.getloadavg()[0], 2), "threads": threads,
        "trainable": model.trainable_parameters(),
        "lm_params_m": sum(p.numel() for n, p in model.lm.named_parameters() if "lora_" not in n) / 1e6,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lm", action="append", help="LM spec (repeatable)")
    ap.add_argument("--vqa-rad", default=str(ROOT.parent / "shared" / "data" / "vqa_rad"))
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--answer", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "vqa"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = [bench(lm, args.vqa_rad, args.steps, args.answer, args.threads)
               for lm in (args.lm or ["smollm2-135m", "gemma3-270m"])]
    header = ["LM", "params (M)", "tokens/epoch", "CPU s/step", "wall s/step", "CPU ms/token",
              "epoch CPU min (est.)", "epoch wall min (est.)", "answer wall s/q", "answer CPU s/q",
              "peak RSS MB", "load"]
    rows = [[r["lm"], r["lm_params_m"], r["tokens_per_epoch"], r["cpu_s_per_step"], r["wall_s_per_step"],
             r["cpu_ms_per_token"], r["epoch_cpu_min_est"], r["epoch_wall_min_est"],
             r["answer_wall_s_per_question"], r["answer_cpu_s_per_question"], r["peak_rss_mb"],
             f"{r['load_1min_train']}–{r['load_1min_end']}"] for r in results]
    md = ("# VQA pipeline cost per LM (stage B step on one packed image, LoRA r=8 + projector; "
          f"greedy answers in batches of 16; {args.threads} threads)\n\n" + markdown_table(header, rows, 3)
          + "\nTimed on a shared machine: the load column is the 1-minute load average; CPU seconds are "
            "the robust figure. Epoch estimates scale the per-token rate to all packed training tokens.\n")
    write_results(args.out, "vqa_speed", {"results": results, "environment": environment(),
                                          "command": " ".join(sys.argv)}, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
