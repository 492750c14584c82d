"""A plain pre-norm Vision Transformer whose parameter names match two released layouts:

* the official DINOv2 ``dinov2_vits14_pretrain.pth`` state dict (layer scale ``ls1/ls2.gamma``,
  a ``mask_token``, 518² position table), used as the frozen discriminator backbone;
* timm's ``vit_base_patch16_224`` as stored under ``visual.trunk.*`` in BiomedCLIP's open_clip
  checkpoint, used as the stage-1 vision teacher.

Both are standard ViTs (LayerNorm eps 1e-6, exact GELU MLP, fused qkv with bias, class token
plus learned absolute position table), so one module covers both; loading is strict so a
mismatch in names or shapes is reported instead of silently ignored.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from meditok.errors import CheckpointError


@dataclass(frozen=True)
class ViTSpec:
    """Shape hyper-parameters of a ViT checkpoint."""

    patch_size: int
    dim: int
    depth: int
    heads: int
    mlp_hidden: int
    pretrain_size: int  # image size of the stored position table
    layer_scale: bool = False
    mask_token: bool = False


DINOV2_VITS14 = ViTSpec(patch_size=14, dim=384, depth=12, heads=6, mlp_hidden=1536,
                        pretrain_size=518, layer_scale=True, mask_token=True)
TIMM_VIT_B16 = ViTSpec(patch_size=16, dim=768, depth=12, heads=12, mlp_hidden=3072,
                       pretrain_size=224)


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class _Block(nn.Module):
    def __init__(self, spec: ViTSpec):
        super().__init__()
        self.norm1 = nn.LayerNorm(spec.dim, eps=1e-6)
        self.attn = _Attention(spec.dim, spec.heads)
        self.norm2 = nn.LayerNorm(spec.dim, eps=1e-6)
        self.mlp = _Mlp(spec.dim, spec.mlp_hidden)
        self.ls1 = _LayerScale(spec.dim) if spec.layer_scale else nn.Identity()
        self.ls2 = _LayerScale(spec.dim) if spec.layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """Pre-norm ViT with class token; any input size divisible by the patch size.

    The stored position table (pretrain grid) is bicubically resampled to the actual patch
    grid, e.g. DINOv2's 37×37 table to 18×18 for 252² inputs.
    """

    def __init__(self, spec: ViTSpec):
        super().__init__()
        self.spec = spec
        grid = spec.pretrain_size // spec.patch_size
        self.patch_embed = _PatchEmbed(spec.patch_size, spec.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, spec.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, spec.dim))
        if spec.mask_token:
            # Only used by DINOv2's masked pre-training; kept so the state dict loads strictly.
            self.mask_token = nn.Parameter(torch.zeros(1, spec.dim))
        self.blocks = nn.ModuleList(_Block(spec) for _ in range(spec.depth))
        self.norm = nn.LayerNorm(spec.dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def _pos(self, h: int, w: int) -> torch.Tensor:
        table = self.pos_embed
        n = table.shape[1] - 1
        g = int(math.isqrt(n))
        if (h, w) == (g, g):
            return table
        grid = table[:, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2).float()
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, -1).to(table.dtype)
        return torch.cat([table[:, :1], grid], dim=1)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Embedded tokens ``[B, 1 + h*w, dim]`` (class token first) before the blocks."""
        p = self.spec.patch_size
        if x.shape[-1] % p or x.shape[-2] % p:
            raise ValueError(f"input size {tuple(x.shape[-2:])} is not a multiple of the patch size {p}")
        h, w = x.shape[-2] // p, x.shape[-1] // p
        t = self.patch_embed(x)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1)
        return t + self._pos(h, w)

    def intermediate(self, x: torch.Tensor, taps: tuple[int, ...]) -> list[torch.Tensor]:
        """Un-normalised outputs ``[B, 1+N, dim]`` of the blocks listed in ``taps``."""
        t = self.tokens(x)
        out: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.blocks[: max(taps) + 1]):
            t = block(t)
            if i in taps:
                out[i] = t
        return [out[i] for i in taps]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens after the final LayerNorm ``[B, 1+N, dim]``."""
        t = self.tokens(x)
        for block in self.blocks:
            t = block(t)
        return self.norm(t)

    def cls_features(self, x: torch.Tensor) -> torch.Tensor:
        """Class token after the final norm ``[B, dim]`` (timm's ``token`` pooling)."""
        return self.forward(x)[:, 0]


def load_vit_state(model: VisionTransformer, state: dict[str, torch.Tensor], source: str | Path) -> VisionTransformer:
    """Load ``state`` strictly into ``model`` and freeze it; errors name the file."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: state dict does not match the expected ViT layout ({exc})") from exc
    model.requires_grad_(False)
    return model.eval()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.pth``/``.bin`` (torch, weights only) or ``.safetensors`` state dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated or unsafe pickles raise various types
        raise CheckpointError(f"{path}: cannot read state dict ({exc})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def load_dinov2(path: str | Path, heads: int | None = None) -> VisionTransformer:
    """Frozen DINOv2 ViT from the official ``dinov2_vits14_pretrain.pth``-style state dict.

    Sizes are read from the tensors; ``heads`` (not stored in the file) defaults to 6 for the
    384-wide ViT-S and to ``dim // 64`` otherwise.
    """
    state = read_state_dict(path)
    spec = _infer_spec(state, DINOV2_VITS14, path, heads)
    return load_vit_state(VisionTransformer(spec), state, path)


def _infer_spec(state: dict[str, torch.Tensor], default: ViTSpec, path: str | Path,
                heads: int | None = None) -> ViTSpec:
    # Read sizes from the tensors so that smaller test models (and ViT-B/L DINOv2 files) load
    # through the same code; head count is not stored, so keep the 64-wide-head convention.
    try:
        dim = state["cls_token"].shape[-1]
        patch = state["patch_embed.proj.weight"].shape[-1]
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
        grid = math.isqrt(state["pos_embed"].shape[1] - 1)
    except (KeyError, ValueError, IndexError) as exc:
        raise CheckpointError(f"{path}: not a ViT state dict (missing {exc})") from exc
    if heads is None:
        heads = default.heads if dim == default.dim else max(1, dim // 64)
    return ViTSpec(patch_size=patch, dim=dim, depth=depth, heads=heads, mlp_hidden=hidden,
                   pretrain_size=grid * patch, layer_scale="blocks.0.ls1.gamma" in state,
                   mask_token="mask_token" in state)
