"""Vision teachers: EfficientNet-Lite0 (offline default) and BiomedCLIP's ViT-B/16 trunk."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from meditok.errors import CheckpointError
from meditok.teachers.base import Teacher
from meditok.backbones.efficientnet import load_efficientnet_lite0
from meditok.backbones.vit import TIMM_VIT_B16, ViTSpec, VisionTransformer, load_vit_state, read_state_dict

OPEN_CLIP_WEIGHT_FILES = ("open_clip_pytorch_model.bin", "open_clip_model.safetensors",
                          "open_clip_pytorch_model.safetensors")
TRUNK_PREFIX = "visual.trunk."


class EfficientNetTeacher(Teacher):
    """Global-average-pooled 1280-d EfficientNet-Lite0 features.

    Images in ``[-1,1]`` are resized to ``image_size`` (bilinear, antialiased) and fed as
    they are: the offline Lite0 weights were trained on inputs scaled by mean 127.5 / std
    127.5, i.e. exactly ``[-1,1]`` (checked on real images: the stem's batch-norm running
    statistics fit ``[-1,1]`` inputs, not ImageNet mean/std ones). ``normalization="imagenet"``
    selects the usual ImageNet mean/std instead.
    """

    kind = "vision"
    dim = 1280

    def __init__(self, weights: str | Path | None = None, image_size: int = 224,
                 normalization: str = "tf"):
        super().__init__()
        if normalization not in ("tf", "imagenet"):
            raise ValueError(f"normalization must be 'tf' or 'imagenet', got {normalization!r}")
        self.net = load_efficientnet_lite0(weights, num_classes=0)
        self.image_size = image_size
        self.normalization = normalization
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        self.register_buffer("x_scale", (0.5 / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("x_shift", ((0.5 - mean) / std).view(1, 3, 1, 1), persistent=False)
        self.freeze()

    @torch.no_grad()
    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        x = self.check_images(batch)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        if self.normalization == "imagenet":
            x = x * self.x_scale + self.x_shift
        return self.net.forward_features(x).mean(dim=(2, 3)).float()


class BiomedCLIPVisionTeacher(Teacher):
    """BiomedCLIP image tower: CLS token of the timm ViT-B/16 trunk after its final norm
    (768-d, before open_clip's 768→512 head).

    ``input_mode="official"`` reproduces the reference stage-1 quirk (spec §4.15): the
    ``[-1,1]`` tensor is nearest-resized to 224 without BiomedCLIP's own normalisation.
    ``"clip"`` instead uses bicubic resizing and the CLIP mean/std the tower was trained with.
    """

    kind = "vision"

    def __init__(self, vit: VisionTransformer, image_size: int = 224, input_mode: str = "official",
                 mean: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073),
                 std: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)):
        super().__init__()
        if input_mode not in ("official", "clip"):
            raise ValueError(f"input_mode must be 'official' or 'clip', got {input_mode!r}")
        self.vit = vit
        self.dim = vit.spec.dim
        self.image_size = image_size
        self.input_mode = input_mode
        m, s = torch.tensor(mean), torch.tensor(std)
        self.register_buffer("x_scale", (0.5 / s).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("x_shift", ((0.5 - m) / s).view(1, 3, 1, 1), persistent=False)
        self.freeze()

    @torch.no_grad()
    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        x = self.check_images(batch)
        size = (self.image_size, self.image_size)
        if self.input_mode == "official":
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="nearest")
        else:
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
            x = x * self.x_scale + self.x_shift
        return self.vit.cls_features(x).float()


def _find_open_clip_weights(root: Path) -> Path:
    for name in OPEN_CLIP_WEIGHT_FILES:
        if (root / name).is_file():
            return root / name
    raise CheckpointError(f"{root}: no open_clip weights ({' / '.join(OPEN_CLIP_WEIGHT_FILES)})")


def load_biomedclip_vision(path: str | Path, input_mode: str = "official") -> BiomedCLIPVisionTeacher:
    """Load the image tower from a local open_clip-format BiomedCLIP directory.

    The directory holds ``open_clip_config.json`` and ``open_clip_pytorch_model.bin`` (or a
    ``.safetensors``). Only ``visual.trunk.*`` is used; it must match timm's ViT layout exactly.
    """
    root = Path(path)
    cfg_file = root / "open_clip_config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{root}: not an open_clip model directory (open_clip_config.json missing)")
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        vision_cfg = cfg.get("model_cfg", cfg)["vision_cfg"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{cfg_file}: no model_cfg.vision_cfg ({exc})") from exc
    timm_name = vision_cfg.get("timm_model_name", "")
    if timm_name and "vit_base_patch16" not in timm_name:
        raise CheckpointError(f"{cfg_file}: vision tower {timm_name!r} is not a ViT-B/16")
    image_size = int(vision_cfg.get("image_size", 224))
    weights = _find_open_clip_weights(root)
    full = read_state_dict(weights)
    trunk = {k[len(TRUNK_PREFIX):]: v for k, v in full.items() if k.startswith(TRUNK_PREFIX)}
    if not trunk:
        raise CheckpointError(f"{weights}: no '{TRUNK_PREFIX}*' keys (is this an open_clip timm tower?)")
    spec = _spec_from_trunk(trunk, weights)
    vit = load_vit_state(VisionTransformer(spec), trunk, weights)
    pre = cfg.get("preprocess_cfg", {})
    kwargs = {k: tuple(pre[k]) for k in ("mean", "std") if k in pre}
    return BiomedCLIPVisionTeacher(vit, image_size=image_size, input_mode=input_mode, **kwargs)


def _spec_from_trunk(trunk: dict[str, torch.Tensor], source: Path) -> ViTSpec:
    try:
        dim = trunk["cls_token"].shape[-1]
        patch = trunk["patch_embed.proj.weight"].shape[-1]
        depth = 1 + max(int(k.split(".")[1]) for k in trunk if k.startswith("blocks."))
        hidden = trunk["blocks.0.mlp.fc1.weight"].shape[0]
        tokens = trunk["pos_embed"].shape[1] - 1
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{source}: visual trunk is not a timm ViT (missing {exc})") from exc
    grid = int(round(tokens ** 0.5))
    # Head width is 64 in every timm ViT size (B/16: 768/12), and it is not stored in the file.
    heads = TIMM_VIT_B16.heads if dim == TIMM_VIT_B16.dim else max(1, dim // 64)
    return ViTSpec(patch_size=patch, dim=dim, depth=depth, heads=heads, mlp_hidden=hidden,
                   pretrain_size=grid * patch)
