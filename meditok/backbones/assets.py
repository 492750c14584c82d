"""Locating offline weight files shipped inside registry packages.

The weight-carrying packages are installed with ``--no-deps`` and must never be imported
(their ``__init__`` may pull in jax and other large stacks), so we only ask the import
system where the package directory is.
"""
from __future__ import annotations

from pathlib import Path

from meditok.errors import MissingDependencyError
from meditok.utils.lazy import package_dir


def package_file(package: str, relative: str, pip_hint: str) -> Path:
    """Path of ``relative`` inside ``package``; raises with an install hint when missing."""
    root = package_dir(package)
    path = root / relative if root is not None else None
    if path is None or not path.exists():
        raise MissingDependencyError(
            f"offline weights {relative!r} from package '{package}' not found; "
            f"install them with: {pip_hint}"
        )
    return path
