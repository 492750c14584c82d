"""Result files shared by every benchmark: ``<name>.json`` + ``<name>.md``, table formatting,
and the environment record written into each result.

Every benchmark (tokenizer, synthesis, VQA, in-context) writes ``<name>.json``
(machine-readable, read back by :mod:`meditok.report`) and ``<name>.md`` (the paper-style
table) into its output directory, atomically.
"""
from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from meditok.utils.io import atomic_write_text


def batches(items: Sequence[Any], batch_size: int) -> Iterator[Sequence[Any]]:
    """Consecutive slices of ``items`` of at most ``batch_size``."""
    for start in range(0, len(items), batch_size):
        yield items[start:start + batch_size]


def environment() -> dict[str, Any]:
    """What ran the measurement (written into every result file): versions, threads, load."""
    info: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(),
                            "machine": platform.machine(), "cpu_threads": torch.get_num_threads(),
                            "cpu_count": os.cpu_count()}
    try:
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    except OSError:  # not available on every platform
        pass
    for var in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY"):
        if os.environ.get(var):
            info[var] = os.environ[var]
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


# ----------------------------------------------------------------------------- tables
def fmt(value: Any, digits: int = 2) -> str:
    """Format a table cell: floats with ``digits`` decimals, ``None`` as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, float):
        if np.isnan(value):
            return "n/a"
        return f"{value:.{digits}f}"
    return str(value)


def pct(v: float | None) -> str:
    """A fraction as a percentage with two decimals (``–`` for missing / NaN)."""
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:.2f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], digits: int = 2) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(fmt(v, digits) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_results(out_dir: str | Path, name: str, result: dict[str, Any],
                  markdown: str) -> tuple[Path, Path]:
    """Write ``name.json`` and ``name.md`` into ``out_dir`` atomically; return both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = dict(result)
    result.setdefault("environment", environment())
    jpath, mpath = out / f"{name}.json", out / f"{name}.md"
    atomic_write_text(jpath, json.dumps(result, indent=2, default=_json_default) + "\n")
    atomic_write_text(mpath, markdown)
    return jpath, mpath


@dataclass
class Skipped:
    """An input that could not be used (reported in the results, never silently dropped)."""

    item: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"item": self.item, "reason": self.reason}
