"""Tokenizer checkpoints: resolving what a user typed, the model card, the official release.

:func:`load_tokenizer` is the one place a checkpoint string from the command line (or a
benchmark) becomes a model: a pretrained directory or weights file, the name of a bundled
checkpoint (``meditok-small``), nothing (the bundled default) or ``preset:NAME`` (random
weights, for smoke runs). Saving/loading itself is :class:`meditok.utils.hub.PretrainedMixin`.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from meditok.errors import CheckpointError
from meditok.tokenizer.config import MedITokConfig, preset
from meditok.tokenizer.model import MedITok
from meditok.utils.device import resolve_device
from meditok.utils.hub import BUNDLED_DIR, CONFIG_NAME, bundled_names, check_state_dict, read_state

#: The checkpoint shipped inside the package and used when none is given.
DEFAULT_BUNDLED = "meditok-small"
#: ``CHECKPOINT`` values of this form build an untrained model (smoke runs, tests).
PRESET_PREFIX = "preset:"


def bundled_checkpoint(name: str = DEFAULT_BUNDLED) -> Path:
    """Directory of a checkpoint shipped with the package (the README's default model)."""
    path = BUNDLED_DIR / name
    if not (path / CONFIG_NAME).exists():
        raise CheckpointError(f"no bundled checkpoint named {name!r} (available: {bundled_names()})")
    return path


def load_tokenizer(spec: str | Path | None = None, device: str | torch.device = "cpu") -> MedITok:
    """The model a checkpoint string names, in ``eval()`` mode with gradients off, on ``device``.

    ``spec``: a pretrained directory or weights file, a bundled name (``meditok-small``),
    ``None`` (the bundled default) or ``preset:NAME`` (randomly initialised).
    """
    dev = resolve_device(device)
    text = str(spec) if spec is not None else DEFAULT_BUNDLED
    if text.startswith(PRESET_PREFIX):
        model = MedITok.from_preset(text[len(PRESET_PREFIX):])
    else:
        model = MedITok.from_pretrained(text)
    model.eval().requires_grad_(False)
    return model.to(dev)


def checkpoint_label(spec: str | Path | None) -> str:
    """Short name of a checkpoint for tables and output folders."""
    text = str(spec) if spec is not None else DEFAULT_BUNDLED
    if text.startswith(PRESET_PREFIX):
        return "preset-" + text[len(PRESET_PREFIX):]
    path = Path(text)
    return path.resolve().name if path.exists() else text


def model_card(config: MedITokConfig) -> str:
    """The README written next to a saved tokenizer."""
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


def _official_state(path: Path) -> dict[str, torch.Tensor]:
    obj = read_state(path)
    if "trainer" in obj:  # the release's "raw" training checkpoint: MedITok keys under core.
        inner = obj["trainer"].get("model", {}) if isinstance(obj["trainer"], Mapping) else {}
        obj = {k[len("core."):]: v for k, v in inner.items() if k.startswith("core.")}
    return obj


def convert_official(src: str | Path, out_dir: str | Path, dtype: torch.dtype | None = None,
                     preset_name: str = "large") -> Path:
    """Import the released ``meditok_simple_v1.pth`` (plain state dict) into our format.

    The file is read with ``weights_only=True``; every name and shape is checked against the
    ``preset_name`` architecture (the release is ``large``) before anything is written.
    """
    src = Path(src)
    if not src.is_file():
        raise CheckpointError(f"{src}: file not found")
    state = _official_state(src)
    config = preset(preset_name)
    with torch.device("meta"):
        reference = MedITok(config).state_dict()
    check_state_dict(state, reference, str(src))
    config.meta.update({"source": f"official release {src.name}", "converted_by": "meditok convert-official"})
    model = MedITok(config)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.save_pretrained(out_dir, dtype=dtype)
