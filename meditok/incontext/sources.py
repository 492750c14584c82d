"""The real data of ``../shared/data`` as in-context sources: items, splits, classes and scales.

Every image is read through :mod:`meditok.data.readers` and held as float32 ``H x W x 3`` in
``[0, 1]`` at its native resolution (grey replicated). Segmentation items carry
``{class: bool mask}``; CT items keep their HU slice (the low-dose simulation works on HU).

Sources and splits (why: see ``/work/notes/incontext_note.md``):

========================  ============================================  ==========================
source                    train                                         test
========================  ============================================  ==========================
``drive``                 DRIVE ``training/`` (ids 21–40)               DRIVE ``testing/`` (01–20)
``chase``                 — (held out; prompts: ``Image_01L``)          the other 27 images, 1stHO
``sam_ct``                amos_0006_90, s0114_111, s0619_32             amos_0004_75
``brain_mr``              brain1 labelled slices                        brain2 labelled slices
``prostate_mr``           prostate phantom z 0–8                        z 10–12 (z 9 left as a gap)
``breast_mr``             breast1 labelled slices                       —
``ct_slices``             example_ct.nii.gz axial slices (body QC)      the 20 DICOM slices
``mr_slices``             brain1, breast1, prostate slices (QC)         brain2 slices
========================  ============================================  ==========================

``scale`` is native px → model px: DRIVE 1 (native crops; a vessel is 1–3 px), CHASE 0.586
(the FOV diameter ratio 538/917, so vessels have DRIVE's calibre), CT 0.25, brain 0.5.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meditok.data.readers import read_image, read_volume
from meditok.data.volumes import normalize_mri
from meditok.errors import InvalidInputError

TASKS = ("segmentation", "denoising", "inpainting", "synthesis")
#: MVG §4.1: every CT is windowed to [-100, 200] HU.
CT_WINDOW = (-100.0, 200.0)
DRIVE_TO_CHASE_SCALE = 0.586


@dataclass
class Item:
    """One 2-D image of a source (a photograph, or one slice of a volume)."""

    image: np.ndarray                                   #: H x W x 3 float32 in [0, 1]
    case: str                                           #: image / volume id
    labels: dict[str, np.ndarray] = field(default_factory=dict)  #: class -> bool H x W
    region: np.ndarray | None = None                    #: where metrics count (fundus FOV)
    index: int = 0                                      #: slice index inside its volume
    n_slices: int = 1                                   #: slices of that volume
    hu: np.ndarray | None = None                        #: CT: the HU slice (H x W)
    pixel_mm: float = 1.0                               #: in-plane pixel size (CT noise model)
    target: np.ndarray | None = None                    #: synthesis: the paired target image


@dataclass
class Source:
    """One dataset as the in-context task it serves."""

    name: str
    task: str
    modality: str
    train: list[Item]
    test: list[Item]
    #: Items prompts are drawn from at test time (default: ``train``).
    prompts: list[Item] | None = None
    #: Native px → model px for segmentation crops and tiled inference.
    scale: float = 1.0
    licence: str = ""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise InvalidInputError(f"source {self.name}: unknown task {self.task!r}")
        if self.prompts is None:
            self.prompts = self.train

    @property
    def classes(self) -> list[str]:
        names: list[str] = []
        for it in self.train + self.test + (self.prompts or []):
            names += [k for k in it.labels if k not in names]
        return names


def rgb(a: np.ndarray) -> np.ndarray:
    """Grey ``H x W`` or ``H x W x C`` → ``H x W x 3`` float32."""
    a = np.asarray(a, np.float32)
    if a.ndim == 2:
        return np.repeat(a[..., None], 3, -1)
    return np.ascontiguousarray(a[..., :3])


def _u8(path: Path) -> np.ndarray:
    return read_image(path).array / 255.0


# ----------------------------------------------------------------------------- fundus
def drive(root: Path) -> Source:
    """DRIVE vessels (research use only)."""
    def split(name: str, tag: str) -> list[Item]:
        out = []
        for p in sorted((root / name / "images").glob(f"*_{tag}.tif")):
            i = p.name.split("_")[0]
            ves = _u8(root / name / "1st_manual" / f"{i}_manual1.gif") > 0.5
            fov = _u8(root / name / "mask" / f"{i}_{tag}_mask.gif") > 0.5
            out.append(Item(rgb(_u8(p)), f"drive_{i}", {"vessel": ves}, fov))
        return out
    train, test = split("training", "training"), split("testing", "test")
    if not train or not test:
        raise InvalidInputError(f"{root}: no DRIVE training/testing images found")
    return Source("drive", "segmentation", "fundus", train, test, scale=1.0,
                  licence="DRIVE: research use only (challenge terms)")


def chase(root: Path, prompt_case: str = "01L") -> Source:
    """CHASE_DB1 (licence unverified), held out: 1stHO is the ground truth; no FOV masks ship,
    the FOV is estimated as red > 0.1 (JPEG noise is ~0.03)."""
    items = []
    for p in sorted(root.glob("Image_*.jpg")):
        img = rgb(_u8(p))
        stem = p.with_suffix("")
        l1 = _u8(Path(f"{stem}_1stHO.png")) > 0.5
        items.append(Item(img, "chase_" + p.stem[6:], {"vessel": l1}, img[..., 0] > 0.1))
    if not items:
        raise InvalidInputError(f"{root}: no CHASE_DB1 images found")
    prompts = [it for it in items if it.case == f"chase_{prompt_case}"]
    test = [it for it in items if it.case != f"chase_{prompt_case}"]
    return Source("chase", "segmentation", "fundus", [], test, prompts=prompts, scale=DRIVE_TO_CHASE_SCALE,
                  licence="CHASE_DB1: unverified (believed CC BY 4.0)")


# ----------------------------------------------------------------------------- SAM-Med2D demo
_COMPONENT = re.compile(r"_(\d{3})\.png$")


def sam_ct(root: Path) -> Source:
    """SAM-Med2D demo CT organs (already windowed grey PNGs); connected components merged.
    s0619_32 moves to training (no training image shares its classes), the test is amos_0004_75."""
    strip = lambda s: s.removeprefix("data_demo/")
    masks: dict[str, list[str]] = {}
    for img, ms in json.loads((root / "image2label_train.json").read_text()).items():
        masks.setdefault(strip(img), []).extend(strip(m) for m in ms)
    for m, img in json.loads((root / "label2image_test.json").read_text()).items():
        masks.setdefault(strip(img), []).append(strip(m))
    items = {}
    for img_path, ms in sorted(masks.items()):
        stem = Path(img_path).stem
        labels: dict[str, np.ndarray] = {}
        for m in sorted(set(ms)):
            name = _COMPONENT.sub("", Path(m).name[len(stem) + 1:])
            a = _u8(root / m) > 0.5
            labels[name] = labels[name] | a if name in labels else a
        image = _u8(root / img_path)
        items[stem] = Item(rgb(image[..., 0] if image.ndim == 3 else image), "sam_" + stem, labels)
    test_ids = ["amos_0004_75"]
    train = [v for k, v in items.items() if k not in test_ids]
    test = [items[k] for k in test_ids if k in items]
    return Source("sam_ct", "segmentation", "ct", train, test, scale=0.25,
                  licence="SAM-Med2D demo: AMOS / TotalSegmentator CC BY 4.0")


# ----------------------------------------------------------------------------- NRRD volumes
NRRD_FILES = {"brain1": ("brain1_image.nrrd", "brain1_label.nrrd"),
              "brain2": ("brain2_image.nrrd", "brain2_label.nrrd"),
              "breast1": ("breast1_image.nrrd", "breast1_label.nrrd"),
              "prostate": ("prostate_phantom_subvolume.nrrd", "prostate_phantom_subvolume-label.nrrd")}
PROSTATE_CLASSES = {1: "prostate_l1", 7: "prostate_l7", 8: "prostate_l8", 9: "prostate_l9"}


def _mr_volume(root: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    fi, fl = NRRD_FILES[name]
    img = read_volume(root / fi, modality="mri")
    lab = read_volume(root / fl)
    if img.array.shape != lab.array.shape:
        raise InvalidInputError(f"{root / fl}: label shape {lab.array.shape} != image {img.array.shape}")
    unit = (normalize_mri(img.array) + 1.0) / 2.0  # per-volume percentiles 0.5 / 99.5 -> [0, 1]
    return unit.astype(np.float32), np.rint(lab.array).astype(np.int64)


def _label_slices(name: str, unit: np.ndarray, lab: np.ndarray, classes: dict[int, str],
                  zs: list[int] | None = None) -> list[Item]:
    out, n = [], unit.shape[0]
    for z in (range(n) if zs is None else zs):
        labels = {cls: lab[z] == v for v, cls in classes.items() if (lab[z] == v).any()}
        if labels:
            out.append(Item(rgb(unit[z]), name, labels, index=z, n_slices=n))
    return out


def mr_lesions(root: Path) -> list[Source]:
    """brain (brain1 → brain2), prostate phantom (z 0–8 → z 10–12), breast1 (train only)."""
    vols = {k: _mr_volume(root, k) for k in NRRD_FILES}
    brain = Source("brain_mr", "segmentation", "mri",
                   _label_slices("brain1", *vols["brain1"], {1: "brain_lesion"}),
                   _label_slices("brain2", *vols["brain2"], {1: "brain_lesion"}), scale=0.5,
                   licence="pyradiomics test data: origin of the scans not stated")
    pu, pl = vols["prostate"]
    prostate = Source("prostate_mr", "segmentation", "mri",
                      _label_slices("prostate", pu, pl, PROSTATE_CLASSES, list(range(9))),
                      _label_slices("prostate", pu, pl, PROSTATE_CLASSES, [10, 11, 12]), scale=1.0,
                      licence="pyradiomics test data: origin of the scans not stated")
    breast = Source("breast_mr", "segmentation", "mri", _label_slices("breast1", *vols["breast1"], {1: "breast_lesion"}),
                    [], scale=1.0, licence="pyradiomics test data: origin of the scans not stated")
    return [brain, prostate, breast]


def mr_slices(root: Path, min_mean: float = 0.05) -> Source:
    """MR slices for denoising / inpainting: brain1, breast1, prostate train; brain2 test."""
    def slices(name: str) -> list[Item]:
        unit, _ = _mr_volume(root, name)
        n = unit.shape[0]
        return [Item(rgb(unit[z]), name, index=z, n_slices=n) for z in range(n) if unit[z].mean() > min_mean]
    train = slices("brain1") + slices("breast1") + slices("prostate")
    return Source("mr_slices", "denoising", "mri", train, slices("brain2"),
                  licence="pyradiomics test data: origin of the scans not stated")


# ----------------------------------------------------------------------------- CT volumes
def _ct_item(hu: np.ndarray, case: str, z: int, n: int, pixel_mm: float) -> Item:
    lo, hi = CT_WINDOW
    unit = np.clip((hu - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    return Item(rgb(unit), case, index=z, n_slices=n, hu=hu.astype(np.float32), pixel_mm=pixel_mm)


def ct_slices(root: Path, min_body: float = 0.25) -> Source:
    """CT for denoising / inpainting: the NIfTI's axial slices with ≥ 25 % body (> −500 HU)
    train, the 20 DICOM slices (another scan: their z ranges do not overlap) test."""
    nii = read_volume(root / "example_ct.nii.gz", modality="ct")
    n = nii.array.shape[0]
    train = [_ct_item(nii.array[z], "ct_nifti", z, n, float(nii.spacing[1])) for z in range(n)
             if (nii.array[z] > -500).mean() >= min_body]
    dcm = read_volume(root / "example_ct_dicom", modality="ct")
    m = dcm.array.shape[0]
    test = [_ct_item(dcm.array[z], "ct_dicom", z, m, float(dcm.spacing[1])) for z in range(m)]
    return Source("ct_slices", "denoising", "ct", train, test,
                  licence="TotalSegmentator test files: origin of the scan not stated")


def synthetic_pairs(n: int = 6, size: int = 48, seed: int = 0) -> Source:
    """Paired images for the cross-modal synthesis code path. **No truly paired multi-contrast
    data exists in ../shared/data**, so this is a synthetic stand-in (the "target contrast" is
    an intensity inversion of smooth blobs) used only by tests."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    items = []
    for i in range(n):
        img = np.zeros((size, size), np.float32)
        for _ in range(3):
            cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.08, 0.2)
            img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)).astype(np.float32)
        img = np.clip(img, 0, 1)
        items.append(Item(rgb(img), f"synthetic_{i}", target=rgb(1.0 - img)))
    return Source("synthetic_pairs", "synthesis", "synthetic", items[: n - 2], items[n - 2:],
                  licence="generated")


