"""Lazy import of optional dependencies with an install hint."""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
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


def package_dir(package: str) -> Path | None:
    """Directory of an installed package without importing it (``None`` when absent).

    Used for packages that only carry data (sample images, offline weights): importing them
    can be slow or pull in large stacks, and only their files are needed.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])
