"""In-context family benchmark (issue 12): every table of the report, from the trained runs.

    python benchmarks/incontext.py --data ../shared/data --runs runs/incontext

Writes into ``benchmarks/results/incontext/``:

* ``incontext_main``    — Table 2 / 3 layouts: the shipped unified MVG, copy-the-prompt-label, the
  U-Net specialists, the corrupted input, on every evaluation set (prompts: ``position``);
* ``incontext_prompts`` — DRIVE / CHASE with the three prompt strategies (position, random,
  nearest by MedITok embedding);
* ``incontext_vessels`` — Table 5 (isolated vs unified) and the pixel-vs-token comparison on DRIVE /
  CHASE, plus the MedITok round-trip ceiling of the ground-truth label tiles;
* ``incontext_summary`` — the targets (met / missed), the training provenance (steps, wall time,
  load) of every model.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from meditok.incontext import colour as colouring
from meditok.incontext.bench import SEGMENTATION_SETS, run_evaluation
from meditok.incontext.evaluate import restoration_table, segmentation_table
from meditok.incontext.infer import Method, PromptBank, run_tiles, scaled, tile_query
from meditok.incontext.sources import load_sources
from meditok.incontext.tokens import TokenMVG
from meditok.metrics.dense import SegmentationScore
from meditok.utils.results import environment, markdown_table, write_results

OUT = ROOT / "benchmarks" / "results" / "incontext"


def token_ceiling(data: str, tokenizer: str, sets: list[str], stride: int | None, seed: int = 0) -> dict:
    """IoU of the ground-truth label tiles pushed through MedITok tokenize → detokenize, on the
    same tiles and colours the models are scored on (the ceiling of any token-space model)."""
    tok = TokenMVG.create(tokenizer, "tiny")  # only its tokenizer is used
    cell = tok.cell
    sources = load_sources(data, sets)
    ceiling = Method("ceiling", lambda c, task: tok.reconstruct_cell(c, 3))
    out = {}
    for name in sets:
        src = sources[name]
        bank = PromptBank.build(src.prompts, src.scale, cell)
        score = SegmentationScore()
        for ci, item in enumerate(src.test):
            rng = np.random.default_rng([seed, ci])
            cols = colouring.assign_colours(["vessel"], "random", rng)
            tq = tile_query(item.image, src.scale, cell, bank, cols, "position", 0, rng, None, stride)
            lab = colouring.paint(scaled(item, src.scale, cell).labels, cols)
            for k, (y, x) in enumerate(tq.starts):  # the Y cell gets the ground-truth tile of its window
                tq.canvases[k, :, cell:, cell:] = torch.from_numpy(lab[y:y + cell, x:x + cell]).permute(2, 0, 1) * 2 - 1
            dec = colouring.decode(run_tiles(ceiling, tq), cols) == 1
            score.add(dec, item.labels["vessel"], [1], item.region, item.case)
        out[name] = score.summary()
    return out


def provenance(path: Path) -> dict:
    try:
        cfg = json.loads((path / "config.json").read_text())
    except OSError:
        return {}
    meta = cfg.get("meta") or {}
    tr = meta.get("training") or {}
    keep = ("steps", "batch_size", "wall_time_s", "sessions", "wall_time_this_session_s",
            "load_average_1min_start_end", "machine", "task_shares", "scheme", "final_train_loss", "monitor", "command")
    return {"model_type": cfg.get("model_type"), "params_config": {k: cfg.get(k) for k in ("dim", "depth", "heads",
                                                                                          "patch", "cell", "head")
                                                                    if k in cfg},
            **{k: tr.get(k) for k in keep if k in tr}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--runs", default="runs/incontext")
    ap.add_argument("--model", default=None, help="the unified MVG (default: RUNS/mvg_small/final)")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--max-cases", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", nargs="*", default=None, help="main prompts vessels summary (summary: re-render the targets and provenance from OUT/incontext_main.json)")
    ap.add_argument("--prompt-sets", nargs="*", default=["drive", "chase"], help="sets of the prompt comparison")
    ap.add_argument("--prompt-cases", type=int, default=0, help="first N cases per set there (0: --max-cases)")
    ap.add_argument("--no-ceiling", dest="ceiling", action="store_false", help="skip the MedITok round-trip ceiling")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    runs = Path(a.runs)
    unified = a.model or str(runs / "mvg_small" / "final")
    have = lambda p: (runs / p / "final" / "config.json").exists()
    spec = {}
    if have("unet_drive"):
        spec.update(drive=str(runs / "unet_drive" / "final"), chase=str(runs / "unet_drive" / "final"))
    if have("unet_denoise"):
        spec.update(ct_denoise=str(runs / "unet_denoise" / "final"), mr_denoise=str(runs / "unet_denoise" / "final"))
    if have("unet_inpaint"):
        spec.update(ct_inpaint=str(runs / "unet_inpaint" / "final"), mr_inpaint=str(runs / "unet_inpaint" / "final"))
    only = set(a.only or ["main", "prompts", "vessels"])
    t0 = time.time()
    summary: dict = {"environment_start": environment(), "runs": {}}
    summary["runs"]["unified: " + str(Path(unified).parent.name)] = provenance(Path(unified))  # the one evaluated
    for name in ("mvg_isolated_drive", "token_drive", "unet_drive", "unet_denoise", "unet_inpaint"):
        if have(name):
            summary["runs"][name] = provenance(runs / name / "final")
    main_res = vessels_res = None
    extra = []  # Table 5 (isolated) and the token-space model, scored on the same canvases in one pass
    if have("mvg_isolated_drive"):
        extra.append(("MVG-small isolated (DRIVE only)", str(runs / "mvg_isolated_drive" / "final")))
    if have("token_drive"):
        extra.append(("MVG-token (DRIVE only, MedITok tokens)", str(runs / "token_drive" / "final")))
    if "main" in only:
        main_res = run_evaluation([("MVG-small unified", unified)], a.out, data_root=a.data, specialists=spec,
                                  seg_sets=[s for s in SEGMENTATION_SETS if s not in ("drive", "chase")],
                                  max_cases=a.max_cases, overwrite=True, name="incontext_main_other")
    vessel_spec = {k: v for k, v in spec.items() if k in ("drive", "chase")}
    if "main" in only or "vessels" in only:  # DRIVE test + held-out CHASE: every vessel model at once
        vessels_res = run_evaluation([("MVG-small unified", unified), *extra], a.out, data_root=a.data,
                                     specialists=vessel_spec, seg_sets=["drive", "chase"], restorations=[],
                                     max_cases=a.max_cases, overwrite=True, name="incontext_vessels")
        if main_res is not None:  # the main table = vessels + the other sets, one file
            main_res = {**main_res, "segmentation": vessels_res["segmentation"] + main_res["segmentation"],
                        "models": {**main_res["models"], **vessels_res["models"]},
                        "wall_time_s": round(main_res["wall_time_s"] + vessels_res["wall_time_s"], 1)}
            write_results(a.out, "incontext_main", main_res, main_markdown(main_res, spec))
    if "prompts" in only:
        run_evaluation([("MVG-small unified", unified)], a.out, data_root=a.data, specialists=vessel_spec,
                       seg_sets=a.prompt_sets, restorations=[], strategies=["position", "random", "nearest"],
                       max_cases=a.prompt_cases or a.max_cases, overwrite=True, name="incontext_prompts")
    if "vessels" in only and a.ceiling:
        t = time.time()
        vessels_res["token_ceiling"] = token_ceiling(a.data, "meditok-small", ["drive", "chase"], None)
        vessels_res["token_ceiling_seconds"] = round(time.time() - t, 1)
        (Path(a.out) / "incontext_vessels.json").write_text(json.dumps(vessels_res, indent=2, default=str) + "\n")
    if "summary" in only and main_res is None:  # re-render targets + provenance from a finished evaluation
        main_res = json.loads((Path(a.out) / "incontext_main.json").read_text())
    summary["targets"] = targets(main_res)
    summary["wall_time_s"] = round(time.time() - t0, 1)
    if "summary" in only and not only & {"main", "vessels", "prompts"}:  # the evaluation's own wall time
        summary["wall_time_s"] = main_res.get("wall_time_s")
        summary["environment_start"] = summary["environment_end"] = main_res.get("environment") or {}
    summary["environment_end"] = environment()
    md = ["# In-context family: targets and provenance\n",
          f"benchmark wall time {summary['wall_time_s']} s; load {summary['environment_start'].get('load_average_1min')}"
          f" → {summary['environment_end'].get('load_average_1min')}\n\n"]
    if summary["targets"]:
        md.append(markdown_table(["target", "value", "threshold", "met"],
                                 [[t["target"], t["value"], t["threshold"], "yes" if t["met"] else "NO"]
                                  for t in summary["targets"]], digits=3))
    if vessels_res and "token_ceiling" in vessels_res:
        md.append("\nMedITok round-trip ceiling of the ground-truth vessel label tiles (same tiles, colours): " +
                  "; ".join(f"{k} mIoU {v['miou']:.3f} (Dice {v['mdice']:.3f})"
                            for k, v in vessels_res["token_ceiling"].items()) + "\n")
    md.append("\n## Training runs\n")
    for k, v in summary["runs"].items():
        if v.get("sessions"):  # every session of a resumed / extended run
            one = lambda x: x[0] if isinstance(x, list) and x else x  # noqa: E731 - 1-min load of a record
            wall = f"{v.get('wall_time_s')} s in {len(v['sessions'])} sessions (" + ", ".join(
                f"steps {r['from_step']}→{r['to_step']} {r['wall_s']} s, load {one(r.get('load_start'))}→"
                f"{one(r.get('load_end'))}" for r in v["sessions"]) + ")"
        else:
            wall = f"{v.get('wall_time_this_session_s')} s (this session), load {v.get('load_average_1min_start_end')}"
        md.append(f"- **{k}**: steps {v.get('steps')}, batch {v.get('batch_size')}, wall time {wall}, {v.get('machine')}\n")
    write_results(a.out, "incontext_summary", summary, "".join(md))
    print("".join(md))
    return 0


def main_markdown(res: dict, spec: dict) -> str:
    """Tables 2 / 3 layouts of the merged main result."""
    md = [f"# In-context evaluation (main)\n\nmodels: {res['models']}; specialists: {spec}; cell {res['cell']} px; "
          f"wall time {res['wall_time_s']} s; load {res['environment'].get('load_average_1min')}; prompts: position "
          "(2D: a random training image of the same set; volumes: the proportional slice)\n",
          "\n## Segmentation — mIoU (Table 2 layout)\n", segmentation_table(res["segmentation"], "miou"),
          "\n## Segmentation — mean Dice\n", segmentation_table(res["segmentation"], "mdice"),
          "\n## Segmentation — pooled IoU (intersections / unions summed over cases)\n",
          segmentation_table(res["segmentation"], "pooled_iou")]
    if res["restoration"]:
        md += ["\n## Other tasks (Table 3 layout), images in [0, 1] at 64 px\n", restoration_table(res["restoration"])]
        for r in res["restoration"]:
            if r["task"] == "inpainting":
                md.append(f"\nInside the holes, {r['name']}: " + "; ".join(
                    f"{n} MAE {v['hole_mae']:.4f} PSNR {v['hole_psnr']:.2f}" for n, v in r["methods"].items()) + "\n")
    return "".join(md)


def targets(res: dict | None) -> list[dict]:
    """The issue's targets from the main table."""
    if not res:
        return []
    out = []
    for r in res["segmentation"]:
        if r["source"] not in ("drive", "chase"):
            continue
        m = r["methods"]
        mvg, copy, unet = m.get("MVG-small unified"), m.get("copy prompt label"), m.get("U-Net specialist")
        if mvg and copy:
            out.append({"target": f"{r['source']}: MVG mIoU − copy-prompt mIoU", "value": mvg["miou"] - copy["miou"],
                        "threshold": 0.15, "met": mvg["miou"] - copy["miou"] >= 0.15})
        if mvg and unet:
            out.append({"target": f"{r['source']}: MVG mIoU / U-Net mIoU", "value": mvg["miou"] / unet["miou"],
                        "threshold": 0.8, "met": mvg["miou"] >= 0.8 * unet["miou"]})
    for r in res["restoration"]:
        m = r["methods"]
        inp = m.get("corrupted input")
        best = max((v["psnr"] for k, v in m.items() if k.startswith("MVG-small unified")), default=None)
        if inp and best is not None:
            out.append({"target": f"{r['name']}: best MVG PSNR − corrupted-input PSNR (dB)",
                        "value": best - inp["psnr"], "threshold": 0.0, "met": best > inp["psnr"]})
    return out


if __name__ == "__main__":
    sys.exit(main())
