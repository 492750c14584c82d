"""Training checkpoints shared by every trainer: atomic writes, keep-last-K, auto-resume, RNG.

A checkpoint (``ckpt-step00001234.pt``) is a plain dictionary of tensors, numbers, strings,
lists and dicts — the model, optimiser and scheduler states, every rank's RNG states (as plain
tensors and lists, never pickled numpy objects) and the data position — tagged with a
``format`` string naming the trainer that wrote it. It is written to a temporary file and
renamed, so a crash (even SIGKILL) leaves the previous checkpoints intact, and it is always
read with ``torch.load(weights_only=True)``: a file carrying any other pickled object is
refused with a clear error instead of being executed.
"""
from __future__ import annotations

import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meditok.errors import CheckpointError
from meditok.utils.io import atomic_path

_NAME = re.compile(r"^ckpt-step(\d+)\.pt$")


def checkpoint_name(step: int) -> str:
    return f"ckpt-step{step:08d}.pt"


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoints in ``directory`` sorted by step (oldest first)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Path | None:
    ckpts = list_checkpoints(directory)
    return ckpts[-1] if ckpts else None


def save_checkpoint(state: dict[str, Any], directory: str | Path, step: int, keep_last: int,
                    fmt: str) -> Path:
    """Write ``state`` atomically as the step's checkpoint (tagged ``fmt``), then prune to
    ``keep_last``."""
    directory = Path(directory)
    path = directory / checkpoint_name(step)
    state = {"format": fmt, "step": step, **state}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    if keep_last > 0:
        for old in list_checkpoints(directory)[:-keep_last]:
            old.unlink(missing_ok=True)
    return path


def _safe_load(path: Path, mmap: bool = False) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{path}: refused to load: the file holds pickled objects other than tensors and "
            f"plain containers, which could run code ({first}). Only checkpoints written by "
            "meditok (or plain state dicts) are accepted.") from None
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint ({str(exc).splitlines()[0][:200]})") from None


def load_checkpoint(path: str | Path, fmt: str | None = None) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``); check its ``format`` when given."""
    path = Path(path)
    state = _safe_load(path)
    if not isinstance(state, dict) or (fmt is not None and state.get("format") != fmt):
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not a {fmt or 'meditok'} training checkpoint (format: {found!r})")
    return state


def is_checkpoint(path: str | Path, fmt: str) -> bool:
    """Whether ``path`` is a (safely loadable) checkpoint of format ``fmt``; a refused or
    unreadable file raises :class:`CheckpointError` rather than being guessed at."""
    obj = _safe_load(Path(path), mmap=True)
    return isinstance(obj, dict) and obj.get("format") == fmt


# ---------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states as tensors and plain lists."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state((npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["gauss"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
