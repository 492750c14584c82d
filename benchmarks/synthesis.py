"""Synthesis speed per GPT preset: sampling images/s with and without the KV cache (and the
check that both draw identical tokens for a seed), and training throughput.

Usage: python benchmarks/synthesis.py [--presets tiny small B] [--threads 1] [--out DIR]
Writes benchmarks/results/synthesis/bench_synthesis.{json,md}. Target: KV-cached sampling
>= 5x faster than recomputing at the shipped grid size (small, 8x8).

``small`` uses the shipped generator's weights when they are installed (a trained model's
distributions, as in use); ``tiny`` and ``B`` are randomly initialised (speed does not depend
on the weights). Sampling uses the family's sampler (``meditok.synthesis.model.SAMPLER``,
Gumbel-max) at T 1 / no top-k; the small preset is also timed at the shipped generator's
recorded settings (T 0.8, top-k 200), at the CLI's batch of 64, and with ``inverse_cdf`` and
``torch.multinomial`` to show what the sampler choice buys (and that inverse-CDF does not keep
cached and recomputed tokens identical on a trained model).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from meditok.gpt import GPT, gpt_preset
from meditok.synthesis.model import SAMPLER
from meditok.utils.results import environment, markdown_table, write_results

HERE = Path(__file__).resolve().parent
#: (sampling batch, training batch, training steps) per preset.
SIZES = {"tiny": (16, 16, 10), "small": (32, 16, 4), "B": (1, 2, 2)}


def _model(preset: str, small_weights: str = "meditok-gpt-small") -> tuple[GPT, str]:
    if preset == "small":
        try:
            return GPT.from_pretrained(small_weights), f"{small_weights} (trained)"
        except Exception:  # noqa: BLE001 - not installed yet: random weights time the same
            pass
    torch.manual_seed(0)
    return GPT(gpt_preset(preset)).eval(), "random init"


def _time(fn, repeats: int = 1) -> tuple[float, float, object]:
    """Best wall time and best process CPU time of ``repeats`` calls. On a shared machine the
    CPU time is the steadier figure: it does not count the time other jobs hold the core."""
    best, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best, best_cpu = min(best, time.perf_counter() - t0), min(best_cpu, time.process_time() - c0)
    return best, best_cpu, out


def bench_sampling(model: GPT, batch: int, sampler: str, repeats: int = 1, **settings) -> dict:
    cond = torch.arange(batch) % model.config.num_classes

    @torch.no_grad()
    def run(use_cache: bool):
        g = torch.Generator().manual_seed(0)
        return model.generate(cond, generator=g, use_cache=use_cache, sampler=sampler, **settings)

    t_cached, c_cached, tok_cached = _time(lambda: run(True), repeats)
    t_uncached, c_uncached, tok_uncached = _time(lambda: run(False), repeats)
    same = torch.equal(tok_cached, tok_uncached)
    ips_c, ips_u = batch / t_cached, batch / t_uncached
    return {"sampler": sampler, "batch": batch, "settings": settings or "T 1, no top-k",
            "cached_s": round(t_cached, 3), "uncached_s": round(t_uncached, 3),
            "cached_images_per_s": round(ips_c, 3), "uncached_images_per_s": round(ips_u, 3),
            "speedup": round(ips_c / ips_u, 2), "cached_cpu_s": round(c_cached, 3),
            "uncached_cpu_s": round(c_uncached, 3), "speedup_cpu_time": round(c_uncached / c_cached, 2),
            "identical_tokens": bool(same)}


def bench_training(model: GPT, batch: int, steps: int) -> dict:
    cfg = model.config
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.codebook_size, (batch, cfg.seq_len, cfg.num_codebooks), generator=g)
    cond = torch.arange(batch) % cfg.num_classes

    def step():
        opt.zero_grad(set_to_none=True)
        model(tokens, cond).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t0) / steps
    model.eval()
    return {"batch": batch, "steps": steps, "s_per_step": round(dt, 3),
            "images_per_s": round(batch / dt, 2),
            "positions_per_s": round(batch * cfg.seq_len / dt, 1),
            "subcodes_per_s": round(batch * cfg.seq_len * cfg.num_codebooks / dt, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "small", "B"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "results" / "synthesis"))
    ap.add_argument("--small-weights", default="meditok-gpt-small", help="generator timed as 'small'")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per row (best kept)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    rows, result = [], {"presets": {}, "load_average_1min_before": round(load_before, 2)}
    for preset in args.presets:
        model, weights = _model(preset, args.small_weights)
        b, bt, steps = SIZES[preset]
        cfg = model.config
        entry = {"weights": weights, "parameters": model.num_parameters(),
                 "grid": list(cfg.grid), "num_codebooks": cfg.num_codebooks,
                 "codebook_size": cfg.codebook_size,
                 "sampling": [bench_sampling(model, b, SAMPLER, args.repeats)]}
        if preset == "small":
            shipped = dict((model.config.meta or {}).get("sampling") or {"temperature": 0.8, "top_k": 200})
            # CFG too: guidance doubles the rows of both paths, so it changes the speed-up
            shipped = {k: shipped[k] for k in ("temperature", "top_k", "top_p", "cfg_scale") if k in shipped}
            for batch, sampler in ((b, SAMPLER), (64, SAMPLER), (b, "inverse_cdf"), (b, "multinomial")):
                entry["sampling"].append(bench_sampling(model, batch, sampler, args.repeats, **shipped))
        entry["training"] = bench_training(model, bt, steps)
        entry["load_average_1min"] = round(os.getloadavg()[0], 2)
        result["presets"][preset] = entry
        for s in entry["sampling"]:
            rows.append([preset, f"{cfg.grid[0]}x{cfg.grid[1]}x{cfg.num_codebooks}", s["sampler"],
                         s["settings"] if isinstance(s["settings"], str) else
                         ", ".join(f"{k} {v}" for k, v in s["settings"].items()), s["batch"],
                         s["cached_images_per_s"], s["uncached_images_per_s"], s["speedup"], s["speedup_cpu_time"],
                         "yes" if s["identical_tokens"] else "NO", entry["training"]["positions_per_s"],
                         entry["training"]["subcodes_per_s"], entry["load_average_1min"]])
        print(rows[-1], flush=True)
    small = result["presets"].get("small")
    if small:
        s = small["sampling"][2]  # as `meditok synth sample` runs: family sampler, shipped settings, batch 64
        result["target"] = {"kv_speedup_at_shipped_grid": s["speedup"], "kv_speedup_cpu_time": s["speedup_cpu_time"],
                            "batch": s["batch"],
                            "settings": s["settings"], "required": 5.0,
                            "met": bool(s["speedup"] >= 5.0 and s["identical_tokens"])}
    md = ("# Synthesis speed (CPU)\n\n"
          + markdown_table(["preset", "grid x K", "sampler", "settings", "batch", "cached img/s", "uncached img/s", "speed-up",
                            "speed-up (CPU time)",
                            "same tokens", "train positions/s", "train sub-codes/s", "load (1 min)"], rows)
          + f"\n{args.threads} torch thread(s); sampling batch per preset {dict((k, v[0]) for k, v in SIZES.items())}"
          "; images/s = batch / wall time of one full generation; training = "
          "forward + backward + AdamW step at the given batch, after one warm-up step.\n")
    if small:
        t = result["target"]
        md += (f"\nTarget (KV cache >= 5x at the shipped 8x8 grid, identical tokens; {SAMPLER} sampler at "
               f"the shipped settings, batch {t['batch']}): {t['kv_speedup_at_shipped_grid']}x wall, "
               f"{t['kv_speedup_cpu_time']}x CPU time, "
               f"{'met' if t['met'] else 'missed'}.\n")
    result["environment"] = environment()
    write_results(args.out, "bench_synthesis", result, md)
    print(md)


if __name__ == "__main__":
    main()