def load_sources(data_root: str | Path, names: list[str] | None = None) -> dict[str, Source]:
    """The sources under ``data_root`` (``../shared/data``) by name (default: all real ones)."""
    root = Path(data_root)
    if not root.is_dir():
        raise InvalidInputError(f"{root}: data folder not found")
    builders = {
        "drive": lambda: [drive(root / "retina_vessels" / "DRIVE")],
        "chase": lambda: [chase(root / "retina_vessels" / "CHASE_DB1")],
        "sam_ct": lambda: [sam_ct(root / "sam_med2d_demo")],
        "mr_lesions": lambda: mr_lesions(root / "radiomics_nrrd"),
        "ct_slices": lambda: [ct_slices(root / "ct_volume")],
        "mr_slices": lambda: [mr_slices(root / "radiomics_nrrd")],
        "synthetic_pairs": lambda: [synthetic_pairs()],
    }
    groups = {"brain_mr": "mr_lesions", "prostate_mr": "mr_lesions", "breast_mr": "mr_lesions"}
    wanted = names or [k for k in builders if k != "synthetic_pairs"]
    out: dict[str, Source] = {}
    for name in wanted:
        key = groups.get(name, name)
        if key not in builders:
            raise InvalidInputError(f"unknown source {name!r}; choose from {sorted(set(builders) | set(groups))}")
        if name in out:
            continue
        for src in builders[key]():
            if name == key or src.name == name:
                out[src.name] = src
    return out
