"""Discriminators: PatchGAN, and frozen-backbone discriminators on DINOv2 (tiny model saved in
the official state-dict format) and the offline EfficientNet-Lite0."""
from __future__ import annotations

import pytest
import torch

from meditok.errors import CheckpointError
from meditok.losses import (FrozenFeatureDiscriminator, PatchGANDiscriminator, build_discriminator,
                            generator_adv_loss, hinge_d_loss, trainable_parameters)
from meditok.backbones.vit import DINOV2_VITS14, ViTSpec, VisionTransformer


def _dinov2_keys(depth: int) -> list[str]:
    # Key names of the official dinov2_vits14_pretrain.pth (no register tokens, no head).
    keys = ["cls_token", "pos_embed", "mask_token", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    for i in range(depth):
        for part in ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias",
                     "attn.proj.weight", "attn.proj.bias", "ls1.gamma", "norm2.weight",
                     "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
                     "mlp.fc2.bias", "ls2.gamma"):
            keys.append(f"blocks.{i}.{part}")
    return keys + ["norm.weight", "norm.bias"]


def test_patchgan_shapes_and_training_step() -> None:
    d = PatchGANDiscriminator()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    logits = d(x)
    assert logits.shape[0] == 2 and logits.dim() == 2
    loss = hinge_d_loss(d(x), d(-x))
    loss.backward()
    assert all(p.grad is not None for p in d.parameters())
    sn = PatchGANDiscriminator(base=8, n_layers=2, spectral_norm=True)
    assert sn(x).shape[0] == 2
    assert isinstance(build_discriminator("patchgan", None, 64), PatchGANDiscriminator)


def test_full_size_dinov2_matches_official_key_list() -> None:
    with torch.device("meta"):
        vit = VisionTransformer(DINOV2_VITS14)
    sd = vit.state_dict()
    assert sorted(sd) == sorted(_dinov2_keys(12))
    assert sd["pos_embed"].shape == (1, 1370, 384)  # 518/14 = 37 -> 37*37 + 1
    assert sd["patch_embed.proj.weight"].shape == (384, 3, 14, 14)
    assert sd["blocks.0.attn.qkv.weight"].shape == (1152, 384)
    assert sd["blocks.11.mlp.fc1.weight"].shape == (1536, 384)
    assert sd["mask_token"].shape == (1, 384)
    assert sum(t.numel() for t in sd.values()) == 22_056_576


@pytest.fixture(scope="module")
def tiny_dinov2_file(tmp_path_factory) -> str:
    spec = ViTSpec(patch_size=14, dim=64, depth=12, heads=1, mlp_hidden=128, pretrain_size=518,
                   layer_scale=True, mask_token=True)
    torch.manual_seed(1)
    vit = VisionTransformer(spec)
    with torch.no_grad():
        for p in vit.parameters():
            p.normal_(0, 0.05)
    path = tmp_path_factory.mktemp("dino") / "dinov2_vits14_pretrain.pth"
    state = vit.state_dict()
    assert sorted(state) == sorted(_dinov2_keys(12))
    torch.save(state, path)
    return str(path)


def test_dinov2_discriminator_from_official_format(tiny_dinov2_file: str) -> None:
    disc = build_discriminator("dinov2_vits14", tiny_dinov2_file, image_size=256)
    assert isinstance(disc, FrozenFeatureDiscriminator)
    saved = torch.load(tiny_dinov2_file)
    assert torch.equal(disc.backbone.vit.blocks[3].ls1.gamma, saved["blocks.3.ls1.gamma"])
    # Only the heads are trainable / saved; the frozen backbone is outside the state dict.
    assert all(k.startswith("heads.") for k in disc.state_dict())
    assert len(disc.heads) == 5
    assert sum(p.numel() for p in trainable_parameters(disc)) == sum(p.numel() for p in disc.parameters())
    disc.eval()
    x = (torch.rand(2, 3, 256, 256) * 2 - 1).requires_grad_()
    logits = disc(x)
    assert logits.shape == (2, 5 * 18 * 18)  # 256 -> 252 -> 18x18 patches per tapped block
    assert torch.equal(logits, disc(x.detach()))  # eval: deterministic area resize
    generator_adv_loss(logits).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # gradient reaches the generator
    assert all(p.grad is None for p in disc.backbone.parameters())
    # .to() moves the hidden backbone too.
    disc.double()
    assert disc.backbone.vit.pos_embed.dtype == torch.float64


def test_dinov2_missing_weights_is_clear() -> None:
    with pytest.raises(CheckpointError, match="dinov2_vits14_pretrain.pth"):
        build_discriminator("dinov2_vits14", None, 256)


def test_efficientnet_discriminator_offline_weights() -> None:
    disc = build_discriminator("efficientnet_lite0", None, image_size=64)
    assert all(k.startswith("heads.") for k in disc.state_dict())
    x = (torch.rand(2, 3, 64, 64) * 2 - 1).requires_grad_()
    disc.train()
    logits = disc(x)
    assert not disc.backbone.training  # frozen BN statistics are never updated
    assert logits.shape == (2, 8 * 8 + 4 * 4 + 2 * 2)  # taps at strides 8, 16, 32
    hinge_d_loss(logits, -logits).backward()
    assert all(p.grad is not None for p in trainable_parameters(disc))
