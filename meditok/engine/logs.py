"""Training logs: ``train_log.jsonl`` (one JSON object per logged step), optional TensorBoard,
and a tqdm progress bar. Only rank 0 writes.

On resume the JSONL file is truncated to the records at or before the resumed step, so a
run killed between two checkpoints does not leave duplicate or orphaned steps behind.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible as strings
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``train_log.jsonl`` file (partial last lines are ignored)."""
    out = []
    path = Path(path)
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def load_average() -> list[float] | None:
    """The 1/5/15-minute load averages (None where the OS has none): every timing on a shared
    machine is reported with them."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def record_session(out_dir: str | Path, record: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every (resumed) session of a run, kept in ``OUT/sessions.jsonl``: its wall time, the steps
    it trained (``from_step`` → ``to_step``) and the load around it; ``record`` is written
    (atomically) when given, replacing an earlier row of the same ``session`` id — the loop keeps
    its session's row current at every checkpoint, so a session that is killed (a time limit, a
    restart with other threads) still counts up to its last checkpoint, marked ``interrupted``.
    Returns all sessions, so a resumed model can state its whole cost."""
    from meditok.utils.io import atomic_write_text

    path = Path(out_dir) / "sessions.jsonl"
    rows = read_log(path)
    if record is not None:
        sid = record.get("session")
        rows = [r for r in rows if sid is None or r.get("session") != sid] + [record]
        atomic_write_text(path, "".join(json.dumps(_clean(r)) + "\n" for r in rows))
    return rows


class TrainLogger:
    """JSONL + TensorBoard + tqdm for rank 0; a silent no-op on other ranks."""

    def __init__(self, out_dir: str | Path, enabled: bool, total_steps: int, start_step: int,
                 tensorboard: bool = True, progress: bool = True):
        self.enabled = enabled
        self.path = Path(out_dir) / "train_log.jsonl"
        self._tb = None
        self._bar = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(start_step)
        self._fh = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(Path(out_dir) / "tb"), purge_step=start_step + 1)
            except ImportError:  # optional dependency: JSONL stays the record of truth
                self._tb = None
        if progress:
            from tqdm import tqdm
            self._bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True)

    def _truncate_after(self, step: int) -> None:
        if not self.path.is_file():
            return
        keep = [r for r in read_log(self.path) if int(r.get("step", 0)) <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")
        os.replace(tmp, self.path)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {k: _clean(v) for k, v in record.items()}
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        if self._tb is not None:
            step = int(record.get("step", 0))
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, step)

    def progress(self, n: int, postfix: dict[str, Any] | None = None) -> None:
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix({k: f"{v:.4g}" if isinstance(v, float) else v
                                       for k, v in postfix.items()}, refresh=False)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        self._fh.close()
        if self._tb is not None:
            self._tb.close()
        if self._bar is not None:
            self._bar.close()
