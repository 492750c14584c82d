"""Checkpoint I/O: ``save_pretrained`` / ``from_pretrained`` and import of the official release.

A pretrained directory follows the Hugging Face hub layout::

    config.json          MedITokConfig (architecture + preprocessing contract + provenance)
    model.safetensors    weights (names identical to the official state dict)
    README.md            model card
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from meditok.config import MedITokConfig, preset
from meditok.errors import CheckpointError
from meditok.utils.io import atomic_path, atomic_write_text

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: Checkpoints shipped inside the package (``meditok/weights/<name>/``).
BUNDLED_DIR = Path(__file__).resolve().parents[1] / "weights"
DEFAULT_BUNDLED = "meditok-small"


def bundled_checkpoint(name: str = DEFAULT_BUNDLED) -> Path:
    """Directory of a checkpoint shipped with the package (the README's default model)."""
    path = BUNDLED_DIR / name
    if not (path / CONFIG_NAME).exists():
        available = sorted(p.name for p in BUNDLED_DIR.glob("*") if (p / CONFIG_NAME).exists())
        raise CheckpointError(f"no bundled checkpoint named {name!r} (available: {available})")
    return path


def save_pretrained(model: torch.nn.Module, directory: str | Path,
                    dtype: torch.dtype | None = None) -> Path:
    """Write config, weights and a model card to ``directory`` (created if needed).

    ``dtype`` (e.g. ``torch.float16``) stores floating tensors in a smaller type; they are
    cast back to fp32 on load.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "library": "meditok"})
    config: MedITokConfig = model.config
    atomic_write_text(directory / CONFIG_NAME, json.dumps(config.to_dict(), indent=2))
    if not (directory / "README.md").exists():
        atomic_write_text(directory / "README.md", _model_card(config))
    return directory


def _model_card(config: MedITokConfig) -> str:
    m, p = config.model, config.preprocess
    lines = [
        "---", "library_name: meditok", "tags: [medical-imaging, image-tokenizer, vq]", "---", "",
        f"# MedITok ({config.preset})", "",
        f"Grid {m.grid_size()}x{m.grid_size()} at {m.image_size}px, {m.num_codebooks} codebooks of "
        f"{m.codebook_size}x{m.code_dim}.", "",
        f"Input: RGB float in [{p.input_range[0]}, {p.input_range[1]}], {p.image_size}px "
        f"(resize policy '{p.resize}'), CT window {list(p.ct_window)} HU.", "",
        "```python", "from meditok import MedITok", "model = MedITok.from_pretrained('.')",
        "tokens = model.tokenize(images)  # [B, K, h, w]", "```",
    ]
    for key, value in config.meta.items():
        lines.append(f"- **{key}**: {value}")
    return "\n".join(lines) + "\n"


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, EOFError, OSError, ValueError,
            pickle.UnpicklingError) as exc:
        reason = str(exc).splitlines()[0][:200]
        raise CheckpointError(f"{path}: cannot read weights (not a torch/safetensors "
                              f"checkpoint, or not loadable with weights_only=True: {reason})") from exc
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, got {type(obj).__name__}")
    if "trainer" in obj:  # the release's "raw" training checkpoint: MedITok keys under core.
        inner = obj["trainer"].get("model", {}) if isinstance(obj["trainer"], Mapping) else {}
        obj = {k[len("core."):]: v for k, v in inner.items() if k.startswith("core.")}
    return dict(obj)


def load_pretrained(path: str | Path, map_location: str | torch.device = "cpu"):
    """Load a pretrained directory (or a weights file with ``config.json`` beside it)."""
    from meditok.model.tokenizer import MedITok

    path = Path(path)
    if not path.exists() and (BUNDLED_DIR / str(path) / CONFIG_NAME).exists():
        path = BUNDLED_DIR / str(path)  # a bundled name such as "meditok-small"
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint directory or file")
    directory = path if path.is_dir() else path.parent
    weights = path / WEIGHTS_NAME if path.is_dir() else path
    if not (directory / CONFIG_NAME).exists():
        raise CheckpointError(
            f"{directory / CONFIG_NAME}: missing config; for the official .pth release run "
            "`meditok convert-official FILE OUT_DIR` first")
    if not weights.exists():
        raise CheckpointError(f"{weights}: missing weights file")
    config = MedITokConfig.load(directory / CONFIG_NAME)
    model = MedITok(config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in _read_state(weights).items()}
    check_state_dict(state, model.state_dict(), str(weights))
    model.load_state_dict(state, strict=True)
    return model.to(map_location).eval()


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


def convert_official(src: str | Path, out_dir: str | Path, dtype: torch.dtype | None = None,
                     preset_name: str = "large") -> Path:
    """Import the released ``meditok_simple_v1.pth`` (plain state dict) into our format.

    The file is read with ``weights_only=True``; every name and shape is checked against the
    ``preset_name`` architecture (the release is ``large``) before anything is written.
    """
    from meditok.model.tokenizer import MedITok

    src = Path(src)
    if not src.is_file():
        raise CheckpointError(f"{src}: file not found")
    state = _read_state(src)
    config = preset(preset_name)
    with torch.device("meta"):
        reference = MedITok(config).state_dict()
    check_state_dict(state, reference, str(src))
    config.meta.update({"source": f"official release {src.name}", "converted_by": "meditok convert-official"})
    model = MedITok(config)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return save_pretrained(model, out_dir, dtype=dtype)
