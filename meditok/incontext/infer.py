"""Inference: prompts, tiling and the prediction of a whole image's label image.

A model sees 2x2 canvases of ``cell``-px images. A large image (a 565x584 fundus photograph) is
processed as overlapping tiles at the source's scale (squashing it to 64 px would leave a
pooled vessel IoU ceiling of 0.19, notes §2.4); each tile gets its own prompt pair, chosen by one
of the prompt strategies (MVG §3.3: "selecting the prompt image from a location that closely
matches the task image"):

* ``position`` — one prompt image per query (random for 2-D sets; for volumes the slice at the
  proportional position ``floor(n · N_TR / N_TE)`` of a training volume, §3.3); each tile's
  prompt is the window at the same relative position, moved to the nearest window showing
  foreground if it shows none (an all-background prompt carries no colour);
* ``random`` — a random foreground window of a random prompt image of the same dataset;
* ``nearest`` — the foreground window of any prompt image whose MedITok embedding
  (``meditok-small``, :meth:`MedITok.embed`) is nearest (cosine) to the query tile's.

Predictions of overlapping tiles are averaged in RGB, brought back to the query's own size
(bilinear) and decoded by the nearest prompt colour.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from meditok.errors import CheckpointError, InvalidInputError
from meditok.incontext import colour as colouring
from meditok.incontext.episodes import canvas, resize_image, resize_mask
from meditok.incontext.sources import Item

STRATEGIES = ("position", "random", "nearest")


class Predictor(Protocol):
    def predict(self, canvas: torch.Tensor, mode: str = "ar", task: str | None = None) -> torch.Tensor: ...


@dataclass
class Method:
    """A named way to fill the Y cell: ``fn(canvases [B,3,2c,2c], task) -> [B,3,c,c]``."""

    name: str
    fn: Callable[[torch.Tensor, str], torch.Tensor]
    batch_size: int = 32
    #: The method paints every class white whatever the prompt's colours (a binary specialist).
    white: bool = False


def as_method(name: str, model: Any, mode: str = "ar", batch_size: int = 32) -> Method:
    """Wrap an MVG / U-Net / baseline (``predict(canvas, mode)``) or a TokenMVG (``task``)."""
    from meditok.incontext.baselines import UNet
    from meditok.incontext.tokens import TokenMVG

    if isinstance(model, TokenMVG):
        return Method(name, lambda x, task: model.predict(x, task=task), batch_size)
    return Method(name, lambda x, task: model.predict(x, mode=mode, task=task), batch_size,
                  white=isinstance(model, UNet))


def cell_size(model: Any) -> int:
    """Pixels per canvas cell of an in-context model (MVG, U-Net, token GPT, baseline; DDP-wrapped too)."""
    m = getattr(model, "module", model)
    return m.cell if hasattr(m, "cell") else m.config.cell


def load_model(spec: str | Path, device: str = "cpu") -> Any:
    """An in-context model from a directory or bundled name (MVG, token GPT or U-Net)."""
    from meditok.incontext.baselines import UNet
    from meditok.incontext.model import MVG
    from meditok.incontext.tokens import TokenMVG
    from meditok.utils.hub import resolve_checkpoint

    path = resolve_checkpoint(spec)
    directory = path if path.is_dir() else path.parent
    try:
        kind = json.loads((directory / "config.json").read_text()).get("model_type")
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{directory / 'config.json'}: cannot read config ({exc})") from None
    if kind == MVG.model_type:
        return MVG.from_pretrained(path, device)
    if kind == UNet.model_type:
        return UNet.from_pretrained(path, device)
    if kind == "meditok-gpt":
        return TokenMVG.load(path)
    raise CheckpointError(f"{directory}: not an in-context model (model_type {kind!r})")


# ----------------------------------------------------------------------------- prompt windows
def tile_starts(n: int, cell: int, stride: int) -> list[int]:
    """Window starts covering ``[0, n)`` with windows of ``cell`` (the last flush with the end)."""
    if n <= cell:
        return [0]
    starts = list(range(0, n - cell + 1, stride))
    if starts[-1] != n - cell:
        starts.append(n - cell)
    return starts


@dataclass
class Scaled:
    """An item at model scale, padded to at least one cell."""

    image: np.ndarray
    labels: dict[str, np.ndarray]
    shape: tuple[int, int]          #: scaled size before padding


def scaled(item: Item, scale: float, cell: int) -> Scaled:
    h, w = item.image.shape[:2]
    size = (max(1, int(round(h * scale))), max(1, int(round(w * scale))))
    img = resize_image(item.image, size) if scale != 1.0 else item.image
    labs = {k: (resize_mask(v, size) if scale != 1.0 else v) for k, v in item.labels.items()}
    ph, pw = max(size[0], cell), max(size[1], cell)
    return Scaled(_pad(img, ph, pw), {k: _pad(v, ph, pw) for k, v in labs.items()}, size)


def _pad(a: np.ndarray, h: int, w: int) -> np.ndarray:
    if a.shape[:2] == (h, w):
        return a
    out = np.zeros((h, w) + a.shape[2:], a.dtype)
    out[:a.shape[0], :a.shape[1]] = a
    return out


@dataclass
class PromptBank:
    """Candidate prompt windows (grid, stride ``cell/2``) of the prompt items at model scale."""

    items: list[Scaled]
    cell: int
    min_fg: float = 0.005
    windows: list[tuple[int, int, int]] = field(default_factory=list)   # (item, y, x)
    fg: list[float] = field(default_factory=list)
    _emb: torch.Tensor | None = None

    @classmethod
    def build(cls, items: list[Item], scale: float, cell: int, min_fg: float = 0.005) -> PromptBank:
        bank = cls([scaled(it, scale, cell) for it in items], cell, min_fg)
        for k, s in enumerate(bank.items):
            h, w = s.image.shape[:2]
            for y in tile_starts(h, cell, cell // 2):
                for x in tile_starts(w, cell, cell // 2):
                    f = max((float(v[y:y + cell, x:x + cell].mean()) for v in s.labels.values()), default=0.0)
                    bank.windows.append((k, y, x))
                    bank.fg.append(f)
        return bank

    def crop(self, w: tuple[int, int, int]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        k, y, x = w
        s, c = self.items[k], self.cell
        return s.image[y:y + c, x:x + c], {n: v[y:y + c, x:x + c] for n, v in s.labels.items()}

    def with_fg(self, item: int | None = None) -> list[int]:
        idx = [i for i, f in enumerate(self.fg) if f >= self.min_fg and (item is None or self.windows[i][0] == item)]
        return idx or [i for i in range(len(self.windows)) if item is None or self.windows[i][0] == item]

    def position(self, item: int, ry: float, rx: float) -> tuple[int, int, int]:
        """The window of ``item`` nearest to relative position (ry, rx) that shows foreground."""
        s = self.items[item]
        h, w = s.shape
        ty, tx = ry * h, rx * w
        best = min(self.with_fg(item), key=lambda i: (self.windows[i][1] - ty) ** 2 + (self.windows[i][2] - tx) ** 2)
        return self.windows[best]

    def random(self, rng: np.random.Generator) -> tuple[int, int, int]:
        idx = self.with_fg()
        return self.windows[idx[int(rng.integers(len(idx)))]]

    def nearest(self, query_emb: torch.Tensor, embedder: Embedder) -> list[tuple[int, int, int]]:
        idx = self.with_fg()
        if self._emb is None:
            self._emb = embedder([self.crop(self.windows[i])[0] for i in idx])
            self._idx = idx
        sims = query_emb @ self._emb.T
        return [self.windows[self._idx[int(j)]] for j in sims.argmax(1)]


class Embedder:
    """MedITok embeddings of ``cell``-px crops (``[0, 1]`` RGB) for nearest-prompt selection."""

    def __init__(self, spec: str = "meditok-small", batch_size: int = 64):
        from meditok.tokenizer.hub import load_tokenizer

        self.model = load_tokenizer(spec)
        self.size = self.model.config.model.image_size
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, crops: list[np.ndarray]) -> torch.Tensor:
        out = []
        for i in range(0, len(crops), self.batch_size):
            x = torch.stack([torch.from_numpy(resize_image(c, (self.size, self.size))).permute(2, 0, 1)
                             for c in crops[i:i + self.batch_size]]) * 2 - 1
            out.append(self.model.embed(x))
        return torch.cat(out) if out else torch.zeros(0, self.model.config.model.embed_dim)


# ----------------------------------------------------------------------------- segmentation
@dataclass
class TiledQuery:
    """The canvases of every tile of one query image, built once and shared by all methods."""

    canvases: torch.Tensor          #: [T, 3, 2c, 2c] (Y cell empty)
    starts: list[tuple[int, int]]
    padded: tuple[int, int]
    shape: tuple[int, int]          #: scaled size
    native: tuple[int, int]


def tile_query(image: np.ndarray, scale: float, cell: int, bank: PromptBank, colours: dict[str, np.ndarray],
               strategy: str = "position", prompt_item: int = 0, rng: np.random.Generator | None = None,
               embedder: Embedder | None = None, stride: int | None = None) -> TiledQuery:
    """Tile a query image (``H x W x 3`` in [0, 1], native size) and give each tile a prompt."""
    if strategy not in STRATEGIES:
        raise InvalidInputError(f"prompt strategy must be one of {STRATEGIES}, got {strategy!r}")
    rng = rng or np.random.default_rng(0)
    q = scaled(Item(image, "query"), scale, cell)
    h, w = q.image.shape[:2]
    starts = [(y, x) for y in tile_starts(h, cell, stride or cell * 3 // 4)
              for x in tile_starts(w, cell, stride or cell * 3 // 4)]
    tiles = [q.image[y:y + cell, x:x + cell] for y, x in starts]
    if strategy == "nearest":
        if embedder is None:
            raise InvalidInputError("the nearest strategy needs an Embedder")
        picks = bank.nearest(embedder(tiles), embedder)
    elif strategy == "random":
        picks = [bank.random(rng) for _ in starts]
    else:
        sh, sw = q.shape
        picks = [bank.position(prompt_item, y / max(sh, 1), x / max(sw, 1)) for y, x in starts]
    out = []
    blank = np.zeros((cell, cell, 3), np.float32)
    for tile, pick in zip(tiles, picks):
        pimg, plab = bank.crop(pick)
        out.append(canvas(np.stack([pimg, colouring.paint(plab, colours, (cell, cell)), tile, blank])))
    return TiledQuery(torch.stack(out), starts, (h, w), q.shape, image.shape[:2])


def run_tiles(method: Method, tq: TiledQuery, task: str = "segmentation") -> np.ndarray:
    """Predict every tile, average overlaps → RGB label image at the query's native size."""
    c = tq.canvases.shape[-1] // 2
    acc = np.zeros((*tq.padded, 3), np.float32)
    cnt = np.zeros(tq.padded, np.float32)
    for i in range(0, len(tq.canvases), method.batch_size):
        pred = method.fn(tq.canvases[i:i + method.batch_size], task)
        pred = ((pred.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()
        for (y, x), p in zip(tq.starts[i:i + method.batch_size], pred):
            acc[y:y + c, x:x + c] += p
            cnt[y:y + c, x:x + c] += 1
    avg = acc / np.maximum(cnt, 1)[..., None]
    avg = avg[:tq.shape[0], :tq.shape[1]]
    return resize_image(avg, tq.native) if avg.shape[:2] != tuple(tq.native) else avg


def proportional_index(n: int, n_test: int, n_train: int) -> int:
    """MVG §3.3: the prompt for slice ``n`` of a test volume is slice ``floor(n·N_TR/N_TE)``."""
    return int(np.floor(n * n_train / max(n_test, 1)))


def proportional_prompt(query: Item, prompts: list[Item], rng: np.random.Generator) -> int:
    """Index into ``prompts`` of the volume-matched prompt slice: a random training volume, its
    slice at the proportional position — or, when that slice is not among ``prompts`` (lesions
    are labelled on a few slices only), the labelled slice nearest to it."""
    cases = sorted({p.case for p in prompts})
    case = cases[int(rng.integers(len(cases)))]
    cand = [i for i, p in enumerate(prompts) if p.case == case]
    target = proportional_index(query.index, query.n_slices, prompts[cand[0]].n_slices)
    return min(cand, key=lambda i: abs(prompts[i].index - target))
