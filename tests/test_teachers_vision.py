"""Vision teachers: offline EfficientNet-Lite0 and BiomedCLIP's trunk from a tiny model saved
in open_clip's on-disk format; the ViT is checked against an independent functional forward."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from meditok.errors import CheckpointError
from meditok.teachers import Teacher, TeacherHead, build_teacher
from meditok.backbones.efficientnet import IMAGENET_MEAN, IMAGENET_STD, load_efficientnet_lite0
from meditok.backbones.vit import ViTSpec, VisionTransformer, load_dinov2


def _image(path, size: int = 224) -> torch.Tensor:
    im = Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1) / 255 * 2 - 1


@pytest.fixture(scope="module")
def real_images(shared_data) -> torch.Tensor:
    files = sorted((shared_data / "isic_cc0_550").glob("*.jpg"))[:6]
    files += sorted((shared_data / "retina_vessels" / "CHASE_DB1").glob("Image_0*.jpg"))[:2]
    return torch.stack([_image(f) for f in files])


def test_efficientnet_loads_strictly_with_expected_shapes() -> None:
    net = load_efficientnet_lite0()
    assert sum(p.numel() for p in net.parameters()) == 4_652_008  # 4.65 M incl. classifier
    x = torch.rand(2, 3, 224, 224) * 2 - 1
    with torch.no_grad():
        assert net.forward_features(x).shape == (2, 1280, 7, 7)
        assert net(x).shape == (2, 1000)


def test_efficientnet_bn_statistics_fit_minus_one_one_inputs(real_images: torch.Tensor) -> None:
    # The stem's BN running mean/var record what the network saw in training. Real images in
    # [-1,1] should roughly match them; ImageNet mean/std inputs (3-4x larger variance) should not.
    net = load_efficientnet_lite0()
    bn = net._bn0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    imagenet = ((real_images + 1) / 2 - mean) / std

    def var_ratio(x: torch.Tensor) -> float:
        with torch.no_grad():
            a = net._conv_stem(x)
        return (a.var(dim=(0, 2, 3)) / bn.running_var).median().item()

    assert 0.3 < var_ratio(real_images) < 1.5
    assert var_ratio(imagenet) > 2.0


def test_efficientnet_teacher_on_real_images(real_images: torch.Tensor) -> None:
    teacher = build_teacher("efficientnet-lite0")
    assert isinstance(teacher, Teacher) and teacher.kind == "vision" and teacher.dim == 1280
    teacher.train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    x = F.interpolate(real_images[:4], size=256, mode="bilinear")  # teacher resizes itself
    f1, f2 = teacher.encode(x), teacher.encode(x)
    assert f1.shape == (4, 1280) and torch.equal(f1, f2) and not f1.requires_grad
    assert torch.isfinite(f1).all() and (f1 >= 0).all()  # ReLU6 head, averaged
    cos = F.normalize(f1, dim=-1) @ F.normalize(f1, dim=-1).t()
    assert cos[0, 1] < 0.999  # different images -> different features
    head = TeacherHead(1280, 32)
    out = head(f1)
    assert out.shape == (4, 32) and torch.allclose(out.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert all(p.requires_grad for p in head.parameters())


def _reference_vit(state: dict, x: torch.Tensor, heads: int, patch: int) -> torch.Tensor:
    # Independent forward with torch.nn.functional, straight from the timm-named tensors.
    t = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=patch)
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat([state["cls_token"].expand(len(x), -1, -1), t], 1) + state["pos_embed"]
    d = t.shape[-1]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    for i in range(depth):
        p = lambda n: state[f"blocks.{i}.{n}"]  # noqa: E731
        h = F.layer_norm(t, (d,), p("norm1.weight"), p("norm1.bias"), 1e-6).transpose(0, 1)
        a, _ = F.multi_head_attention_forward(h, h, h, d, heads, p("attn.qkv.weight"), p("attn.qkv.bias"),
                                              None, None, False, 0.0, p("attn.proj.weight"),
                                              p("attn.proj.bias"), training=False, need_weights=False)
        g1 = state.get(f"blocks.{i}.ls1.gamma", 1.0)  # DINOv2 layer scale
        g2 = state.get(f"blocks.{i}.ls2.gamma", 1.0)
        t = t + g1 * a.transpose(0, 1)
        h = F.layer_norm(t, (d,), p("norm2.weight"), p("norm2.bias"), 1e-6)
        t = t + g2 * F.linear(F.gelu(F.linear(h, p("mlp.fc1.weight"), p("mlp.fc1.bias"))),
                              p("mlp.fc2.weight"), p("mlp.fc2.bias"))
    return F.layer_norm(t, (d,), state["norm.weight"], state["norm.bias"], 1e-6)[:, 0]


@pytest.fixture(scope="module")
def tiny_biomedclip_dir(tmp_path_factory):
    spec = ViTSpec(patch_size=16, dim=64, depth=2, heads=1, mlp_hidden=128, pretrain_size=224)
    torch.manual_seed(2)
    trunk = VisionTransformer(spec)
    with torch.no_grad():
        for prm in trunk.parameters():
            prm.normal_(0, 0.1)
    state = {f"visual.trunk.{k}": v for k, v in trunk.state_dict().items()}
    # The rest of a real open_clip checkpoint: projection head, text tower, logit scale.
    state["visual.head.proj.weight"] = torch.randn(32, 64)
    state["text.transformer.embeddings.word_embeddings.weight"] = torch.randn(10, 16)
    state["text.proj.0.weight"] = torch.randn(24, 16)
    state["logit_scale"] = torch.tensor(4.6)
    root = tmp_path_factory.mktemp("biomedclip")
    cfg = {"model_cfg": {"embed_dim": 32,
                         "vision_cfg": {"timm_model_name": "vit_base_patch16_224",
                                        "timm_model_pretrained": False, "timm_pool": "",
                                        "timm_proj": "linear", "image_size": 224},
                         "text_cfg": {"hf_model_name": "tiny", "proj": "mlp",
                                      "pooler_type": "cls_last_hidden_state_pooler"}},
           "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                              "std": [0.26862954, 0.26130258, 0.27577711]}}
    (root / "open_clip_config.json").write_text(json.dumps(cfg))
    torch.save(state, root / "open_clip_pytorch_model.bin")
    return root, {k[len("visual.trunk."):]: v for k, v in state.items() if k.startswith("visual.trunk.")}


def test_biomedclip_vision_teacher_from_open_clip_dir(tiny_biomedclip_dir) -> None:
    root, trunk_state = tiny_biomedclip_dir
    teacher = build_teacher("biomedclip", root)
    assert teacher.kind == "vision" and teacher.dim == 64
    x = torch.rand(3, 3, 256, 256) * 2 - 1
    feats = teacher.encode(x)
    assert feats.shape == (3, 64)
    # Official quirk: nearest resize of the [-1,1] tensor, no CLIP normalisation.
    expected = _reference_vit(trunk_state, F.interpolate(x, size=224, mode="nearest"), heads=1, patch=16)
    assert torch.allclose(feats, expected, atol=1e-4)
    clip_mode = type(teacher)(teacher.vit, input_mode="clip")
    assert not torch.allclose(clip_mode.encode(x), feats)


def test_biomedclip_errors_are_clear(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="needs path="):
        build_teacher("biomedclip")
    with pytest.raises(CheckpointError, match="open_clip_config.json"):
        build_teacher("biomedclip", tmp_path)


def test_dinov2_loader_official_format_matches_reference(tmp_path) -> None:
    spec = ViTSpec(patch_size=14, dim=64, depth=3, heads=1, mlp_hidden=128, pretrain_size=518,
                   layer_scale=True, mask_token=True)
    vit = VisionTransformer(spec)
    with torch.no_grad():
        for prm in vit.parameters():
            prm.normal_(0, 0.1)
    state = {k: v.clone() for k, v in vit.state_dict().items()}
    torch.save(state, tmp_path / "dinov2_vits14_pretrain.pth")
    loaded = load_dinov2(tmp_path / "dinov2_vits14_pretrain.pth")
    assert loaded.spec == spec and not any(p.requires_grad for p in loaded.parameters())
    x = torch.rand(1, 3, 518, 518) * 2 - 1  # native 37x37 grid: no position resampling
    with torch.no_grad():
        assert torch.allclose(loaded.cls_features(x), _reference_vit(state, x, 1, 14), atol=1e-4)
        # 252 px -> 18x18 patches with the 37x37 table resampled.
        assert loaded(torch.zeros(1, 3, 252, 252)).shape == (1, 1 + 18 * 18, 64)
