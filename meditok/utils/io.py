"""Atomic file writes: a crash never leaves a half-written output behind.

A write goes to a hidden temporary file next to its target (``.{name}.XXXXXXXX.tmp``, the
name part shortened so the temporary name stays within the 255-byte file-name limit even
for a legal 250-character target) and is renamed over the target when complete. A process
killed mid-write (SIGKILL, power loss) leaves such a temporary file behind; a job that owns
its output folder (it holds the folder's lock, :mod:`meditok.utils.lock`) removes them with
:func:`remove_stale_temps` before it starts.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

#: Longest name part (in UTF-8 bytes) kept in a temporary file name. With the dot, the
#: random part (8), the dots and ``.tmp`` the temporary name stays far below 255 bytes.
_TMP_NAME_BYTES = 120
#: What :func:`atomic_path` temporary files look like (and only they).
TEMP_PATTERN = re.compile(r"^\..*\.[A-Za-z0-9_]{8}\.tmp$")


def truncate_name(name: str, max_bytes: int) -> str:
    """``name`` cut to at most ``max_bytes`` UTF-8 bytes, never inside a character."""
    data = name.encode("utf-8")
    if len(data) <= max_bytes:
        return name
    return data[:max_bytes].decode("utf-8", errors="ignore")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` on success.

    The temporary file lives in the same directory so ``os.replace`` is atomic.
    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{truncate_name(path.name, _TMP_NAME_BYTES)}."
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temporary files that killed writes left under ``folder`` (recursively).

    Only call this while holding the folder's lock (:func:`meditok.utils.lock.output_lock`):
    then no other meditok process can be writing there, so every temporary file is stale.
    Returns the removed paths.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.rglob(".*.tmp"):
        if p.is_file() and TEMP_PATTERN.match(p.name):
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


def cache_root() -> Path:
    """Root of meditok's user cache, for things derived once per machine (de-quantised LMs,
    compiled kernels): ``$MEDITOK_CACHE``, else ``$XDG_CACHE_HOME/meditok``, else
    ``~/.cache/meditok``. Never inside the package or a result folder."""
    if os.environ.get("MEDITOK_CACHE"):
        return Path(os.environ["MEDITOK_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "meditok"
