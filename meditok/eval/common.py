"""Shared plumbing of the evaluation suite: model loading, seeding, devices, result files.

Every evaluation writes ``<name>.json`` (machine-readable, read back by the HTML report) and
``<name>.md`` (the paper-style table) into its output directory, atomically.
"""
from __future__ import annotations

import json
import platform
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from meditok.errors import CheckpointError, InvalidInputError
from meditok.utils.io import atomic_write_text

#: ``CHECKPOINT`` values of this form build an untrained model (smoke runs, tests).
PRESET_PREFIX = "preset:"


def set_seed(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``cpu`` (default), ``cuda`` or ``cuda:N``; a clear error when CUDA is not there."""
    device = torch.device(name or "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"--device {name}: CUDA is not available on this machine")
    return device


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu"):
    """Load a MedITok checkpoint (directory or file) or ``preset:NAME`` (random weights).

    The model is returned in ``eval()`` mode on ``device`` with gradients disabled.
    """
    from meditok.model import MedITok  # imported late: eval must not import model at module load

    spec = str(checkpoint)
    if spec.startswith(PRESET_PREFIX):
        model = MedITok.from_preset(spec[len(PRESET_PREFIX):])
    else:
        if not Path(spec).exists():
            raise CheckpointError(f"{spec}: checkpoint not found (a directory, a file, or "
                                  f"'{PRESET_PREFIX}tiny' for an untrained model)")
        model = MedITok.from_pretrained(spec)
    model.eval().requires_grad_(False)
    return model.to(resolve_device(device))


def checkpoint_label(checkpoint: str | Path) -> str:
    """Short name of a checkpoint for tables (``preset:tiny`` or the directory name)."""
    spec = str(checkpoint)
    return spec if spec.startswith(PRESET_PREFIX) else Path(spec).resolve().name


def image_size(model) -> int:
    """Input side length the model expects (from its preprocessing contract)."""
    return int(model.config.preprocess.image_size)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Model range ``[-1, 1]`` → ``[0, 1]`` (clamped), float32."""
    return ((x.float() + 1.0) / 2.0).clamp_(0.0, 1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Model range ``[-1, 1]`` → uint8 ``[0, 255]`` (rounded), as an image file would store it."""
    return (to_unit(x) * 255.0).round_().to(torch.uint8)


def batches(items: Sequence[Any], batch_size: int) -> Iterator[Sequence[Any]]:
    """Consecutive slices of ``items`` of at most ``batch_size``."""
    for start in range(0, len(items), batch_size):
        yield items[start:start + batch_size]


def environment() -> dict[str, Any]:
    """What ran the evaluation (written into every result file)."""
    info: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(),
                            "machine": platform.machine(), "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


# ----------------------------------------------------------------------------- results
def fmt(value: Any, digits: int = 2) -> str:
    """Format a table cell: floats with ``digits`` decimals, ``None`` as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, float):
        if np.isnan(value):
            return "n/a"
        return f"{value:.{digits}f}"
    return str(value)


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


def read_results(path: str | Path) -> dict[str, Any]:
    """Read a result JSON written by :func:`write_results`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


@dataclass
class Skipped:
    """An input that could not be used (reported in the results, never silently dropped)."""

    item: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"item": self.item, "reason": self.reason}
