"""What each source of the offline corpus contributes: items, modality, caption, label.

A *job* is a small picklable dict processed in a worker by :func:`meditok.data.corpus.run_job`.
Captions say only what is really known ("This is a {modality} image ..."); modality names are
the paper's eight (:data:`meditok.data.manifest.MODALITIES`) or ``unknown``.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from meditok.utils.lazy import package_dir

CHUNK = 64
#: Manifest spelling of the reader's modality hints.
HINT_TO_MODALITY = {"ct": "CT", "mri": "MRI", "xray": "X-ray", "ultrasound": "ultrasound",
                    "dermoscopy": "dermoscopy", "endoscopy": "endoscopy", "fundus": "fundus",
                    "pathology": "pathology"}
ARTICLE = {"MRI": "an", "X-ray": "an", "ultrasound": "an", "endoscopy": "an"}


def caption(modality: str, detail: str = "", suffix: str = "") -> str:
    """``This is a CT image of the chest, normal.`` style captions."""
    if modality == "unknown":
        head = "This is a radiology image"
    else:
        head = f"This is {ARTICLE.get(modality, 'a')} {modality} image"
    text = head + (f" {detail}" if detail else "")
    return text + (f", {suffix}" if suffix else "") + "."


def _chunks(kind: str, dataset: str, items: list[dict], **common: Any) -> list[dict]:
    return [{"kind": kind, "dataset": dataset, "items": items[i:i + CHUNK], **common,
             "job_id": f"{dataset}-{i // CHUNK:04d}"} for i in range(0, len(items), CHUNK)]


# ------------------------------------------------------------------ per-source job builders
def medmnist_jobs(shared: Path) -> list[dict]:
    specs = {
        "breastmnist": ("ultrasound", "of a breast", {0: "malignant", 1: "normal or benign"}),
        "pneumoniamnist": ("X-ray", "of the chest", {0: "normal", 1: "showing pneumonia"}),
    }
    jobs = []
    for name, (modality, detail, classes) in specs.items():
        path = shared / "medmnist" / f"{name}.npz"
        if path.exists():
            for split in ("train", "val", "test"):
                jobs.append({"kind": "medmnist", "dataset": name, "path": str(path), "split": split,
                             "modality": modality, "detail": detail,
                             "classes": {str(k): v for k, v in classes.items()},
                             "job_id": f"{name}-{split}"})
    return jobs


def isic_jobs(shared: Path) -> list[dict]:
    folder = shared / "isic_cc0_550"
    items = []
    for jpg in sorted(folder.glob("ISIC_*.jpg")):
        info: dict = {}
        try:
            info = json.loads(jpg.with_suffix(".json").read_text())["meta"]["clinical"]
        except (OSError, KeyError, ValueError):
            pass
        diagnosis, bm = info.get("diagnosis"), info.get("benign_malignant")
        suffix = ", ".join(s for s in (diagnosis, bm) if s)
        label = {"benign": 0, "malignant": 1}.get(bm, -1)
        items.append({"src": str(jpg), "name": jpg.stem, "modality": "dermoscopy",
                      "caption": caption("dermoscopy", "of a skin lesion", suffix), "label": label})
    return _chunks("files", "isic", items)


_MOD_WORDS = [("MRI", r"\b(mri|mr|flair|t1|t2|dwi|diffusion weighted)\b"),
              ("CT", r"\bct\b"),
              ("X-ray", r"\b(x-ray|xray|x ray|cxr|radiograph|plain film)\b"),
              ("ultrasound", r"\b(ultrasound|sonograph\w*)\b")]


def _modalities_in(text: str) -> set[str]:
    return {m for m, pat in _MOD_WORDS if re.search(pat, text)}


def vqa_rad_modality(questions: list[dict]) -> str:
    """Modality of a VQA-RAD image from its QA pairs, or ``unknown``.

    Evidence: answers to "what modality/type of imaging" questions; "is this a CT/MRI/..."
    answered yes; questions referring to "this CT / this MRI / this x-ray". Conflicting or
    absent evidence gives ``unknown`` (the caption then says "radiology image").
    """
    votes: Counter = Counter()
    for q in questions:
        text, ans = q["question"].lower(), str(q["answer"]).lower().strip()
        if re.search(r"modality|type of imag|kind of imag|type of image", text) and \
                not re.search(r"\bwould\b|\bbest\b|\bhow long\b", text):
            votes.update(_modalities_in(ans))
        elif re.match(r"^(is|was) this (an? )?(image )?(a |an )?", text) and ans == "yes" and \
                len(_modalities_in(text)) == 1:
            votes.update(_modalities_in(text))
        else:
            found = re.findall(r"\b(?:this|the) (ct|mri|x-ray|xray|radiograph|cxr)\b", text)
            votes.update(_modalities_in(" ".join(found)))
    return next(iter(votes)) if len(votes) == 1 else "unknown"


def vqa_rad_jobs(shared: Path) -> list[dict]:
    folder = shared / "vqa_rad"
    qs: list[dict] = []
    for name in ("trainset.json", "testset.json"):
        if (folder / name).exists():
            qs += json.loads((folder / name).read_text())
    by_image: dict[str, list[dict]] = {}
    for q in qs:
        by_image.setdefault(q["image_name"], []).append(q)
    organ_words = {"HEAD": "of the head", "CHEST": "of the chest", "ABD": "of the abdomen"}
    items = []
    for img in sorted((folder / "images").glob("*.jpg")):
        qlist = by_image.get(img.name, [])
        organs = {q["image_organ"].strip().upper() for q in qlist}
        detail = organ_words.get(next(iter(organs)), "") if len(organs) == 1 else ""
        modality = vqa_rad_modality(qlist)
        items.append({"src": str(img), "name": img.stem, "modality": modality,
                      "caption": caption(modality, detail), "label": -1})
    return _chunks("files", "vqa_rad", items)


def fundus_jobs(shared: Path) -> list[dict]:
    root = shared / "retina_vessels"
    items = []
    for f in sorted((root / "DRIVE").glob("*/images/*.tif")):
        items.append({"src": str(f), "name": f"drive_{f.stem}", "modality": "fundus",
                      "caption": caption("fundus", "of the retina"), "label": -1, "dataset": "drive"})
    for f in sorted((root / "CHASE_DB1").glob("Image_*.jpg")):
        items.append({"src": str(f), "name": f"chase_{f.stem}", "modality": "fundus",
                      "caption": caption("fundus", "of the retina"), "label": -1, "dataset": "chase_db1"})
    return _chunks("files", "fundus", items)


def sam_med2d_jobs(shared: Path) -> list[dict]:
    folder = shared / "sam_med2d_demo"
    masks: dict[str, list[str]] = {}
    try:
        for k, v in json.loads((folder / "image2label_train.json").read_text()).items():
            masks[Path(k).name] = [Path(m).name for m in v]
    except (OSError, ValueError):
        pass
    items = []
    for f in sorted((folder / "images").glob("*.png")):
        names = " ".join(masks.get(f.name, []))
        region = ("of the chest" if re.search(r"heart|lung", names) else
                  "of the abdomen" if re.search(r"liver|spleen|kidney|pancrea", names) else
                  "of the pelvis" if re.search(r"hip|femur|gluteus", names) else "")
        items.append({"src": str(f), "name": f.stem, "modality": "CT",
                      "caption": caption("CT", region), "label": -1})
    return _chunks("files", "sam_med2d", items)


def volume_jobs(shared: Path) -> list[dict]:
    jobs = []
    ct = shared / "ct_volume"
    # The example volume was published downsampled to 3 mm (≈100-120 px per side): the
    # 128-px QC floor would drop every slice, so this source uses a 96-px floor (documented).
    if (ct / "example_ct.nii.gz").exists():
        jobs.append({"kind": "volume", "dataset": "totalsegmentator", "src": str(ct / "example_ct.nii.gz"),
                     "name": "example_ct", "modality": "CT", "detail": "", "qc_min_side": 96,
                     "job_id": "totalsegmentator-example_ct"})
    if (ct / "example_ct_dicom").is_dir():
        jobs.append({"kind": "volume", "dataset": "totalsegmentator_dicom", "src": str(ct / "example_ct_dicom"),
                     "name": "series", "modality": "CT", "detail": "", "job_id": "totalsegmentator-dicom"})
    for n in ("brain1", "brain2"):
        f = shared / "radiomics_nrrd" / f"{n}_image.nrrd"
        if f.exists():
            jobs.append({"kind": "volume", "dataset": "pyradiomics", "src": str(f), "name": n,
                         "modality": "MRI", "detail": "of the brain", "job_id": f"pyradiomics-{n}"})
    nl = package_dir("nilearn")
    t1 = nl / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz" if nl else None
    if t1 is not None and t1.exists():
        jobs.append({"kind": "volume", "dataset": "nilearn_mni152", "src": str(t1), "name": "mni152_t1",
                     "modality": "MRI", "detail": "of the brain (T1-weighted template)",
                     "job_id": "nilearn-mni152"})
    nb = package_dir("nibabel")
    anat = nb / "tests" / "data" / "anatomical.nii" if nb else None
    if anat is not None and anat.exists():
        jobs.append({"kind": "volume", "dataset": "nibabel_sample", "src": str(anat), "name": "anatomical",
                     "modality": "MRI", "detail": "of the head", "job_id": "nibabel-anatomical"})
    return jobs


def unknown_volume_rejects(shared: Path) -> list[dict]:
    """Volumes left out because their modality is not stated anywhere we can check."""
    out = []
    for n in ("breast1_image.nrrd", "prostate_phantom_subvolume.nrrd"):
        if (shared / "radiomics_nrrd" / n).exists():
            out.append({"source": f"radiomics_nrrd/{n}", "dataset": "pyradiomics",
                        "reason": "modality_unknown", "detail": "scan modality not documented"})
    return out


def package_sample_jobs() -> list[dict]:
    """Medical samples shipped in pydicom-data / pydicom, nibabel (DICOM) and scikit-image."""
    items = []
    try:
        from pydicom.data import get_testdata_files

        files = sorted(set(get_testdata_files("*.dcm")))
    except Exception:  # pydicom-data absent or offline download failures
        files = []
    nb = package_dir("nibabel")
    if nb is not None:
        files += sorted(str(p) for p in (nb / "tests" / "data").glob("*.dcm"))
    for f in files:  # modality from the DICOM header; names from content hashes (no UIDs)
        items.append({"src": str(f), "name": None, "modality": "from_dicom", "caption": "",
                      "label": -1, "dataset": "dicom_samples"})
    sk = package_dir("skimage")
    if sk is not None:
        if (sk / "data" / "retina.jpg").exists():
            items.append({"src": str(sk / "data" / "retina.jpg"), "name": "skimage_retina",
                          "modality": "fundus", "caption": caption("fundus", "of the retina"),
                          "label": -1, "dataset": "skimage"})
        if (sk / "data" / "ihc.png").exists():
            items.append({"src": str(sk / "data" / "ihc.png"), "name": "skimage_ihc",
                          "modality": "pathology",
                          "caption": caption("pathology", "", "immunohistochemistry staining"),
                          "label": -1, "dataset": "skimage"})
    return _chunks("files", "package_samples", items)


def folder_jobs(folders: list[Path], modality: str = "from_dicom") -> list[dict]:
    """User folders: every supported file; DICOM modality from its header, names from hashes."""
    from meditok.data.readers import iter_image_files

    items = [{"src": str(f), "name": None, "modality": modality, "caption": "", "label": -1,
              "dataset": "extra"} for f in iter_image_files(folders)]
    return _chunks("files", "extra", items)


def manifest_modality(value: str, where: str) -> str:
    """A user's modality spelling (``US``, ``x-ray``, ``MR`` …) → the manifest's name."""
    from meditok.data.modalities import modality_key
    from meditok.errors import InvalidInputError

    key = modality_key(value)
    if key not in HINT_TO_MODALITY:
        raise InvalidInputError(f"{where}: unknown modality {value!r}; use one of "
                                f"{sorted(HINT_TO_MODALITY)} (or a DICOM code such as CT, MR, US)")
    return HINT_TO_MODALITY[key]


def parse_extra(spec: str | Path) -> tuple[Path, str]:
    """``FOLDER=MODALITY`` → (folder, manifest modality); a bare path keeps ``from_dicom``
    (the DICOM header decides; other files are rejected as ``modality_unknown``)."""
    text = str(spec)
    path, sep, mod = text.rpartition("=")
    if sep and mod and not Path(text).exists():
        return Path(path), manifest_modality(mod, f"--extra {text}")
    return Path(text), "from_dicom"


def read_extra_csv(path: str | Path) -> list[dict]:
    """Items of an ``--extra-csv`` file: columns ``path, modality`` and optionally ``caption``,
    ``label``; relative paths are relative to the CSV's folder."""
    import csv

    from meditok.errors import InvalidInputError

    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInputError(f"{path}: cannot read the extra-files CSV ({exc})") from None
    if not rows or not {"path", "modality"} <= set(rows[0]):
        raise InvalidInputError(f"{path}: needs the columns 'path' and 'modality'")
    items = []
    for n, row in enumerate(rows, start=2):
        src = Path(row["path"])
        src = src if src.is_absolute() else path.parent / src
        modality = manifest_modality(row["modality"], f"{path}:{n}")
        try:
            label = int(row.get("label") or -1)
        except ValueError:
            raise InvalidInputError(f"{path}:{n}: label {row.get('label')!r} is not an integer") from None
        items.append({"src": str(src), "name": None, "modality": modality,
                      "caption": (row.get("caption") or "").strip() or caption(modality),
                      "label": label, "dataset": "extra"})
    return items


def extra_jobs(extra: list[str | Path], extra_csv: str | Path | None = None) -> list[dict]:
    """Jobs of the user's own data: ``FOLDER[=MODALITY]`` entries and an optional CSV."""
    from meditok.data.readers import iter_image_files

    items = []
    for spec in extra:
        folder, modality = parse_extra(spec)
        cap = caption(modality) if modality != "from_dicom" else ""
        items += [{"src": str(f), "name": None, "modality": modality, "caption": cap, "label": -1,
                   "dataset": "extra"} for f in iter_image_files([folder])]
    if extra_csv is not None:
        items += read_extra_csv(extra_csv)
    return _chunks("files", "extra", items)


SOURCES = {"medmnist": medmnist_jobs, "isic": isic_jobs, "vqa_rad": vqa_rad_jobs,
           "fundus": fundus_jobs, "sam_med2d": sam_med2d_jobs, "volumes": volume_jobs,
           "package_samples": lambda shared: package_sample_jobs()}
