"""Task unification (MVG §3.1–3.3): every task becomes a 2x2 canvas of same-size images.

An *episode* is ``[P_x, P_y, X, Y]`` (prompt image, prompt label, task image, task label),
each ``cell x cell x 3`` in ``[0, 1]``; :func:`canvas` assembles the model input
``[3, 2c, 2c]`` in ``[-1, 1]`` (P_x upper left, P_y upper right, X lower left, Y lower right).

* **segmentation**: independent random crops of two items of the same source at the source's
  scale (×0.8–1.25 jitter), the prompt crop holding foreground; the labels are coloured with one
  scheme (:mod:`meditok.incontext.colour`), colours shared between prompt and query; classes of
  the query that the prompt crop does not show are background (nothing could tell their colour).
* **denoising**: ``(noisy, clean)`` pairs of two slices at one shared, random dose / noise level,
  so the prompt tells the model how noisy the input is.
* **inpainting**: ``(voided, clean)`` pairs, boxes drawn independently.
* **synthesis**: ``(source contrast, target contrast)`` of paired items (tests only: no truly
  paired data exists here).

The training schedule (§4.1): segmentation episodes are always AR; the others are MIM with
probability ``mim_share`` (0.9) and AR otherwise; the segmentation family draws half of the
episodes, the other tasks share the rest (``segmentation_share``), each task by its weight.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from meditok.errors import InvalidInputError
from meditok.incontext import colour as colouring
from meditok.incontext.degrade import NoiseBank, ldct_image_noise, rician, void_boxes
from meditok.incontext.sources import CT_WINDOW, Item, Source
from meditok.utils.config import Config

#: The class id of each task for the token GPT (``GPT`` class conditioning).
TASK_IDS = {"segmentation": 0, "denoising": 1, "inpainting": 2, "synthesis": 3}
AUGMENTS = ("dihedral", "flip", "none")


@dataclass
class TaskSpec(Config):
    """One task of the mixture: which source, which task, how often, how it is corrupted."""

    name: str = ""
    source: str = ""
    task: str = "segmentation"
    weight: float = 1.0
    #: Share of this task's episodes trained with MIM (0 for segmentation, 0.9 otherwise, §4.1).
    mim_share: float | None = None
    augment: str = "flip"
    #: Denoising: CT photons per ray (log-uniform range), MR Rician sigma (uniform range).
    i0_range: tuple[float, float] = (3e4, 3e5)
    sigma_range: tuple[float, float] = (0.01, 0.05)
    #: CT noise: ``projection`` (Poisson in the sinogram, precomputed bank) or ``image``.
    ct_noise: str = "projection"

    def validate(self) -> None:
        if self.task not in TASK_IDS:
            raise ValueError(f"task {self.name}: unknown task {self.task!r}; choose from {sorted(TASK_IDS)}")
        if self.augment not in AUGMENTS:
            raise ValueError(f"task {self.name}: augment must be one of {AUGMENTS}")
        if self.weight < 0:
            raise ValueError(f"task {self.name}: weight must be >= 0")
        if self.ct_noise not in ("projection", "image"):
            raise ValueError(f"task {self.name}: ct_noise must be projection or image")

    @property
    def mim(self) -> float:
        return (0.0 if self.task == "segmentation" else 0.9) if self.mim_share is None else self.mim_share


@dataclass
class Episode:
    """One training / evaluation sample."""

    cells: np.ndarray                        #: [4, c, c, 3] float32 in [0, 1]
    task: str
    name: str
    mode: str = "ar"
    colours: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- geometry
def resize_image(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``H x W x C`` float → ``size`` (bilinear, antialiased when shrinking)."""
    if a.shape[:2] == tuple(size):
        return np.ascontiguousarray(a, np.float32)
    t = torch.from_numpy(np.ascontiguousarray(a, np.float32)).permute(2, 0, 1)[None]
    shrink = size[0] < a.shape[0] or size[1] < a.shape[1]
    out = F.interpolate(t, size=size, mode="bilinear", antialias=shrink, align_corners=False)
    return out[0].permute(1, 2, 0).numpy()


