"""End-to-end plumbing of the evaluation commands and the HTML report (tiny random model)."""
from __future__ import annotations

import argparse
import base64
import csv
import json
from html.parser import HTMLParser

import pytest
import torch

from meditok.metrics.codebook import CodeUsage


pytestmark = pytest.mark.usefixtures("one_thread")


def _run(argv: list[str]) -> int:
    from meditok.cli import main

    return main(argv)


@pytest.fixture(scope="module")
def manifest(shared_data, tmp_path_factory):
    """A small real manifest: dermoscopy JPGs, CT slice PNGs and one missing file."""
    rows = [{"identifier": str(p), "modality": "dermoscopy", "split": "test"}
            for p in sorted((shared_data / "isic_cc0_550").glob("*.jpg"))[:5]]
    rows += [{"identifier": str(p), "modality": "ct", "split": "test"}
             for p in sorted((shared_data / "sam_med2d_demo").rglob("*.png"))[:3]]
    rows.append({"identifier": "missing.png", "modality": "ct", "split": "test"})
    path = tmp_path_factory.mktemp("manifest") / "eval.csv"
    with path.open("w", newline="") as fh:
        cols = ["identifier", "modality", "dataset", "split", "caption", "label",
                "source_sha256"]
        writer = csv.DictWriter(fh, fieldnames=cols)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_code_usage_accumulates_over_batches():
    acc = CodeUsage(num_codebooks=2, codebook_size=4)
    acc.update(torch.tensor([[[[0, 1]], [[0, 0]]]]))   # [B=1, K=2, h=1, w=2]
    acc.update(torch.tensor([[[[2, 3]], [[0, 1]]]]))
    s = acc.summary()
    # Codebook 0 saw 0,1,2,3 once each (uniform: perplexity 4); codebook 1 saw 0,0,0,1.
    assert s["usage_percent"] == [100.0, 50.0]
    assert s["perplexity"][0] == pytest.approx(4.0)
    p = torch.tensor([0.75, 0.25])
    assert s["perplexity"][1] == pytest.approx(float(torch.exp(-(p * p.log()).sum())))
    assert s["tokens_per_codebook"] == 4


def test_parser_registers_eval_and_report():
    from meditok.cli import eval as eval_cli
    from meditok.cli import report as report_cli

    parser = argparse.ArgumentParser(prog="meditok")
    sub = parser.add_subparsers(dest="command")
    eval_cli.register(sub)
    report_cli.register(sub)
    args = parser.parse_args(["eval", "probe", "preset:tiny", "--features", "tokens,embed",
                              "--device", "cpu"])
    assert args.eval_command == "probe" and args.features == "tokens,embed"
    assert callable(args.func)
    args = parser.parse_args(["report", "a", "b", "--out", "r.html"])
    assert [str(p) for p in args.run_dirs] == ["a", "b"] and str(args.out) == "r.html"
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "volume", "preset:tiny", "--modality", "pet", "x.nii"])


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: dict[str, int] = {}
        self.images: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def test_eval_commands_and_html_report(manifest, shared_data, tmp_path, capsys):
    run_a, run_b = tmp_path / "tiny-a", tmp_path / "tiny-b"
    assert _run(["eval", "recon", "preset:tiny", "--data", str(manifest), "--no-fid",
                 "--out", str(run_a), "--quiet", "--grid", "2"]) == 0
    recon = json.loads((run_a / "recon.json").read_text())
    assert recon["modalities"]["dermoscopy"]["n"] == 5 and recon["modalities"]["ct"]["n"] == 3
    assert [s["item"] for s in recon["skipped"]] == [str(manifest.parent / "missing.png")]
    assert set(recon["grids"]) == {"ct", "dermoscopy"}
    assert _run(["eval", "codebook", "preset:tiny", "--medmnist", "breastmnist:val",
                 "--out", str(run_a), "--quiet", "--tsne-points", "40"]) == 0
    code = json.loads((run_a / "codebook.json").read_text())
    assert code["tokens_per_codebook"] == 78 * 16  # every val image, 4x4 tokens each
    assert _run(["eval", "efficiency", "preset:tiny", "--settings", "2x32,1x48,2x33",
                 "--iters", "1", "--out", str(run_b), "--quiet"]) == 0
    eff = json.loads((run_b / "efficiency.json").read_text())
    ok = [r for r in eff["rows"] if r["status"] == "ok"]
    assert len(ok) == 2 and all(r["fps"] > 0 and r["memory_gb"] > 0 for r in ok)
    assert eff["rows"][2]["status"].startswith("not supported")
    assert _run(["eval", "recon", "preset:tiny", "--images",
                 str(shared_data / "lpips_reference"), "--modality", "natural", "--no-fid",
                 "--out", str(run_b), "--quiet"]) == 0
    with (run_a / "train_log.jsonl").open("w") as fh:
        for step in range(0, 50, 10):
            fh.write(json.dumps({"step": step, "loss_rec": 1.0 / (step + 1),
                                 "loss_vq": 0.1}) + "\n")
        fh.write('{"step": 50, "loss_rec"')  # a torn last line of a running job

    out = tmp_path / "report.html"
    assert _run(["report", str(run_a), str(run_b), "--out", str(out)]) == 0
    page = _Collector()
    page.feed(out.read_text(encoding="utf-8"))
    text = " ".join(page.text)
    assert page.tags.get("table", 0) >= 3  # reconstruction, efficiency, codebook
    assert "Reconstruction (Table 1 layout)" in text and "tiny-a" in text and "tiny-b" in text
    assert "Table S4" in text and "Training curves" in text
    # grids (2 modalities + 1), codebook usage + t-SNE, training curves: all embedded PNGs
    assert len(page.images) >= 6
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "file://" not in out.read_text(encoding="utf-8")


def test_render_report_script_skips_or_renders(tmp_path, capsys):
    """benchmarks/render_report.py: renders in headless Chromium when installed, else skips."""
    import importlib.util
    from pathlib import Path

    from meditok.report import build_report

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "render_report.py"
    spec = importlib.util.spec_from_file_location("render_report", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    run = tmp_path / "run"
    run.mkdir()
    with (run / "train_log.jsonl").open("w") as fh:
        for step in range(5):
            fh.write(json.dumps({"step": step, "loss_total": 1.0 / (step + 1)}) + "\n")
    report = build_report([run], tmp_path / "r.html")
    assert mod.main([str(report), "--png", str(tmp_path / "r.png")]) == 0
    out = capsys.readouterr().out
    if mod.find_browser() is None:
        assert out.startswith("skipped")
    else:
        assert "rendered" in out and (tmp_path / "r.png").stat().st_size > 1000


def test_report_rejects_empty_run_dir(tmp_path):
    assert _run(["report", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 1


def test_task_family_results_are_shown_with_their_tables_and_figures(tmp_path):
    """Any write_results() pair (json + md) of a task family lands in the report, with its PNGs."""
    import numpy as np
    from PIL import Image

    from meditok.report import build_report
    from meditok.utils.results import write_results

    run = tmp_path / "synth"
    run.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(run / "grid_xray.png")
    write_results(run, "synthesis", {"grids": {"xray": "grid_xray.png"}, "missing": "nope.png"},
                  "# Synthesis\n\n| model | gFID |\n|---|---|\n| two-stage | 71.25 |\n")
    page = build_report([run], tmp_path / "r.html").read_text(encoding="utf-8")
    collector = _Collector()
    collector.feed(page)
    assert "71.25" in page and "Task-family results" in page
    assert sum(1 for src in collector.images if src.startswith("data:image/png;base64,")) == 1
