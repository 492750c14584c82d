"""Tokenizer throughput: images/s and peak memory for tokenize, detokenize and round trip.

Every (preset, resolution, batch, precision) cell runs in its own subprocess so that the peak
resident memory (``ru_maxrss``) belongs to that cell alone. Results go to
``benchmarks/results/throughput.{json,md}``.

    python benchmarks/throughput.py                       # small + tiny, CPU, fp32 and bf16
    python benchmarks/throughput.py --presets large --resolutions 256 --batches 1 5
    python benchmarks/throughput.py --device cuda         # on a GPU (bf16 autocast)

bf16 is the optional fast path: encoder/decoder under bf16 autocast, quantisation still in
fp32 (the model disables autocast there); the share of identical tokens vs fp32 is reported.
Weights are the bundled checkpoint for ``small`` when present, random otherwise (``large``
has no offline weights: its timings are architecture timings, its token agreement is measured
on random weights and says little about the released model).

Speed modes, measured against each other (``--compare PRESET:RES:BATCH:OP``)::

    python benchmarks/throughput.py --compare small:128:16:tokenize --rounds 5
    python benchmarks/throughput.py --compare large:256:1:round_trip --rounds 3

* ``eager``: the code as it was before the fast path (torch reference search, default heap);
* ``kernel``: ``eager`` + the fused search kernel only (what library users get without
  calling ``meditok.tokenizer.kernels.cpu.configure()``);
* ``exact``: fused search kernel + heap setting + threads from the available cores — the
  default; tokens and reconstructions bit for bit as ``eager``;
* ``fast``: ``exact`` + sub-pixel decoder convolutions (tokens identical, reconstruction
  within ~1e-5);
* ``bf16``: ``fast`` + bf16 autocast of encoder and decoder (tokens change; agreement given);
* ``compile``: ``exact`` + ``torch.compile`` of encoder and decoder (fp32);
* ``onednn``: ``exact`` + every ``nn.Linear`` through oneDNN instead of MKL (fp32);
* ``fast_onednn``: ``fast`` + ``onednn``.

Each (round, mode) runs in its own subprocess (the heap setting is process-wide), modes
alternate within each round so all see the same load, and the result is the median over
rounds of the per-round time ratio to ``eager``, in wall and process CPU time. Token
agreement of each mode with ``eager`` is measured on real images (``small``: ISIC
dermoscopy + VQA-RAD radiology; ``large``: random weights and images).
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _model(preset: str, image_size: int):
    import torch

    from meditok import MedITok
    from meditok.tokenizer.hub import bundled_checkpoint

    torch.manual_seed(0)
    if preset == "small":
        try:
            return MedITok.from_pretrained(bundled_checkpoint()), "bundled checkpoint"
        except Exception:  # noqa: BLE001 - fall back to random weights, reported in the row
            pass
    return MedITok.from_preset(preset, image_size=image_size).eval(), "random init"


def run_cell(preset: str, res: int, batch: int, precision: str, device: str, repeats: int) -> dict:
    """Time one cell in this process (called in a subprocess by :func:`main`)."""
    import torch

    from meditok.utils.device import autocast, resolve_device

    dev = resolve_device(device)
    model, weights = _model(preset, res)
    model = model.to(dev)
    x = (torch.rand(batch, 3, res, res, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(dev)
    ctx = lambda: autocast(dev, precision)  # noqa: E731

    def timed(fn) -> float:
        with ctx():
            fn()  # warm-up
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            with ctx():
                fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / repeats

    tokens = model.tokenize(x)
    row = {"preset": preset, "resolution": res, "batch": batch, "precision": precision,
           "device": str(dev), "weights": weights, "threads": torch.get_num_threads()}
    for name, fn in [("tokenize", lambda: model.tokenize(x)),
                     ("detokenize", lambda: model.detokenize(tokens)),
                     ("round_trip", lambda: model.reconstruct(x))]:
        sec = timed(fn)
        row[f"{name}_img_s"] = round(batch / sec, 2)
        row[f"{name}_s_per_img"] = round(sec / batch, 4)
    if precision != "fp32":
        with ctx():
            fast = model.tokenize(x)
        row["tokens_unchanged_vs_fp32"] = round(float((fast == tokens).float().mean()), 5)
    if dev.type == "cuda":
        row["peak_mem_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    else:
        row["peak_mem_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return row


MODES = ("eager", "kernel", "exact", "fast", "bf16", "compile", "onednn", "fast_onednn")


def _compare_inputs(preset: str, res: int, n: int):
    import torch

    from meditok.data.preprocess import PreprocessConfig, load_images

    import os

    shared = Path(os.environ.get("MEDITOK_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    files = sorted((shared / "isic_cc0_550").glob("ISIC_*.jpg"))
    files = files[: (n + 1) // 2] + sorted((shared / "vqa_rad" / "images").glob("*"))[: n // 2]
    if preset == "small" and len(files) >= n:
        return load_images(files[:n], PreprocessConfig(image_size=res)), "ISIC + VQA-RAD"
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, res, res, generator=g) * 2 - 1, "random"


def run_mode(preset: str, res: int, batch: int, op: str, mode: str, repeats: int, threads: int,
             n_agree: int, out: str) -> dict:
    """One (round, mode) in this process: warm-up, ``repeats`` timed calls, outputs saved."""
    import os as _os

    if mode == "eager":
        _os.environ["MEDITOK_FUSED_SEARCH"] = "0"
    import torch

    from meditok.tokenizer.kernels import cpu, fastpath, search

    if mode in ("eager", "kernel"):
        torch.set_num_threads(threads)
    else:
        cpu.configure(threads)
    model, weights = _model(preset, res)
    precision = "bf16" if mode == "bf16" else "fp32"
    if mode in ("fast", "bf16"):
        fastpath.enable_fast_decoder(model)
    if mode in ("onednn", "fast_onednn"):
        fastpath.enable_onednn_linear(model)
    if mode == "fast_onednn":
        fastpath.enable_fast_decoder(model)
    if mode == "compile":
        model.encoder = torch.compile(model.encoder)
        model.decoder = torch.compile(model.decoder)
    xs, source = _compare_inputs(preset, res, max(batch, n_agree))
    x = xs[:batch]
    tokens = model.tokenize(x)
    fn = {"tokenize": lambda: model.tokenize(x, precision),
          "detokenize": lambda: model.detokenize(tokens, precision),
          "round_trip": lambda: model.reconstruct(x, precision)}[op]
    t0 = time.perf_counter()
    fn()  # warm-up (compilation for ``compile``)
    warm_s = time.perf_counter() - t0
    wall, cpu_s = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu_s.append(time.process_time() - c0)
    import torch as _t

    with _t.no_grad():  # outputs for the agreement check, on up to n_agree images
        toks = _t.cat([model.tokenize(xs[i:i + batch], precision) for i in range(0, len(xs), batch)])
        rec = model.detokenize(toks[:batch], precision)
    _t.save({"tokens": toks, "recon": rec}, out)
    return {"mode": mode, "wall_s": wall, "cpu_s": cpu_s, "warmup_s": round(warm_s, 2),
            "threads": _t.get_num_threads(), "fused_search": search.status()["fused_kernel"],
            "weights": weights, "images": source, "load": _os.getloadavg()[0]}


def compare(spec: str, modes: list[str], rounds: int, repeats: int, threads: int, n_agree: int,
            out_dir: Path, suffix: str = "") -> dict:
    """Alternate the modes over ``rounds`` (one subprocess each) and write the comparison."""
    import statistics
    import tempfile

    import torch

    from meditok.tokenizer.kernels.cpu import describe

    preset, res, batch, op = spec.split(":")
    res, batch = int(res), int(batch)
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        outs = {m: str(Path(tmp) / f"{m}.pt") for m in modes}
        for r in range(rounds):
            order = modes if r % 2 == 0 else list(reversed(modes))
            for m in order:
                cmd = [sys.executable, __file__, "--mode-cell", f"{spec}:{m}", "--repeats", str(repeats),
                       "--threads", str(threads), "--agree-images", str(n_agree), "--cell-out", outs[m]]
                p = subprocess.run(cmd, capture_output=True, text=True)
                if p.returncode != 0:
                    print(f"{m} failed:\n{p.stderr[-3000:]}", flush=True)
                    continue
                row = json.loads(p.stdout.strip().splitlines()[-1])
                runs[m].append(row)
                print(r, m, [round(w, 3) for w in row["wall_s"]], f"load {row['load']:.1f}", flush=True)
        base = torch.load(outs["eager"]) if "eager" in modes and runs["eager"] else None
        agree = {}
        for m in modes:
            if base is None or not runs[m]:
                continue
            o = torch.load(outs[m])
            agree[m] = {"tokens_equal": round(float((o["tokens"] == base["tokens"]).float().mean()), 6),
                        "n_tokens": base["tokens"].numel(), "n_images": base["tokens"].shape[0],
                        "images_all_equal": int((o["tokens"] == base["tokens"]).flatten(1).all(1).sum()),
                        "recon_max_abs_diff": float((o["recon"] - base["recon"]).abs().max()),
                        "recon_bitwise": bool(torch.equal(o["recon"], base["recon"]))}
    med = lambda v: statistics.median(v)  # noqa: E731
    rows = []
    for m in modes:
        if not runs[m]:
            continue
        w = [med(x["wall_s"]) for x in runs[m]]
        c = [med(x["cpu_s"]) for x in runs[m]]
        row = {"mode": m, "wall_s_median": round(med(w), 4), "img_s": round(batch / med(w), 2),
               "cpu_s_median": round(med(c), 4), "warmup_s": runs[m][0]["warmup_s"],
               "fused_search": runs[m][0]["fused_search"], **agree.get(m, {})}
        if runs.get("eager"):
            ew = [med(x["wall_s"]) for x in runs["eager"]]
            ec = [med(x["cpu_s"]) for x in runs["eager"]]
            row["speedup_wall"] = round(med([a / b for a, b in zip(ew, w)]), 3)
            row["speedup_cpu"] = round(med(ec) / med(c), 3)
            # idle-machine estimate: CPU time spread over the threads
            row["img_s_idle_estimate"] = round(batch * runs[m][0]["threads"] / med(c), 1)
        rows.append(row)
    loads = [x["load"] for v in runs.values() for x in v]
    result = {"spec": {"preset": preset, "resolution": res, "batch": batch, "op": op},
              "threads": threads, "rounds": rounds, "repeats": repeats,
              "weights": next(iter(runs.values()))[0]["weights"] if rows else None,
              "images": next(iter(runs.values()))[0]["images"] if rows else None,
              "load_min_max": [min(loads), max(loads)] if loads else None,
              "command": "python benchmarks/throughput.py " + " ".join(sys.argv[1:]),
              "environment": describe(), "rows": rows}
    name = f"throughput_modes_{preset}_{res}_b{batch}_{op}{suffix}"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2))
    env = result["environment"]
    lines = [f"# {preset} {op} at {res}², batch {batch}: speed modes", "",
             f"`{result['command']}`", "",
             f"{env['cpu_model']}, {threads} threads, OMP_WAIT_POLICY={env['OMP_WAIT_POLICY']}, "
             f"load average {result['load_min_max']} (shared machine: absolute times are 2-4x an "
             f"idle machine's; compare the ratios), torch {env['torch']}; weights: {result['weights']}; "
             f"agreement images: {result['images']}.", "",
             "| mode | img/s (wall) | x eager (wall, median of round ratios) | CPU s/call | x eager (CPU) | "
             "idle 2-core est. img/s | tokens = eager | images all equal | recon max abs diff |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['img_s']} | {r.get('speedup_wall', '—')} | {r['cpu_s_median']} | "
                     f"{r.get('speedup_cpu', '—')} | {r.get('img_s_idle_estimate', '—')} | "
                     f"{r.get('tokens_equal', '—')} of {r.get('n_tokens', '—')} | "
                     f"{r.get('images_all_equal', '—')}/{r.get('n_images', '—')} | "
                     f"{r.get('recon_max_abs_diff', '—'):.3g} |" if 'recon_max_abs_diff' in r else
                     f"| {r['mode']} | {r['img_s']} | {r.get('speedup_wall', '—')} | {r['cpu_s_median']} | "
                     f"{r.get('speedup_cpu', '—')} | {r.get('img_s_idle_estimate', '—')} | — | — | — |")
    (out_dir / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


def markdown(rows: list[dict]) -> str:
    head = ("| preset | res | batch | precision | device | tokenize img/s | detokenize img/s | "
            "round trip img/s | round trip s/img | tokens = fp32 | peak MiB | weights |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r['preset']} | {r['resolution']} | {r['batch']} | {r['precision']} | {r['device']} | "
            f"{r['tokenize_img_s']} | {r['detokenize_img_s']} | {r['round_trip_img_s']} | "
            f"{r['round_trip_s_per_img']} | {r.get('tokens_unchanged_vs_fp32', '—')} | "
            f"{r['peak_mem_mib']} | {r['weights']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["small", "tiny"])
    ap.add_argument("--resolutions", nargs="+", type=int, default=[128, 256])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "throughput"))
    ap.add_argument("--cell", help=argparse.SUPPRESS)  # internal: run one cell, print JSON
    ap.add_argument("--compare", help="PRESET:RES:BATCH:OP (OP: tokenize, detokenize, round_trip)")
    ap.add_argument("--modes", nargs="+", default=["eager", "exact", "fast", "bf16"], choices=MODES)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--agree-images", type=int, default=64, help="real images for token agreement")
    ap.add_argument("--out-suffix", default="", help="appended to the --compare result name")
    ap.add_argument("--mode-cell", help=argparse.SUPPRESS)
    ap.add_argument("--cell-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode_cell:
        preset, res, batch, op, mode = args.mode_cell.split(":")
        print(json.dumps(run_mode(preset, int(res), int(batch), op, mode, args.repeats, args.threads,
                                  args.agree_images, args.cell_out)))
        return
    if args.compare:
        compare(args.compare, args.modes, args.rounds, args.repeats, args.threads, args.agree_images,
                RESULTS, args.out_suffix)
        return
    if args.cell:
        import torch

        torch.set_num_threads(args.threads)
        preset, res, batch, precision = args.cell.split(",")
        print(json.dumps(run_cell(preset, int(res), int(batch), precision, args.device, args.repeats)))
        return
    rows = []
    for preset in args.presets:
        for res in args.resolutions:
            for batch in args.batches:
                for precision in args.precisions:
                    cmd = [sys.executable, __file__, "--cell", f"{preset},{res},{batch},{precision}",
                           "--device", args.device, "--threads", str(args.threads),
                           "--repeats", str(args.repeats)]
                    res_ = subprocess.run(cmd, capture_output=True, text=True)
                    if res_.returncode != 0:
                        print(f"cell {preset},{res},{batch},{precision} failed:\n{res_.stderr[-2000:]}")
                        continue
                    row = json.loads(res_.stdout.strip().splitlines()[-1])
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.processor() or platform.machine(), "python": platform.python_version(),
            "threads": args.threads}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    out.with_suffix(".md").write_text(f"Threads: {args.threads}, device: {args.device}\n\n" + markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
