"""MVG in pixel space: a ViT over the 2x2 in-context canvas (MVG §3.3).

Canvas (cells in raster order): ``0 = P_x`` (prompt image, upper left), ``1 = P_y`` (prompt
label, upper right), ``2 = X`` (task image, lower left), ``3 = Y`` (task label, lower right).
Every cell is ``cell x cell`` pixels, RGB in ``[-1, 1]``.

Two objectives on the same network:

* **MIM** (Eq. 1): random patches of the whole canvas (prompts included, as the paper's
  explanation of MIM's failure on small organs implies) are masked; the network reconstructs
  them; smooth-L1 on the masked patches only.
* **AR** "visual sentence" (Eq. 2): the four cells are a sequence and each label image is
  predicted from the images before it — ``P_y`` from ``P_x``, ``Y`` from ``(P_x, P_y, X)``;
  only label cells are supervised. How causality is built is not in the paper. Here one AR step
  puts mask tokens into the slot of the next image (its pixels are never seen), attention is
  block-causal (a token sees its own cell and the cells before it), and the slot's features
  predict the image. A first design shifted by one cell (the features of ``X`` predict ``Y``,
  GPT style, one pass for both targets); in CPU probes it never learned to read the prompt's
  label colour — an ``X`` token's own content dominates its state — while the slot, which has
  no content of its own, carries what attention brings from the prompt.

Architecture. The paper: "vanilla ViT … decoder is a simple prediction head with two
convolution layers and takes four feature maps". ``head="painter"`` is that head (Painter's:
the four tapped block outputs → linear → pixel-shuffle → conv3x3 → LayerNorm → GELU →
conv1x1). The default ``head="unet"`` is our addition for from-scratch CPU training: a small
convolutional stem tokenises each cell (patch ``p`` = 3 stride-2 stages, plus the plain linear
patch embedding) and the decoder upsamples the tapped features with skip connections from the
stem of the label's *image* cell (``X`` for ``Y``, ``P_x`` for ``P_y``); a dynamic last layer
lets the transformer set the output colour. Pilot runs (see the in-context note) found that
the paper's head with a patch-embedding ViT does not leave the all-background solution on thin
vessels within an hour of CPU; a skip path gives the local detail a 1-3 px vessel needs, while
everything about the task still has to come through the transformer from the prompt.
Stem and decoder run per cell (cells folded into the batch), so no convolution mixes two
cells — required for the AR causality. ``residual_tasks`` predicts a restoration label from its
image cell (a correction, gated or blended: ``restore.py``); results in ``benchmarks/results/incontext/``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from meditok.data.preprocess import PreprocessConfig
from meditok.errors import InvalidInputError
from meditok.incontext.episodes import TASK_IDS
from meditok.incontext.layers import Block, LayerNorm2d, conv_block
from meditok.incontext.restore import Restoration, TaskArg
from meditok.utils.config import Config, choose_preset
from meditok.utils.hub import PretrainedMixin

#: Canvas cells in raster order.
PROMPT_IMAGE, PROMPT_LABEL, QUERY_IMAGE, QUERY_LABEL = 0, 1, 2, 3
LABEL_CELLS = (PROMPT_LABEL, QUERY_LABEL)
HEADS = ("unet", "painter")


def _mvg_preprocess() -> PreprocessConfig:
    # MVG §4.1: CT windowed to [-100, 200] HU; the cell is the model's image size
    return PreprocessConfig(image_size=64, ct_window=(-100.0, 200.0))


@dataclass
class MVGConfig(Config):
    """Architecture of a pixel-space MVG (``mvg_preset`` gives tiny / small / base)."""

    cell: int = 64
    #: Pixels per token side; the stem downsamples ``log2(patch)`` times.
    patch: int = 8
    dim: int = 192
    depth: int = 6
    heads: int = 3
    mlp_ratio: float = 4.0
    #: ``unet`` (conv stem + skip decoder, default) or ``painter`` (the paper's head).
    head: str = "unet"
    #: Stem widths at full, 1/2, 1/4 … resolution (``log2(patch)`` entries; ``unet`` head).
    stem_widths: tuple[int, ...] = (16, 32, 64)
    #: Decoder channels per pixel (``painter`` head) / at the token grid (``unet`` head).
    dec_dim: int = 64
    #: ``unet`` head: the last layer's 1x1 weights are also predicted per token from the transformer
    #: features (a dynamic head), so prompt-derived properties such as the label colour multiply the
    #: local features of the skip path instead of having to be mixed in by the convolutions.
    dynamic_head: bool = True
    #: ``unet`` head: GroupNorm in the conv blocks (fast shape learning). GroupNorm removes each
    #: cell's absolute intensity and colour balance, so the raw pixels also reach the tokens (a
    #: plain linear patch embedding, the paper's ViT input, added to the stem's) and the last
    #: decoder layer (concatenated to its skip).
    norm: bool = True
    drop_path: float = 0.0
    #: Tasks whose label cell is predicted as its image cell plus a learned correction (restoration:
    #: the answer is the input, nearly). A plain prediction must rebuild every pixel through the
    #: network, which caps its PSNR below that of a lightly corrupted input (MR denoising). Off in
    #: the shipped recipe: retrained with it, MR denoising did not improve (see the module docstring).
    residual_tasks: tuple[str, ...] = ()
    #: With ``residual_tasks``: the correction is scaled by a learned gate that starts at 0, so a
    #: restoration starts as the identity (the decoder's output is not zero at init, and it also
    #: sees the image's raw pixels through the level-0 skip: without the gate it starts from
    #: "image + a random image").
    residual_gate: bool = False
    #: With ``residual_tasks``: the label is ``x + α·(p − x)``, the plain prediction ``p`` (also
    #: supervised on its own) blended with the image cell ``x`` by a per-pixel gate ``α`` the
    #: decoder predicts (``restore.py``). Excludes ``residual_gate``; ``unet`` head only.
    residual_blend: bool = False
    in_channels: int = 3
    #: How a file becomes a cell (CT window [-100, 200] HU as the paper).
    preprocess: PreprocessConfig = field(default_factory=_mvg_preprocess)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def grid(self) -> int:
        """Tokens per cell side."""
        return self.cell // self.patch

    def validate(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"model.head must be one of {HEADS}, got {self.head!r}")
        if self.patch < 2 or self.patch & (self.patch - 1) or self.cell % self.patch:
            raise ValueError(f"model.patch {self.patch} must be a power of two dividing cell {self.cell}")
        if self.dim % self.heads:
            raise ValueError(f"model.dim {self.dim} must be a multiple of heads {self.heads}")
        if self.head == "unet" and len(self.stem_widths) != int(math.log2(self.patch)):
            raise ValueError(f"model.stem_widths needs log2(patch) = {int(math.log2(self.patch))} entries")
        unknown = set(self.residual_tasks) - set(TASK_IDS)
        if unknown:
            raise ValueError(f"model.residual_tasks: unknown {sorted(unknown)}; choose from {sorted(TASK_IDS)}")
        if "segmentation" in self.residual_tasks:
            raise ValueError("model.residual_tasks: a segmentation label is not its image plus a correction")
        if self.residual_blend and (self.residual_gate or self.head != "unet" or not self.residual_tasks):
            raise ValueError("model.residual_blend needs residual_tasks and head 'unet', and excludes residual_gate")
        if self.depth < 1 or self.dim < 8 or self.cell > 1024 or self.dim * self.depth > 1 << 16:
            raise ValueError("model: depth >= 1, dim >= 8, cell <= 1024 and a bounded size")

    def estimated_parameters(self) -> int:
        blocks = self.depth * (12 * self.dim ** 2 * self.mlp_ratio / 4 + 4 * self.dim ** 2)
        return int(blocks + (2 * self.grid) ** 2 * self.dim)


def mvg_preset(name: str, **overrides: Any) -> MVGConfig:
    """``tiny`` (tests: 32 px cells), ``small`` (trains on 2 CPU cores), ``base``."""
    presets = {
        "tiny": MVGConfig(cell=32, patch=8, dim=32, depth=2, heads=2, stem_widths=(8, 8, 16), dec_dim=16,
                          preprocess=dataclasses.replace(_mvg_preprocess(), image_size=32)),
        "small": MVGConfig(cell=64, patch=8, dim=192, depth=6, heads=3, stem_widths=(16, 32, 64), dec_dim=64),
        "base": MVGConfig(cell=64, patch=8, dim=384, depth=12, heads=6, stem_widths=(32, 64, 128), dec_dim=128,
                          drop_path=0.1),
    }
    return choose_preset(presets, name, "MVG", **overrides)


# ----------------------------------------------------------------------------- the model
class MVG(PretrainedMixin, nn.Module):
    """Pixel-space in-context generalist; see the module docstring."""

    config_class = MVGConfig
    model_type = "meditok-mvg"

    def __init__(self, config: MVGConfig):
        super().__init__()
        config.validate()
        self.config = cfg = config
        g, d = cfg.grid, cfg.dim
        levels = int(math.log2(cfg.patch))
        if cfg.head == "unet":
            widths = list(cfg.stem_widths)
            self.stem = nn.ModuleList(conv_block(cfg.in_channels if i == 0 else widths[i - 1], widths[i], cfg.norm)
                                      for i in range(levels))
            self.embed = nn.Conv2d(widths[-1], d, 3, stride=2, padding=1)
            self.patch_embed = nn.Conv2d(cfg.in_channels, d, cfg.patch, cfg.patch)
        else:
            self.stem = nn.ModuleList()
            self.embed = nn.Conv2d(cfg.in_channels, d, cfg.patch, cfg.patch)
            self.patch_embed = None
        self.pos = nn.Parameter(torch.randn(1, 4 * g * g, d) * 0.02)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.blocks = nn.ModuleList(Block(d, cfg.heads, cfg.mlp_ratio, cfg.drop_path * i / max(1, cfg.depth - 1))
                                    for i in range(cfg.depth))
        self.taps = sorted({max(0, round((i + 1) * cfg.depth / 4) - 1) for i in range(4)})
        self.norm = nn.LayerNorm(d)
        if cfg.head == "unet":
            self.fuse = nn.Linear(d * len(self.taps), cfg.dec_dim)
            ups, decs, c = [], [], cfg.dec_dim
            for i in reversed(range(levels)):
                w = cfg.stem_widths[i]
                ups.append(nn.ConvTranspose2d(c, w, 2, 2))
                decs.append(conv_block(2 * w + (cfg.in_channels if i == 0 else 0), w, cfg.norm))
                c = w
            self.ups, self.decs = nn.ModuleList(ups), nn.ModuleList(decs)
            self.out = nn.Conv2d(c, cfg.in_channels, 1)
            self.dynamic = nn.Linear(cfg.dec_dim, cfg.in_channels * (c + 1)) if cfg.dynamic_head else None
            if self.dynamic is not None:
                nn.init.zeros_(self.dynamic.weight)
                nn.init.zeros_(self.dynamic.bias)
        else:
            self.fuse = nn.Linear(d * len(self.taps), cfg.patch * cfg.patch * cfg.dec_dim)
            self.ups, self.decs = nn.ModuleList(), nn.ModuleList()
            self.dynamic = None
            self.out = nn.Sequential(nn.Conv2d(cfg.dec_dim, cfg.dec_dim, 3, padding=1), LayerNorm2d(cfg.dec_dim),
                                     nn.GELU(), nn.Conv2d(cfg.dec_dim, cfg.in_channels, 1))
        for mod in self.modules():  # variance-preserving convs: without normalisation layers the
            if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)):  # default init shrinks the signal ~3x per layer
                nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
                nn.init.zeros_(mod.bias)
        self.restore = Restoration(cfg.residual_tasks, cfg.residual_gate, cfg.residual_blend,
                                   width=cfg.stem_widths[0] if cfg.head == "unet" else 0)
        cell_id = self.token_cells(g)
        self.register_buffer("cell_id", cell_id, persistent=False)
        self.register_buffer("causal", cell_id[None, :] <= cell_id[:, None], persistent=False)

    @staticmethod
    def token_cells(g: int) -> torch.Tensor:
        """Cell index (0…3) of every token of the ``2g x 2g`` canvas grid, raster order."""
        gy, gx = torch.meshgrid(torch.arange(2 * g), torch.arange(2 * g), indexing="ij")
        return ((gy // g) * 2 + (gx // g)).flatten()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ layout
    def to_cells(self, canvas: torch.Tensor) -> torch.Tensor:
        """``[B, C, 2c, 2c]`` → ``[B, 4, C, c, c]``."""
        b, ch, h, w = canvas.shape
        c = self.config.cell
        if h != 2 * c or w != 2 * c:
            raise InvalidInputError(f"canvas must be {2 * c}x{2 * c}, got {h}x{w}")
        return canvas.view(b, ch, 2, c, 2, c).permute(0, 2, 4, 1, 3, 5).reshape(b, 4, ch, c, c)

    def _cells_to_tokens(self, t: torch.Tensor, b: int) -> torch.Tensor:
        """``[B*4, D, g, g]`` → ``[B, 4g², D]`` in canvas raster order."""
        g = self.config.grid
        d = t.shape[1]
        t = t.view(b, 2, 2, d, g, g).permute(0, 1, 4, 2, 5, 3)  # b, cell row, y, cell col, x, d
        return t.reshape(b, 4 * g * g, d)

    def _tokens_to_cells(self, f: torch.Tensor) -> torch.Tensor:
        """``[B, 4g², D]`` → ``[B, 4, D, g, g]``."""
        b, _, d = f.shape
        g = self.config.grid
        return f.view(b, 2, g, 2, g, d).permute(0, 1, 3, 5, 2, 4).reshape(b, 4, d, g, g)

    def pixel_mask(self, token_mask: torch.Tensor) -> torch.Tensor:
        """Token mask ``[B, 4g²]`` → pixel mask per cell ``[B, 4, 1, c, c]`` (float)."""
        p = self.config.patch
        m = self._tokens_to_cells(token_mask[..., None].float())  # [B, 4, 1, g, g]
        return m.repeat_interleave(p, -2).repeat_interleave(p, -1)

    # ------------------------------------------------------------------ network
    def encode(self, cells: torch.Tensor, token_mask: torch.Tensor | None = None,
               causal: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Cells ``[B, 4, C, c, c]`` → tapped features ``[B, 4, D·taps, g, g]`` and the stem's
        skip features per level (``[B*4, w_i, …]``)."""
        b = cells.shape[0]
        raw = x = cells.reshape(b * 4, *cells.shape[2:])
        skips = []
        for i, blk in enumerate(self.stem):
            x = blk(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(torch.cat([x, raw], 1) if i == 0 else x)  # level 0 carries the raw pixels too
        t = self.embed(x)
        if self.patch_embed is not None:
            t = t + self.patch_embed(raw)
        tokens = self._cells_to_tokens(t, b)
        if token_mask is not None:
            tokens = torch.where(token_mask[..., None], self.mask_token.to(tokens.dtype).expand_as(tokens), tokens)
        h = tokens + self.pos
        allowed = self.causal if causal else None
        taps = []
        for i, blk in enumerate(self.blocks):
            h = blk(h, allowed)
            if i in self.taps:
                taps.append(self.norm(h))
        return self._tokens_to_cells(torch.cat(taps, -1)), skips

    def decode(self, feats: torch.Tensor, skips: list[torch.Tensor], sources: list[int],
               skip_sources: list[int] | None = None) -> torch.Tensor:
        """Pixels predicted from the transformer features of cells ``sources`` and the stem skips
        of cells ``skip_sources`` (default: the same cells) → ``[B, len(sources), C, c, c]``."""
        b, _, dt, g, _ = feats.shape
        idx = torch.tensor(sources, device=feats.device)
        sidx = idx if skip_sources is None else torch.tensor(skip_sources, device=feats.device)
        f = feats[:, idx].reshape(b * len(sources), dt, g, g)
        f = self.fuse(f.permute(0, 2, 3, 1))  # [b*s, g, g, dec]
        if self.config.head == "painter":
            p, dd = self.config.patch, self.config.dec_dim
            f = f.view(-1, g, g, p, p, dd).permute(0, 5, 1, 3, 2, 4).reshape(-1, dd, g * p, g * p)
            out = self.out(f)
        else:
            x = f.permute(0, 3, 1, 2)
            for up, dec, skip in zip(self.ups, self.decs, reversed(skips)):
                s = skip.view(b, 4, *skip.shape[1:])[:, sidx].reshape(-1, *skip.shape[1:])
                x = dec(torch.cat([up(x), s], 1))
            out = self.out(x)
            if self.dynamic is not None:  # per-token 1x1 weights, bilinearly spread over the pixels
                w = self.dynamic(f).permute(0, 3, 1, 2)
                w = F.interpolate(w, size=x.shape[-2:], mode="bilinear", align_corners=False)
                w = w.view(w.shape[0], self.config.in_channels, x.shape[1] + 1, *x.shape[-2:])
                out = out + (w[:, :, :-1] * x[:, None]).sum(2) + w[:, :, -1]
            if self.restore.blend is not None:  # the blend logit rides as one more channel
                out = torch.cat([out, self.restore.blend(x)], 1)
        return out.view(b, len(sources), *out.shape[1:])

    # ------------------------------------------------------------------ objectives
    def next_image(self, cells: torch.Tensor, target_cell: int, task: TaskArg = None) -> torch.Tensor:
        """One AR step: the cell ``target_cell`` is the next image of the sentence. Its slot holds
        mask tokens (its pixels are never seen), attention is block-causal (so the cells after it
        are invisible too) and its pixels are decoded from the slot's features with the stem skips
        of the image before it (``P_x`` for ``P_y``, ``X`` for ``Y``) → ``[B, C, c, c]``. Rows of a
        residual task (``task``, see ``Restoration.rows``) also use that image's pixels."""
        return self._label_step(cells, target_cell, task)[0][:, 0]

    def _label_step(self, cells: torch.Tensor, target_cell: int, task: TaskArg,
                    causal: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The label cell ``target_cell`` hidden and decoded → (prediction ``[B, 1, C, c, c]``,
        the decoder's raw output, the blended rows; see ``Restoration``)."""
        mask = (self.cell_id == target_cell)[None].expand(cells.shape[0], -1)
        m = self.pixel_mask(mask)
        feats, skips = self.encode(cells * (1 - m), mask, causal=causal)
        out = self.decode(feats, skips, [target_cell], [target_cell - 1])
        rows = self.restore.rows(task, cells.shape[0], out.device)
        pred, blended = self.restore(out, cells[:, [target_cell - 1]], rows, [True])
        return pred, out, blended

    def forward_ar(self, canvas: torch.Tensor, target: torch.Tensor | None = None,
                   weights: dict[int, float] | None = None, beta: float = 0.01,
                   task: TaskArg = None) -> tuple[torch.Tensor, torch.Tensor]:
        """AR visual-sentence loss (Eq. 2): ``P_y`` predicted from ``P_x``, ``Y`` from
        ``(P_x, P_y, X)``; only these label cells are supervised. ``canvas`` ``[B, 3, 2c, 2c]``
        is the input; ``target`` (default: the canvas) gives what the label cells are compared
        against. ``weights`` per label cell (default 1 each; a zero weight skips that pass);
        ``beta``: the smooth-L1 transition (Painter's 0.01 is L1 for all practical purposes);
        ``task``: as in ``next_image``. Returns (loss, predictions ``[B, 2, C, c, c]`` for ``P_y``
        and ``Y``; zeros for a skipped pass)."""
        cells = self.to_cells(canvas)
        tgt = cells if target is None else self.to_cells(target)
        w = {c: 1.0 for c in LABEL_CELLS} if weights is None else {c: weights.get(c, 1.0) for c in LABEL_CELLS}
        preds, terms = [], []
        for c in LABEL_CELLS:
            if w[c] <= 0:
                preds.append(torch.zeros_like(cells[:, c]))
                continue
            p, out, blended = self._label_step(cells, c, task)
            preds.append(p[:, 0])
            aux = self.restore.aux_loss(out, tgt[:, [c]], blended, beta)
            terms.append((w[c], F.smooth_l1_loss(p[:, 0].float(), tgt[:, c].float(), beta=beta) + aux))
        total = sum(wt for wt, _ in terms)
        loss = sum(wt * t for wt, t in terms) / max(total, 1e-8)
        return loss, torch.stack(preds, 1)

    def forward_mim(self, canvas: torch.Tensor, token_mask: torch.Tensor, beta: float = 0.01,
                    task: TaskArg = None) -> tuple[torch.Tensor, torch.Tensor]:
        """MIM loss: masked tokens (``token_mask`` ``[B, 4g²]``, True = masked) are hidden from
        the network (pixels zeroed before the stem, token replaced by the mask token) and the
        smooth-L1 is averaged over the masked pixels only. As in the AR step, a label cell is
        decoded with the skips of its image cell (P_y with P_x's, Y with X's: the same place of
        the picture), an image cell with its own. For a residual task a label cell adds the
        *visible* pixels of its image cell (a masked pixel stays hidden: the network predicts it
        whole). Returns (loss, predictions ``[B, 4, C, c, c]``)."""
        cells = self.to_cells(canvas)
        m = self.pixel_mask(token_mask)
        visible = cells * (1 - m)
        feats, skips = self.encode(visible, token_mask)
        out = self.decode(feats, skips, [0, 1, 2, 3], [0, 0, 2, 2])
        base = torch.zeros_like(visible)
        base[:, list(LABEL_CELLS)] = visible[:, [PROMPT_IMAGE, QUERY_IMAGE]]
        rows = self.restore.rows(task, cells.shape[0], out.device)
        pred, blended = self.restore(out, base, rows, [c in LABEL_CELLS for c in range(4)], hidden=m[:, [0, 0, 2, 2]])
        per_pixel = F.smooth_l1_loss(pred.float(), cells.float(), beta=beta, reduction="none")
        loss = (per_pixel * m).sum() / (m.sum() * cells.shape[2]).clamp_min(1.0)
        return loss + self.restore.aux_loss(out, cells, blended, beta, weight=m), pred

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict(self, canvas: torch.Tensor, mode: str = "ar", task: TaskArg = None) -> torch.Tensor:
        """The ``Y`` cell predicted from ``P_x, P_y, X`` → ``[B, C, c, c]`` clamped to [-1, 1].
        ``mode="ar"``: the AR step for Y (block-causal, Y never seen); ``"mim"``: the whole Y cell
        masked with full attention, decoded as in MIM training. ``task`` (a name or ids ``[B]``)
        matters only to a model with ``residual_tasks``."""
        cells = self.to_cells(canvas)
        if mode not in ("ar", "mim"):
            raise InvalidInputError(f"mode must be 'ar' or 'mim', got {mode!r}")
        # MIM mode: the whole Y cell masked with full attention, decoded as in MIM training
        out = self._label_step(cells, QUERY_LABEL, task, causal=mode == "ar")[0][:, 0]
        return out.clamp(-1.0, 1.0)


def random_token_mask(batch: int, model: MVG, ratio: float = 0.5, p_full_query_label: float = 0.0,
                      generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """Exactly ``round(ratio · N)`` random tokens of the canvas masked per row (the whole canvas,
    prompts included); with probability ``p_full_query_label`` the whole ``Y`` cell is masked
    too (so MIM-mode inference, ``Y`` fully hidden, is in distribution; SegGPT's trick)."""
    if not 0.0 <= ratio <= 1.0 or not 0.0 <= p_full_query_label <= 1.0:
        raise ValueError("mask ratio and p_full_query_label must lie in [0, 1]")
    n = model.cell_id.numel()
    k = int(round(ratio * n))
    noise = torch.rand(batch, n, generator=generator).to(device)
    m = torch.zeros(batch, n, dtype=torch.bool, device=device)
    if k:
        m.scatter_(1, noise.argsort(1)[:, :k], True)
    if p_full_query_label > 0:
        full = (torch.rand(batch, generator=generator) < p_full_query_label).to(device)
        m |= full[:, None] & (model.cell_id[None].to(device) == QUERY_LABEL)
    return m
