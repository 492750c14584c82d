"""What the batch verbs process: input items with stable names, found before anything is read.

:func:`collect_inputs` turns the files and folders a user gives into :class:`InputItem` s:

* ``image`` — a 2D file (PNG/JPEG/TIFF/BMP/GIF/WebP, single-frame DICOM);
* ``volume`` — a NIfTI / NRRD / MHA file (every slice, not the middle one);
* ``series`` — the single-frame DICOM files of one series in one folder (one volume);
* ``multiframe`` — a multi-frame DICOM (a volume, colour frames, or a tiled slide).

Every item gets its name up front — the path relative to the input root it was found under
(``a/x.png`` for ``in/a/x.png`` given as ``in``) — so a file that later fails to read never
shifts another file's name. :func:`output_names` makes them unique output stems, and with
``pseudonymize`` replaces them with content hashes (the hash → path map then goes to a
local-only file, :func:`write_local_map`, never into the outputs themselves).
"""
from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from meditok.data.readers import IMAGE_EXTS, ITK_EXTS, NIFTI_EXTS, NON_IMAGE_EXTS, NRRD_EXTS, file_ext
from meditok.data.dicom import is_dicom, series_groups
from meditok.errors import ImageReadError
from meditok.utils.io import atomic_write_text, truncate_name

VOLUME_EXTS = NIFTI_EXTS + NRRD_EXTS + ITK_EXTS
#: Longest output stem in UTF-8 bytes (leaves room for suffixes such as ``_axial_recon.nii.gz``
#: and the atomic writer's temporary name within the 255-byte file-name limit).
MAX_STEM_BYTES = 180
#: The local-only pseudonym → source map (inside an output folder).
LOCAL_MAP = Path("_local") / "sources.csv"


@dataclass
class InputItem:
    """One unit of work of a batch verb."""

    path: Path                 #: the file, or the folder of a DICOM series
    name: str                  #: POSIX path relative to the input root (the item's identity)
    kind: str = "image"        #: image / volume / series / multiframe
    files: tuple[Path, ...] = field(default_factory=tuple)  #: a series' DICOM files
    _cid: str | None = field(default=None, repr=False, compare=False)

    def content_id(self) -> str:
        """16 hex digits of the SHA-256 of the bytes (a series: of its files' hashes in order)."""
        if self._cid is None:
            self._cid = self._hash()
        return self._cid

    def _hash(self) -> str:
        h = hashlib.sha256()
        try:
            for f in self.files or (self.path,):
                with open(f, "rb") as fh:
                    fh_hash = hashlib.sha256()
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        fh_hash.update(block)
                h.update(fh_hash.digest())
        except OSError:  # unreadable (the reader reports it later): still a pseudonym
            h = hashlib.sha256(b"unreadable:" + self.name.encode("utf-8"))
        return h.hexdigest()[:16]


def _multiframe(path: Path) -> bool:
    from meditok.data.dicom_frames import number_of_frames

    return number_of_frames(path) > 1


def _file_item(f: Path, name: str, volumes: bool) -> InputItem:
    ext = file_ext(f)
    if volumes and ext in VOLUME_EXTS:
        return InputItem(f, name, "volume")
    dicom = ext in (".dcm", ".dicom", ".ima") or (ext not in IMAGE_EXTS and is_dicom(f))
    if volumes and dicom and _multiframe(f):
        return InputItem(f, name, "multiframe")
    return InputItem(f, name, "image")


def collect_inputs(inputs: Sequence[str | Path] | str | Path, volumes: bool = True) -> list[InputItem]:
    """Items of the given files and folders (folders searched recursively; hidden files
    skipped). With ``volumes=False`` every file is a 2D ``image`` item (a volume's middle
    slice, a multi-frame file's middle frame), as :func:`meditok.data.readers.read_image`
    reads it. A missing input raises :class:`ImageReadError`."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    items: dict[Path, InputItem] = {}
    for given in inputs:
        root = Path(given)
        if not root.exists():
            raise ImageReadError(root, "no such file or directory")
        if root.is_file():
            items.setdefault(root, _file_item(root, root.name, volumes))
            continue
        files = []
        for f in sorted(root.rglob("*")):
            if not f.is_file() or any(part.startswith(".") for part in f.relative_to(root).parts):
                continue
            ext = file_ext(f)
            if ext in IMAGE_EXTS or (ext not in NON_IMAGE_EXTS and is_dicom(f)):
                files.append(f)
        in_series: set[Path] = set()
        if volumes:
            dicoms = [f for f in files if file_ext(f) in (".dcm", ".dicom", ".ima") or
                      (file_ext(f) not in IMAGE_EXTS and is_dicom(f))]
            groups = [g for g in series_groups(dicoms) if len(g) > 1]
            per_folder: dict[Path, int] = {}
            for group in groups:
                folder = group[0].parent
                per_folder[folder] = per_folder.get(folder, 0) + 1
                rel = folder.relative_to(root).as_posix() if folder != root else root.name
                name = rel if per_folder[folder] == 1 else f"{rel}/series{per_folder[folder]}"
                items.setdefault(folder / f"#series{per_folder[folder]}",
                                 InputItem(folder, name, "series", tuple(group)))
                in_series.update(group)
        for f in files:
            if f not in in_series:
                items.setdefault(f, _file_item(f, f.relative_to(root).as_posix(), volumes))
    return sorted(items.values(), key=lambda it: (it.name, str(it.path)))


def strip_ext(name: str) -> str:
    """``a/x`` for ``a/x.nii.gz`` (known image extensions only)."""
    lower = name.lower()
    for ext in sorted(IMAGE_EXTS, key=len, reverse=True):
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return name


def output_names(items: Sequence[InputItem], pseudonymize: bool = False,
                 suffixes: Sequence[str] | None = None) -> list[str]:
    """One unique output stem per item, in order (``a/x`` for ``a/x.png``; subfolders kept).

    ``suffixes[i]`` (e.g. ``_coronal``) is appended before uniqueness is checked. Collisions
    (``a/x.png`` and ``a/x.jpg``, or a real ``x_1.png`` next to two ``x``) get the first free
    ``_N`` suffix; over-long names are shortened with a hash so that every file name stays
    within the file-system limit. ``pseudonymize``: the content hash alone (no folders).
    """
    taken: set[str] = set()
    out = []
    for i, it in enumerate(items):
        if pseudonymize:
            parts = [it.content_id()]
        else:
            parts = [p for p in strip_ext(it.name).split("/") if p not in ("", ".", "..")] or ["image"]
        if suffixes is not None and suffixes[i]:
            parts[-1] += suffixes[i]
        parts = [_short(p) for p in parts]
        stem = "/".join(parts)
        candidate, n = stem, 0
        while candidate.lower() in taken:
            n += 1
            candidate = f"{stem}_{n}"
        taken.add(candidate.lower())
        out.append(candidate)
    return out


def _short(part: str) -> str:
    if len(part.encode("utf-8")) <= MAX_STEM_BYTES:
        return part
    digest = hashlib.sha256(part.encode("utf-8")).hexdigest()[:8]
    return f"{truncate_name(part, MAX_STEM_BYTES - 9)}-{digest}"


def write_local_map(path: str | Path, items: Sequence[InputItem], names: Sequence[str]) -> Path:
    """Write the pseudonym → source path map (CSV) — for the user's machine only: it is the one
    place the source paths are kept, and it is never part of the shareable outputs."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["pseudonym", "source"])
    for it, name in zip(items, names):
        writer.writerow([name, str(it.path.resolve())])
    atomic_write_text(path, buf.getvalue())
    return Path(path)
