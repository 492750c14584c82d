"""Save / load pretrained models in a layout the Hugging Face hub accepts, for every family.

A pretrained directory holds::

    config.json          the model's typed config (+ ``model_type``), including any
                         preprocessing contract and provenance
    model.safetensors    the weights
    README.md            a model card

:class:`PretrainedMixin` gives a model class ``save_pretrained`` / ``from_pretrained``; the
class names its config dataclass and its ``model_type``. Checkpoints shipped inside the package
live in ``meditok/weights/<name>/`` and load by name (``from_pretrained("meditok-small")``).
Weights are read with safetensors or ``torch.load(weights_only=True)`` only: nothing in a
checkpoint is ever executed.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any, ClassVar, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from meditok.errors import CheckpointError
from meditok.utils.io import atomic_path, atomic_write_text

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
#: Checkpoints shipped inside the package (``meditok/weights/<name>/``).
BUNDLED_DIR = Path(__file__).resolve().parents[1] / "weights"


def bundled_names() -> list[str]:
    """Names of the checkpoints shipped with the package."""
    return sorted(p.name for p in BUNDLED_DIR.glob("*") if (p / CONFIG_NAME).exists())


def resolve_checkpoint(path: str | Path) -> Path:
    """A directory/file path, or the name of a bundled checkpoint → an existing path."""
    p = Path(path)
    if not p.exists() and (BUNDLED_DIR / str(path) / CONFIG_NAME).exists():
        return BUNDLED_DIR / str(path)
    if not p.exists():
        raise CheckpointError(f"{path}: no such checkpoint directory or file "
                              f"(bundled checkpoints: {', '.join(bundled_names()) or 'none'})")
    return p


#: What reading a damaged, foreign or pickled-code weights file raises.
_READ_ERRORS = (SafetensorError, RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError)


def _unreadable(path: Path, exc: BaseException) -> CheckpointError:
    reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return CheckpointError(f"{path}: cannot read weights (not a torch/safetensors "
                           f"checkpoint, or not loadable with weights_only=True: {reason})")


def _check_mapping(path: Path, obj: Any) -> None:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, got {type(obj).__name__}")


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file loaded with ``weights_only=True``."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from None
    _check_mapping(path, obj)
    return dict(obj)


def read_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors in a weights file, without loading their data
    (safetensors: the header; torch files: a memory-mapped ``weights_only`` load)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) torch files cannot be memory-mapped
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from None
    _check_mapping(path, obj)
    return {k: tuple(v.shape) for k, v in obj.items() if isinstance(v, torch.Tensor)}


def check_finite(state: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse weights holding NaN or infinite values (such a model gives token 0 everywhere)."""
    import numpy as np

    def finite(v: torch.Tensor) -> bool:
        # numpy on CPU: one single-threaded pass (torch spins up its thread pool per tensor)
        if v.device.type == "cpu" and v.dtype in (torch.float32, torch.float64, torch.float16):
            return bool(np.isfinite(v.detach().numpy()).all())
        return bool(torch.isfinite(v).all())

    bad = [k for k, v in state.items() if v.is_floating_point() and not finite(v)]
    if bad:
        shown = ", ".join(bad[:5]) + (f" … (+{len(bad) - 5} more)" if len(bad) > 5 else "")
        raise CheckpointError(f"{source}: {len(bad)} weight tensors contain NaN or infinite "
                              f"values ({shown}); the checkpoint is damaged")


def check_size_against_weights(config: Any, shapes: Mapping[str, tuple[int, ...]], source: str) -> None:
    """Refuse, before the model is built, a config describing a much larger model than the
    weights file holds (a damaged or hostile ``config.json`` would otherwise allocate
    gigabytes before the state-dict check). Uses the config's ``estimated_parameters()``
    (also on a ``model`` sub-config) when it has one; the exact name/shape check follows after
    building, when the allocation is known to be about the size of the file."""
    est = getattr(getattr(config, "model", config), "estimated_parameters", None)
    if not callable(est):
        return
    stored = 0
    for shape in shapes.values():
        n = 1
        for s in shape:
            n *= int(s)
        stored += n
    expected = int(est())
    if expected > 1.5 * stored + 1_000_000:
        raise CheckpointError(f"{source}: the config describes a model of about "
                              f"{expected / 1e6:.1f} M parameters but the weights hold "
                              f"{stored / 1e6:.1f} M; config.json does not belong to these "
                              "weights (nothing was built)")