def resize_mask(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bool mask → ``size`` (area average ≥ 0.5 when shrinking, nearest when enlarging)."""
    if m.shape[:2] == tuple(size):
        return np.asarray(m, bool)
    t = torch.from_numpy(np.asarray(m, np.float32))[None, None]
    if size[0] < m.shape[0] or size[1] < m.shape[1]:
        return F.interpolate(t, size=size, mode="area")[0, 0].numpy() >= 0.5
    return F.interpolate(t, size=size, mode="nearest")[0, 0].numpy() >= 0.5


def window_crop(a: np.ndarray, y: int, x: int, s: int, fill: float = 0.0) -> np.ndarray:
    """``s x s`` window at ``(y, x)`` (may extend past the borders: padded with ``fill``)."""
    h, w = a.shape[:2]
    out = np.full((s, s) + a.shape[2:], fill, a.dtype)
    y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + s, h), min(x + s, w)
    if y1 > y0 and x1 > x0:
        out[y0 - y:y1 - y, x0 - x:x1 - x] = a[y0:y1, x0:x1]
    return out


def crop_item(item: Item, y: int, x: int, s: int, cell: int) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Native window → (image, labels, region) at ``cell x cell``."""
    img = resize_image(window_crop(item.image, y, x, s), (cell, cell))
    labels = {k: resize_mask(window_crop(v, y, x, s, False), (cell, cell)) for k, v in item.labels.items()}
    reg = item.region if item.region is not None else np.ones(item.image.shape[:2], bool)
    return img, labels, resize_mask(window_crop(reg, y, x, s, False), (cell, cell))


def random_window(item: Item, s: int, rng: np.random.Generator, min_region: float = 0.75,
                  min_fg: float = 0.0, tries: int = 20) -> tuple[int, int]:
    """A random ``s``-px window inside the image (or centred if the image is smaller) whose
    region (fundus FOV) covers ``min_region`` and foreground covers ``min_fg`` if possible."""
    h, w = item.image.shape[:2]
    best, best_fg = None, -1.0
    for _ in range(tries):
        y = int(rng.integers(0, h - s + 1)) if h > s else (h - s) // 2
        x = int(rng.integers(0, w - s + 1)) if w > s else (w - s) // 2
        ok = item.region is None or window_crop(item.region, y, x, s, False).mean() >= min_region
        fg = max((window_crop(v, y, x, s, False).mean() for v in item.labels.values()), default=0.0)
        if ok and fg >= min_fg:
            return y, x
        if ok and fg > best_fg:
            best, best_fg = (y, x), fg
    return best if best is not None else (y, x)


def dihedral(arrays: list[np.ndarray], k: int, flip: bool) -> list[np.ndarray]:
    out = [np.rot90(a, k) for a in arrays]
    return [np.ascontiguousarray(a[:, ::-1] if flip else a) for a in out]


def canvas(cells: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``[4, c, c, 3]`` in [0, 1] → model input ``[3, 2c, 2c]`` in [-1, 1]."""
    t = torch.as_tensor(np.asarray(cells, np.float32)) * 2.0 - 1.0
    top = torch.cat([t[0], t[1]], 1)
    bottom = torch.cat([t[2], t[3]], 1)
    return torch.cat([top, bottom], 0).permute(2, 0, 1).contiguous()


def cells_of(canvas_t: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`canvas`: ``[3, 2c, 2c]`` → ``[4, c, c, 3]`` in [0, 1]."""
    x = ((canvas_t.float() + 1.0) / 2.0).clamp(0, 1).permute(1, 2, 0).numpy()
    c = x.shape[0] // 2
    return np.stack([x[:c, :c], x[:c, c:], x[c:, :c], x[c:, c:]])


# ----------------------------------------------------------------------------- the sampler
class EpisodeSampler:
    """Draws episodes of a task mixture from loaded sources (see the module docstring)."""

    def __init__(self, sources: dict[str, Source], tasks: list[TaskSpec], cell: int, scheme: str = "random",
                 segmentation_share: float = 0.5, noise_seed: int = 0, split: str = "train"):
        if scheme not in colouring.SCHEMES:
            raise InvalidInputError(f"unknown colour scheme {scheme!r}")
        self.sources, self.cell, self.scheme, self.split = sources, cell, scheme, split
        self.tasks = [t for t in tasks if t.weight > 0]
        for t in self.tasks:
            if t.source not in sources:
                raise InvalidInputError(f"task {t.name}: source {t.source!r} not loaded")
            if not self._items(t):
                raise InvalidInputError(f"task {t.name}: source {t.source} has no {split} items")
        self.probs = self._probs(segmentation_share)
        classes = []
        for t in self.tasks:
            classes += [f"{t.source}/{c}" for c in sources[t.source].classes]
        self.predefined = colouring.predefined_colours(classes)
        self._slices: dict[str, list[np.ndarray]] = {}
        self._banks: dict[str, NoiseBank] = {}
        self.noise_seed = noise_seed

    def _items(self, t: TaskSpec) -> list[Item]:
        src = self.sources[t.source]
        return src.train if self.split == "train" else src.test

    def _probs(self, share: float) -> np.ndarray:
        seg = np.array([t.task == "segmentation" for t in self.tasks])
        w = np.array([t.weight for t in self.tasks], np.float64)
        if seg.all() or not seg.any():
            return w / w.sum()
        p = np.where(seg, share * w / w[seg].sum(), (1 - share) * w / w[~seg].sum())
        return p / p.sum()

    def shares(self) -> dict[str, float]:
        """Draw probability of each task."""
        return {t.name: round(float(p), 4) for t, p in zip(self.tasks, self.probs)}

    # ------------------------------------------------------------------ cached slices
    def slices(self, t: TaskSpec) -> list[np.ndarray]:
        """Every item of a slice source as ``cell x cell x 3`` (whole slice, squashed)."""
        key = f"{t.source}:{self.split}"
        if key not in self._slices:
            self._slices[key] = [resize_image(it.image, (self.cell, self.cell)) for it in self._items(t)]
        return self._slices[key]

    def hu_slices(self, t: TaskSpec) -> list[np.ndarray]:
        key = f"{t.source}:{self.split}:hu"
        if key not in self._slices:
            self._slices[key] = [resize_image(it.hu[..., None], (self.cell, self.cell))[..., 0]
                                 for it in self._items(t)]
        return self._slices[key]

    def bank(self, t: TaskSpec) -> NoiseBank:
        key = f"{t.source}:{self.split}"
        if key not in self._banks:
            items = self._items(t)
            mm = [it.pixel_mm * max(it.hu.shape) / self.cell for it in items]
            self._banks[key] = NoiseBank(self.hu_slices(t), mm, seed=self.noise_seed)
        return self._banks[key]

    # ------------------------------------------------------------------ episodes
    def sample(self, rng: np.random.Generator, task: str | None = None) -> Episode:
        """One episode of a task drawn by the mixture weights (or of the named task)."""
        t = self.tasks[int(rng.choice(len(self.tasks), p=self.probs))] if task is None else \
            next(x for x in self.tasks if x.name == task)
        mode = "mim" if rng.random() < t.mim else "ar"
        items = self._items(t)
        qi = int(rng.integers(len(items)))
        others = [i for i in range(len(items)) if i != qi] or [qi]
        pi = int(others[int(rng.integers(len(others)))])
        if t.task == "segmentation":
            ep = self.segmentation(t, items[pi], items[qi], rng)
        else:
            ep = self.image_task(t, pi, qi, rng)
        ep.mode = mode
        return ep

    def segmentation(self, t: TaskSpec, prompt: Item, query: Item, rng: np.random.Generator,
                     windows: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None) -> Episode:
        """A segmentation episode from two items (random windows unless ``windows`` gives
        ``((y, x, side) prompt, (y, x, side) query)``)."""
        src, c = self.sources[t.source], self.cell
        if windows is None:
            s = max(8, int(round(c / (src.scale * float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))))))
            wp = (*random_window(prompt, s, rng, min_fg=0.01), s)
            wq = (*random_window(query, s, rng), s)
        else:
            wp, wq = windows
        pimg, plab, _ = crop_item(prompt, wp[0], wp[1], wp[2], c)
        qimg, qlab, qreg = crop_item(query, wq[0], wq[1], wq[2], c)
        if t.augment != "none":
            kp, kq = (int(rng.integers(4)), int(rng.integers(4))) if t.augment == "dihedral" else (0, 0)
            fp, fq = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
            names_p, names_q = list(plab), list(qlab)
            out = dihedral([pimg, *plab.values()], kp, fp)
            pimg, plab = out[0], dict(zip(names_p, out[1:]))
            out = dihedral([qimg, qreg, *qlab.values()], kq, fq)
            qimg, qreg, qlab = out[0], out[1], dict(zip(names_q, out[2:]))
            if t.augment == "dihedral":  # fundus: mild photometric jitter, prompt and query apart
                pimg = np.clip((pimg - 0.5) * rng.uniform(0.85, 1.15) + 0.5 + rng.uniform(-0.08, 0.08), 0, 1)
                qimg = np.clip((qimg - 0.5) * rng.uniform(0.85, 1.15) + 0.5 + rng.uniform(-0.08, 0.08), 0, 1)
        shown = [k for k, v in plab.items() if v.any()]
        if self.scheme == "binary":
            shown = [shown[int(rng.integers(len(shown)))]] if shown else []
        if self.scheme == "binary" and not shown:
            cols = {}
        else:
            keyed = [f"{t.source}/{k}" for k in shown]
            cols = colouring.assign_colours(keyed if self.scheme == "predefined" else shown, self.scheme, rng,
                                            self.predefined)
            cols = {k.split("/", 1)[-1]: v for k, v in cols.items()}
        py = colouring.paint(plab, cols, (c, c))
        y = colouring.paint(qlab, cols, (c, c))
        cells = np.clip(np.stack([pimg, py, qimg, y]), 0.0, 1.0).astype(np.float32)
        return Episode(cells, "segmentation", t.name, colours=cols,
                       meta={"query_labels": qlab, "query_region": qreg, "classes": shown})

    def image_task(self, t: TaskSpec, pi: int, qi: int, rng: np.random.Generator) -> Episode:
        """Denoising / inpainting / synthesis episode from two slices of a source."""
        clean = self.slices(t)
        p, q = clean[pi], clean[qi]
        meta: dict[str, Any] = {}
        if t.task == "denoising":
            if self.sources[t.source].modality == "ct":
                i0 = float(np.exp(rng.uniform(*np.log(t.i0_range))))
                px, x = self.ct_noisy(t, pi, i0, rng), self.ct_noisy(t, qi, i0, rng)
                meta["i0"] = i0
            else:
                sigma = float(rng.uniform(*t.sigma_range))
                px, x = rician(p, sigma, rng), rician(q, sigma, rng)
                meta["sigma"] = sigma
        elif t.task == "inpainting":
            px, _ = void_boxes(p, rng, body=p.mean(-1) > 0.05)
            x, hole = void_boxes(q, rng, body=q.mean(-1) > 0.05)
            meta["hole"] = hole
        elif t.task == "synthesis":
            items = self._items(t)
            tgt = lambda i: resize_image(items[i].target, (self.cell, self.cell))
            px, x, p, q = p, q, tgt(pi), tgt(qi)
        else:
            raise InvalidInputError(f"task {t.name}: {t.task} is not an image task")
        cells = [px, p, x, q]
        if t.augment != "none" and rng.random() < 0.5:  # left-right flip of the whole episode
            cells = [np.ascontiguousarray(a[:, ::-1]) for a in cells]
            if "hole" in meta:
                meta["hole"] = np.ascontiguousarray(meta["hole"][:, ::-1])
        return Episode(np.clip(np.stack(cells), 0.0, 1.0).astype(np.float32), t.task, t.name, meta=meta)

    def ct_noisy(self, t: TaskSpec, i: int, i0: float, rng: np.random.Generator) -> np.ndarray:
        """Low-dose version of cached CT slice ``i`` at ``i0`` photons, windowed to [0, 1]."""
        hu = self.hu_slices(t)[i]
        if t.ct_noise == "projection":
            noise = self.bank(t).sample(i, i0, rng)
        else:  # σ matched to the projection model at 64 px: ≈ 30 HU at 1e5 photons
            noise = ldct_image_noise(hu.shape, 30.0 * np.sqrt(1e5 / i0), rng)
        lo, hi = CT_WINDOW
        unit = np.clip((hu + noise - lo) / (hi - lo), 0, 1).astype(np.float32)
        return np.repeat(unit[..., None], 3, -1)


# ----------------------------------------------------------------------------- Loop dataset
class EpisodeDataset(Dataset):
    """Map-style view for :class:`meditok.engine.loop.Loop`: item ``i`` of epoch ``e`` is a
    deterministic function of ``(seed, e, i)``, so a resumed run sees the same episodes."""

    def __init__(self, sampler: EpisodeSampler, epoch_size: int, seed: int = 0):
        self.sampler, self.epoch_size, self.seed, self.epoch = sampler, epoch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.epoch_size

    def __getitem__(self, i: int) -> dict[str, Any]:
        ep = self.sampler.sample(np.random.default_rng([self.seed, self.epoch, int(i)]))
        return {"canvas": canvas(ep.cells), "mim": ep.mode == "mim", "task": TASK_IDS[ep.task]}


def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {"canvas": torch.stack([x["canvas"] for x in items]),
            "mim": torch.tensor([x["mim"] for x in items]),
            "task": torch.tensor([x["task"] for x in items])}
