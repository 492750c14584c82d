"""Lazy import of optional dependencies with an install hint."""
from __future__ import annotations

import importlib
from types import ModuleType

from meditok.errors import MissingDependencyError


def require(module: str, extra: str, package: str | None = None) -> ModuleType:
    """Import ``module`` or raise an error telling which pip extra provides it.

    Args:
        module: importable module name, e.g. ``"pydicom"``.
        extra: the ``meditok[...]`` extra that installs it, e.g. ``"io"``.
        package: the PyPI name when it differs from the module name.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised only without the package
        pkg = package or module
        raise MissingDependencyError(
            f"this feature needs the optional package '{pkg}' ({exc}); "
            f"install it with: pip install 'meditok[{extra}]'  (or: pip install {pkg})"
        ) from exc
