"""In-context colouring of segmentation labels (MVG §3.2): a label map becomes an RGB label image.

Three schemes:

* ``binary`` — one class at a time, white on black; a multi-class image needs one pass per class.
* ``predefined`` — a fixed colour per (dataset, class). The paper gives class ``n`` of dataset
  ``k`` the value ``Σ_{i<k} i·N_i + n`` (unique ids; the ``i·`` factor looks like a typo for
  ``Σ N_i``, either way unique); we index a fixed palette with the running class number, so the
  same semantics in two datasets get different colours, as in the paper.
* ``random`` — "we build a set of colors and randomly sample colors for different semantics in
  one iteration, but the same semantic in the prompt label and task label share the same color":
  colours are drawn without replacement from :data:`COLOUR_SET` per sample and shared between
  prompt and query (the paper's best, Table 4).

Background is black. Images are float ``H x W x 3`` in ``[0, 1]``. A predicted label image is
decoded by the nearest colour among background and the prompt's colours.
"""
from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence

import numpy as np

SCHEMES = ("binary", "predefined", "random")
BACKGROUND = np.zeros(3, np.float32)
WHITE = np.ones(3, np.float32)


def _palette(n: int, seed_hue: float = 0.0) -> np.ndarray:
    """``n`` well separated bright colours (golden-ratio hues, alternating value/saturation),
    none close to black: every channel vector has max ≥ 0.6."""
    out = []
    for i in range(n):
        h = (seed_hue + i * 0.618033988749895) % 1.0
        s = (0.95, 0.6, 0.8)[i % 3]
        v = (1.0, 0.75, 0.9)[(i // 3) % 3]
        out.append(colorsys.hsv_to_rgb(h, s, v))
    return np.clip(np.asarray(out, np.float32), 0.0, 1.0)


#: The colour set random colouring samples from (white first: what a user's binary mask gets).
COLOUR_SET: np.ndarray = np.concatenate([WHITE[None], _palette(15)], 0)
#: Palette of the pre-defined scheme (indexed by the global class number).
PREDEFINED_PALETTE: np.ndarray = _palette(64, seed_hue=0.31)


def predefined_colours(class_keys: Sequence[str]) -> dict[str, np.ndarray]:
    """``{"dataset/class": colour}`` for a global, ordered list of every class of every dataset."""
    return {k: PREDEFINED_PALETTE[i % len(PREDEFINED_PALETTE)] for i, k in enumerate(class_keys)}


def assign_colours(classes: Sequence[str], scheme: str, rng: np.random.Generator,
                   predefined: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Colours of one sample's classes (shared by its prompt label and task label).

    ``binary`` takes exactly one class. ``predefined`` looks each class up in ``predefined``
    (keys as given in ``classes``). ``random`` draws distinct colours from :data:`COLOUR_SET`.
    """
    if scheme == "binary":
        if len(classes) != 1:
            raise ValueError(f"binary colouring takes one class per sample, got {len(classes)}")
        return {classes[0]: WHITE.copy()}
    if scheme == "predefined":
        if predefined is None:
            raise ValueError("predefined colouring needs the global class table")
        missing = [c for c in classes if c not in predefined]
        if missing:
            raise ValueError(f"no pre-defined colour for classes {missing}")
        return {c: np.asarray(predefined[c], np.float32) for c in classes}
    if scheme == "random":
        if len(classes) > len(COLOUR_SET):
            raise ValueError(f"{len(classes)} classes but only {len(COLOUR_SET)} colours in the set")
        idx = rng.choice(len(COLOUR_SET), size=len(classes), replace=False)
        return {c: COLOUR_SET[i].copy() for c, i in zip(classes, idx)}
    raise ValueError(f"unknown colour scheme {scheme!r}; choose one of {SCHEMES}")


def paint(labels: Mapping[str, np.ndarray], colours: Mapping[str, np.ndarray],
          shape: tuple[int, int] | None = None) -> np.ndarray:
    """RGB label image from ``{class: bool mask}`` and ``{class: colour}`` (classes without a
    colour stay background; later classes paint over earlier ones where masks overlap)."""
    if shape is None:
        if not labels:
            raise ValueError("paint needs a shape when there are no labels")
        shape = next(iter(labels.values())).shape[:2]
    out = np.zeros((*shape, 3), np.float32)
    for name, mask in labels.items():
        if name in colours:
            out[np.asarray(mask, bool)] = colours[name]
    return out


def decode(pred: np.ndarray, colours: Mapping[str, np.ndarray]) -> np.ndarray:
    """Nearest colour among background and ``colours`` → int map (0 = background, ``i + 1`` =
    the ``i``-th class of ``colours`` in its order). ``pred``: ``H x W x 3`` in ``[0, 1]``."""
    pal = np.stack([BACKGROUND] + [np.asarray(c, np.float32) for c in colours.values()])
    d = ((np.asarray(pred, np.float32)[..., None, :] - pal) ** 2).sum(-1)
    return d.argmin(-1)


def colours_from_label_image(label: np.ndarray, max_colours: int = len(COLOUR_SET),
                             min_pixels: int = 1) -> dict[str, np.ndarray]:
    """The distinct non-black colours of a given RGB label image in ``[0, 1]`` (a user's prompt
    label), as ``{"c0": colour, …}`` sorted by frequency."""
    flat = np.round(np.asarray(label, np.float32).reshape(-1, 3) * 255).astype(np.int32)
    keys, counts = np.unique(flat, axis=0, return_counts=True)
    order = np.argsort(-counts)
    out = {}
    for i in order:
        if keys[i].max() == 0 or counts[i] < min_pixels:
            continue
        out[f"c{len(out)}"] = keys[i].astype(np.float32) / 255.0
        if len(out) >= max_colours:
            break
    return out
