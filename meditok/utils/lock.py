"""One writer per output: an advisory lock on every output folder or file a verb writes.

Two runs given the same ``--out`` would otherwise both pass the "already exists" check and
write over each other (one run's results lost, both exiting 0). Every verb that writes an
output takes :func:`output_lock` first; a second run on the same output fails at once with
a one-line :class:`~meditok.errors.OutputLockedError` naming the other process.

The lock is ``fcntl.flock`` on ``OUT/.meditok.lock`` (an output folder) or on
``.{name}.meditok.lock`` next to an output file. The kernel releases it when the process
ends, however it ends, so a killed run never leaves a stuck lock; the small lock file itself
stays (removing it would race with a run that is just opening it).
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator

from meditok.errors import MedITokError
from meditok.utils.io import truncate_name

LOCK_NAME = ".meditok.lock"


class OutputLockedError(MedITokError):
    """Another process holds the lock of this output."""


def lock_path(target: str | Path, is_dir: bool) -> Path:
    """Where the lock of ``target`` lives (inside a folder, next to a file)."""
    target = Path(target)
    if is_dir:
        return target / LOCK_NAME
    return target.parent / f".{truncate_name(target.name, 200)}.meditok.lock"


@contextlib.contextmanager
def output_lock(target: str | Path, is_dir: bool = True) -> Iterator[Path]:
    """Hold the exclusive lock of the output ``target`` (a folder, or a file when
    ``is_dir=False``) for the duration of the block; raise :class:`OutputLockedError` at
    once if another process holds it. Yields the lock file's path."""
    target = Path(target)
    path = lock_path(target, is_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no advisory locks, run unguarded
        yield path
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            with contextlib.suppress(OSError):
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
            raise OutputLockedError(
                f"{target} is being written by another meditok run"
                f"{f' ({holder})' if holder else ''}; wait for it to finish or choose another "
                "--out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {' '.join(sys.argv[:3])[:150]}".encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock
