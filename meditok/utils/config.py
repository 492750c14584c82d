"""Typed configurations: dataclasses ⇄ plain dicts ⇄ YAML/JSON files, with dotted overrides.

Every configurable object of meditok (the tokenizer's architecture, a training run, a GPT, a
VQA or in-context run) is a dataclass deriving from :class:`Config`. On disk it is YAML (or
JSON); on the command line any field can be overridden as ``--section.field value``; values
are coerced to the annotated field types, and unknown keys are refused with their dotted name.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

C = TypeVar("C", bound="Config")


class Config:
    """Mixin for configuration dataclasses (``@dataclass class X(Config): ...``)."""

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad field; subclasses override."""

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dictionary (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any] | None) -> C:
        """Build and validate from a dictionary; unknown keys raise ``ValueError``."""
        cfg = from_dict(cls, data or {}, "")
        cfg.validate()
        return cfg

    @classmethod
    def load(cls: type[C], path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> C:
        """Read a YAML/JSON file and apply overrides (``["--optim.lr", "1e-4"]`` or a dict)."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"{path}: cannot read config ({exc})") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path}: config must be a mapping, got {type(data).__name__}")
        try:
            cfg = cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
        return apply_overrides(cfg, overrides) if overrides else cfg

    def save(self, path: str | Path) -> None:
        """Write as JSON (``.json``) or YAML (anything else), atomically."""
        from meditok.utils.io import atomic_write_text

        path = Path(path)
        text = (json.dumps(self.to_dict(), indent=2) if path.suffix == ".json"
                else yaml.safe_dump(self.to_dict(), sort_keys=False))
        atomic_write_text(path, text)


def config_hash(data: Config | dict[str, Any], drop: tuple[str, ...] = ("meta",)) -> str:
    """Short stable identity of a configuration (sha256 of its canonical JSON, ``drop`` keys
    removed), e.g. to tell whether tokens came from a given tokenizer."""
    d = data.to_dict() if isinstance(data, Config) else dict(data)
    d = {k: v for k, v in d.items() if k not in drop}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def from_dict(kind: type, data: dict[str, Any], where: str = "") -> Any:
    """Recursively build dataclass ``kind`` from ``data``, coercing values to field types."""
    if not isinstance(data, dict):
        raise ValueError(f"config section {where or 'root'!r} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(kind)
    known = {f.name for f in fields(kind)}
    unknown = set(data) - known
    if unknown:
        prefix = f"{where}." if where else ""
        raise ValueError(f"unknown config keys: {sorted(prefix + k for k in unknown)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        dotted = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(hint, value or {}, dotted)
        else:
            kwargs[name] = coerce(value, hint, dotted)
    return kind(**kwargs)


def coerce(value: Any, hint: Any, name: str) -> Any:
    """Convert a YAML / command-line value to the annotated field type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if value is None:
        return None
    if origin is typing.Union or type(hint).__name__ == "UnionType":
        inner = [a for a in args if a is not type(None)]
        if isinstance(value, str) and value.lower() in ("none", "null", "~"):
            return None
        return coerce(value, inner[0], name)
    if origin is tuple:
        if isinstance(value, str):
            value = yaml.safe_load(value if value.startswith("[") else f"[{value}]")
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} must be a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(coerce(v, item, name) for v in value)
    if origin is list:
        if isinstance(value, str):
            value = yaml.safe_load(value if value.startswith("[") else f"[{value}]")
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} must be a list, got {value!r}")
        return [coerce(v, args[0] if args else Any, name) for v in value]
    if origin is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ValueError(f"{name} must be a mapping, got {value!r}")
        return dict(value)
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) else int(value)
        if hint is float:
            return float(value)
        if hint is str:
            return str(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: cannot read {value!r} as {hint.__name__}") from exc
    return value


def apply_overrides(cfg: C, overrides: list[str] | dict[str, Any]) -> C:
    """Return a copy of ``cfg`` with dotted overrides applied and validated.

    ``overrides`` is a dict ``{"optim.lr": 1e-4}`` or an argv-style list
    ``["--optim.lr", "1e-4", "--data.manifest=corpus/manifest.csv"]``. Keys under a
    dict-typed field (e.g. ``model.overrides.image_size``) are free-form.
    """
    pairs = parse_overrides(overrides) if isinstance(overrides, list) else dict(overrides)
    data = cfg.to_dict()
    hints_of: Any = type(cfg)
    for key, value in pairs.items():
        parts = key.split(".")
        node, kind = data, hints_of
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node, dict) or part not in node:
                raise ValueError(f"unknown config key {key!r} (no section {'.'.join(parts[:i + 1])!r})")
            node = node[part]
            kind = typing.get_type_hints(kind).get(part) if dataclasses.is_dataclass(kind) else None
        leaf = parts[-1]
        free_form = kind is not None and typing.get_origin(kind) is dict
        if not isinstance(node, dict) or (leaf not in node and not free_form):
            raise ValueError(f"unknown config key {key!r}")
        if free_form and isinstance(value, str):
            value = yaml.safe_load(value)
        node[leaf] = value
    return type(cfg).from_dict(data)


def parse_overrides(argv: list[str]) -> dict[str, Any]:
    """``["--a.b", "1", "--c=2"]`` → ``{"a.b": "1", "c": "2"}`` (dashes in keys become ``_``)."""
    pairs: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("--"):
            raise ValueError(f"expected --section.key, got {tok!r}")
        tok = tok[2:]
        if "=" in tok:
            key, value = tok.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(argv):
                raise ValueError(f"missing value for --{tok}")
            key, value = tok, argv[i + 1]
            i += 2
        pairs[key.replace("-", "_")] = value
    return pairs


def choose_preset(presets: dict[str, C], name: str, what: str, **overrides: Any) -> C:
    """A validated copy of ``presets[name]`` with dataclass-field ``overrides``; an unknown
    name is a ``ValueError`` listing the known ones (``what`` names the kind, e.g. ``GPT``)."""
    if name not in presets:
        raise ValueError(f"unknown {what} preset {name!r}; choose one of {sorted(presets)}")
    cfg = dataclasses.replace(presets[name], **overrides)
    cfg.validate()
    return cfg
