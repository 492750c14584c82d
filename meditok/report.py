"""One self-contained HTML page from one or more evaluation run directories.

Reads the ``*.json`` results written by the tokenizer's evaluation commands (``recon``,
``probe``, ``volume``, ``efficiency``, ``codebook``), the PNGs they reference and an optional
``train_log.jsonl`` (one JSON object per line with ``step`` and ``loss_*`` keys). Several run
directories are compared side by side: tables get one row per run, figures one column per run.
Results of any other benchmark written with :func:`meditok.utils.results.write_results`
(``<name>.json`` + ``<name>.md``: the task families' synthesis / VQA / in-context tables) are
shown with their markdown tables and every PNG their JSON names. Every image is embedded as
base64, so the page can be mailed or archived as one file.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any, Sequence

from meditok.errors import InvalidInputError
from meditok.utils.io import atomic_write_text

from meditok.data.benchmarks import PAPER_MODALITY_LABELS, order_modalities
from meditok.utils.results import fmt, pct

KINDS = ("recon", "probe", "volume", "efficiency", "codebook")
TRAIN_LOG = "train_log.jsonl"

CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:2em}
table{border-collapse:collapse;margin:8px 0 16px;font-size:.9em}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child,th:nth-child(2),td:nth-child(2){text-align:left}
thead th{background:#f0f0f0}.runs{display:flex;gap:16px;flex-wrap:wrap;align-items:flex-start}
.run{flex:1 1 420px;min-width:320px}.run img{max-width:100%;border:1px solid #ddd}
.note{color:#666;font-size:.85em}code{background:#f5f5f5;padding:1px 4px}
"""