def check_state_dict(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                     source: str) -> None:
    """Raise a :class:`CheckpointError` listing missing, unexpected and mis-shaped keys."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or mismatched:
        def show(items: list[str]) -> str:
            return ", ".join(items[:10]) + (f" … (+{len(items) - 10} more)" if len(items) > 10 else "")
        parts = [f"{source}: state dict does not match the model"]
        if missing:
            parts.append(f"missing {len(missing)}: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {show(unexpected)}")
        if mismatched:
            parts.append(f"mismatched {len(mismatched)}: {show(mismatched)}")
        raise CheckpointError("\n  ".join(parts))


def read_config_dict(directory: Path, model_type: str | None = None) -> dict[str, Any]:
    """``config.json`` of a pretrained directory (its ``model_type`` checked and removed)."""
    path = directory / CONFIG_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing config") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read config ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: config must be a JSON object")
    found = data.pop("model_type", None)
    if model_type is not None and found is not None and found != model_type:
        raise CheckpointError(f"{directory}: holds a {found!r} model, not a {model_type!r} model")
    return data


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for an ``nn.Module`` with a typed ``config``.

    Subclasses set :attr:`config_class` (a :class:`meditok.utils.config.Config` with
    ``from_dict``/``to_dict``) and :attr:`model_type`, and build themselves from a config
    (``cls(config)``). Override :meth:`model_card` for a richer README.
    """

    config_class: ClassVar[type]
    model_type: ClassVar[str]

    def model_card(self) -> str:
        cfg = self.config  # type: ignore[attr-defined]
        lines = ["---", "library_name: meditok", f"tags: [medical-imaging, {self.model_type}]", "---",
                 "", f"# {self.model_type}", "", "```python",
                 f"from {type(self).__module__} import {type(self).__name__}",
                 f"model = {type(self).__name__}.from_pretrained('.')", "```", ""]
        for key, value in (getattr(cfg, "meta", None) or {}).items():
            lines.append(f"- **{key}**: {value}")
        return "\n".join(lines) + "\n"

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write config, weights and a model card to ``directory`` (created if needed, atomic
        per file). ``dtype`` (e.g. ``torch.float16``) stores floating tensors in a smaller type;
        they are cast back to fp32 on load."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        module: torch.nn.Module = self  # type: ignore[assignment]
        state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        with atomic_path(directory / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt", "library": "meditok",
                                                  "model_type": self.model_type})
        config = {"model_type": self.model_type, **self.config.to_dict()}  # type: ignore[attr-defined]
        atomic_write_text(directory / CONFIG_NAME, json.dumps(config, indent=2))
        if not (directory / CARD_NAME).exists():
            atomic_write_text(directory / CARD_NAME, self.model_card())
        return directory

    @classmethod
    def config_from_pretrained(cls, path: str | Path) -> Any:
        """The typed config of a pretrained directory (or of a weights file's directory)."""
        p = resolve_checkpoint(path)
        directory = p if p.is_dir() else p.parent
        return cls.config_class.from_dict(read_config_dict(directory, cls.model_type))

    @classmethod
    def from_pretrained(cls, path: str | Path, map_location: str | torch.device = "cpu"):
        """Load a directory written by :meth:`save_pretrained`, its weights file, or the name of
        a bundled checkpoint; the model is returned in ``eval()`` mode on ``map_location``."""
        p = resolve_checkpoint(path)
        directory = p if p.is_dir() else p.parent
        weights = p / WEIGHTS_NAME if p.is_dir() else p
        if not (directory / CONFIG_NAME).exists():
            raise CheckpointError(f"{directory / CONFIG_NAME}: missing config")
        if not weights.exists():
            raise CheckpointError(f"{weights}: missing weights file")
        config = cls.config_from_pretrained(directory)  # bounded by the config's validate()
        check_size_against_weights(config, read_shapes(weights), str(weights))
        state = {k: v.float() if v.is_floating_point() else v for k, v in read_state(weights).items()}
        check_finite(state, str(weights))
        model = cls(config)  # type: ignore[call-arg]
        check_state_dict(state, model.state_dict(), str(weights))
        model.load_state_dict(state, strict=True)
        return model.to(map_location).eval()