class Run:
    """Results found in one run directory."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        if not self.dir.is_dir():
            raise InvalidInputError(f"{self.dir}: run directory not found")
        self.label = self.dir.resolve().name
        self.results: dict[str, tuple[Path, dict[str, Any]]] = {}
        for kind in KINDS:
            hits = sorted(self.dir.glob(f"{kind}.json")) + sorted(self.dir.glob(f"*/{kind}.json"))
            if hits:
                self.results[kind] = (hits[0].parent, json.loads(hits[0].read_text("utf-8")))
        logs = sorted(self.dir.glob(TRAIN_LOG)) + sorted(self.dir.glob(f"*/{TRAIN_LOG}"))
        self.train_log = logs[0] if logs else None
        # any other write_results() pair (<name>.json + <name>.md): the task families' tables
        self.others: list[tuple[Path, dict[str, Any]]] = []
        for hit in sorted(self.dir.glob("*.json")) + sorted(self.dir.glob("*/*.json")):
            if hit.stem in KINDS or not hit.with_suffix(".md").is_file():
                continue
            try:
                self.others.append((hit, json.loads(hit.read_text("utf-8"))))
            except (OSError, ValueError):
                continue

    def get(self, kind: str) -> dict[str, Any] | None:
        return self.results[kind][1] if kind in self.results else None

    def image(self, kind: str, name: str | None) -> str | None:
        """An ``<img>`` tag with the PNG embedded, or None when the file is missing."""
        if not name or kind not in self.results:
            return None
        path = self.results[kind][0] / name
        return _img_tag(path.read_bytes(), name) if path.is_file() else None


# ----------------------------------------------------------------------------- helpers
def _img_tag(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 2) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(c, digits))}</td>" for c in r)
                   + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _side_by_side(blocks: Sequence[tuple[str, str]]) -> str:
    cols = "".join(f'<div class="run"><h3>{html.escape(t)}</h3>{b}</div>' for t, b in blocks)
    return f'<div class="runs">{cols}</div>'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


# ----------------------------------------------------------------------------- sections
def _recon_section(runs: Sequence[Run]) -> str:
    have = [(r, r.get("recon")) for r in runs if r.get("recon")]
    if not have:
        return ""
    mods = order_modalities([m for _, res in have for m in res["modalities"]])
    header = ["Metric", "Run", "f_d"] + [PAPER_MODALITY_LABELS.get(m, m) for m in mods] \
        + ["Avg.", "All"]
    rows = []
    for key, name in (("rfid", "rFID ↓"), ("psnr", "PSNR ↑"), ("ssim", "SSIM ↑"),
                      ("n", "N images")):
        for run, res in have:
            rows.append([name, run.label, res.get("downsample")]
                        + [res["modalities"].get(m, {}).get(key) for m in mods]
                        + [res["avg"].get(key), res["all"].get(key)])
    out = "<h2>Reconstruction (Table 1 layout)</h2>" + _table(header, rows)
    out += "".join(_note(f"{k}: {v}") for k, v in have[0][1]["conventions"].items())
    blocks = []
    for run, res in have:
        imgs = [run.image("recon", f) for f in res.get("grids", {}).values()]
        blocks.append((run.label, "".join(i for i in imgs if i) or _note("no grids")))
    out += "<h3>Reconstructions and absolute-error maps (Fig. 3 style)</h3>" \
        + _side_by_side(blocks)
    return out


def _probe_section(runs: Sequence[Run]) -> str:
    have = [(r, r.get("probe")) for r in runs if r.get("probe")]
    if not have:
        return ""
    datasets = list(dict.fromkeys(d for _, res in have for d in res["datasets"]))
    header = ["Model", "Run"] + datasets + ["AVG"]
    rows, seen_published = [], set()
    for run, res in have:
        for row in res["table"]:
            if row.get("published"):
                if row["model"] in seen_published:
                    continue
                seen_published.add(row["model"])
            cells, maps, aucs = [row["model"], "published" if row.get("published")
                                 else run.label], [], []
            for d in datasets:
                sc = row["scores"].get(d)
                cells.append(f"{pct(sc.get('map'))}/{pct(sc.get('auc'))}" if sc else None)
                if sc:
                    maps.append(sc.get("map"))
                    aucs.append(sc.get("auc"))
            full = len(aucs) == len(datasets)
            avg_m = sum(maps) / len(maps) if full and None not in maps else None
            avg_a = sum(aucs) / len(aucs) if full and None not in aucs else None
            cells.append(f"{pct(avg_m)}/{pct(avg_a)}" if full else None)
            rows.append(cells)
    out = "<h2>Linear probing (Table 2 layout, test mAP / AUC %)</h2>" + _table(header, rows)
    out += _note(have[0][1].get("protocol", ""))
    blocks = [(run.label, run.image("probe", res.get("curves")) or _note("no curves"))
              for run, res in have]
    return out + "<h3>Probe learning curves</h3>" + _side_by_side(blocks)


def _volume_section(runs: Sequence[Run]) -> str:
    have = [(r, r.get("volume")) for r in runs if r.get("volume")]
    if not have:
        return ""
    rows = [[Path(v["volume"]).name, run.label, v["modality"], v["slices"], v["psnr"], v["ssim"],
             v.get("rfid")] for run, res in have for v in res["volumes"]]
    out = "<h2>3D volumes by slices (Table S2 layout)</h2>"
    out += _table(["Volume", "Run", "Modality", "Slices", "PSNR ↑", "SSIM ↑", "rFID ↓"], rows)
    return out + "".join(_note(f"{k}: {v}") for k, v in have[0][1]["conventions"].items())


def _efficiency_section(runs: Sequence[Run]) -> str:
    have = [(r, r.get("efficiency")) for r in runs if r.get("efficiency")]
    if not have:
        return ""
    rows = []
    for run, res in have:
        for r in res["rows"]:
            ok = r["status"] == "ok"
            rows.append([r["model"], run.label, r["device"], f"B{r['batch']}, R{r['resolution']}",
                         r["memory_gb"] if ok else r["status"], r["fps"] if ok else r["status"]])
    out = "<h2>Inference efficiency (Table S4 layout)</h2>"
    out += _table(["Model", "Run", "Device", "Setting", "Memory (GB)", "FPS"], rows)
    kinds = sorted({r.get("memory_kind", "") for _, res in have for r in res["rows"]} - {""})
    return out + _note("memory: " + "; ".join(kinds))


def _codebook_section(runs: Sequence[Run]) -> str:
    have = [(r, r.get("codebook")) for r in runs if r.get("codebook")]
    if not have:
        return ""
    k = max(len(res["usage_percent"]) for _, res in have)
    header = ["Run", "Dataset", "Mean usage %", "Mean perplexity"] \
        + [f"usage {i}" for i in range(k)]
    rows = [[run.label, res.get("dataset"), res["mean_usage_percent"], res["mean_perplexity"]]
            + list(res["usage_percent"]) for run, res in have]
    out = "<h2>Codebook analysis (App. D.4)</h2>" + _table(header, rows)
    blocks = [(run.label, "".join(i for i in (run.image("codebook", f)
                                              for f in res.get("plots", {}).values()) if i))
              for run, res in have]
    return out + _side_by_side(blocks)


def training_curves_png(log: Path) -> bytes | None:
    """Plot every ``loss_*`` key of a JSONL training log against ``step``."""
    records = []
    for line in log.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a partially written last line of a running job
    keys = sorted({k for r in records for k in r if k.startswith("loss")})
    if not records or not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for k in keys:
        pts = [(r["step"], r[k]) for r in records if "step" in r and isinstance(r.get(k),
                                                                               (int, float))]
        if pts:
            ax.plot(*zip(*pts), label=k, lw=1)
    ax.set(xlabel="step", ylabel="loss", title="training losses")
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _training_section(runs: Sequence[Run]) -> str:
    blocks = []
    for run in runs:
        if run.train_log is not None:
            png = training_curves_png(run.train_log)
            if png:
                blocks.append((run.label, _img_tag(png, f"{run.label} training curves")))
    return "<h2>Training curves</h2>" + _side_by_side(blocks) if blocks else ""


def _png_names(obj: Any) -> list[str]:
    """Every ``*.png`` file name mentioned in a result JSON (figures, grids, panels)."""
    if isinstance(obj, str):
        return [obj] if obj.lower().endswith(".png") else []
    if isinstance(obj, dict):
        return [n for v in obj.values() for n in _png_names(v)]
    if isinstance(obj, list):
        return [n for v in obj for n in _png_names(v)]
    return []


def _markdown_html(text: str) -> str:
    """The subset of markdown the result files use: headings, tables, bullets, paragraphs."""
    out, table = [], []

    def flush() -> None:
        if table:
            rows = [[c.strip() for c in r.strip().strip("|").split("|")] for r in table
                    if not set(r.replace("|", "").strip()) <= set("-: ")]
            out.append(_table(rows[0], rows[1:]) if rows else "")
            table.clear()

    for line in text.splitlines():
        if line.lstrip().startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 2, 6)
            out.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.lstrip().startswith(("* ", "- ")):
            out.append(f"<p class=\"note\">• {html.escape(line.lstrip()[2:])}</p>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    flush()
    return "".join(out)


def _other_section(runs: Sequence[Run]) -> str:
    blocks = []
    for run in runs:
        for path, data in run.others:
            body = _markdown_html(path.with_suffix(".md").read_text("utf-8"))
            images = [_img_tag((path.parent / n).read_bytes(), n) for n in dict.fromkeys(_png_names(data))
                      if (path.parent / n).is_file()]
            blocks.append((f"{run.label}: {path.relative_to(run.dir)}", body + "".join(images)))
    return "<h2>Task-family results</h2>" + _side_by_side(blocks) if blocks else ""


def build_report(run_dirs: Sequence[str | Path], out: str | Path,
                 title: str = "MedITok evaluation report") -> Path:
    """Write the HTML report for ``run_dirs`` to ``out``; returns its path."""
    if not run_dirs:
        raise InvalidInputError("no run directories given")
    runs = [Run(d) for d in run_dirs]
    if not any(r.results or r.train_log or r.others for r in runs):
        raise InvalidInputError("no evaluation results (recon/probe/volume/efficiency/codebook "
                                f".json) or {TRAIN_LOG} found in: "
                                + ", ".join(str(r.dir) for r in runs))
    sections = [_recon_section(runs), _probe_section(runs), _volume_section(runs),
                _efficiency_section(runs), _codebook_section(runs), _other_section(runs),
                _training_section(runs)]
    runs_list = "".join(f"<li><code>{html.escape(str(r.dir))}</code>: "
                        f"{html.escape(', '.join(list(r.results) + [p.stem for p, _ in r.others]) or 'no results')}</li>"
                        for r in runs)
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><ul>{runs_list}</ul>"
            + "".join(s for s in sections if s) + "</body></html>\n")
    out = Path(out)
    atomic_write_text(out, page)
    return out
