"""Imaging modality names: one canonical key per modality, whatever spelling a source uses.

Manifests store the paper's display names (``CT``, ``MRI``, ``X-ray`` …), DICOM headers give
codes (``CT``, ``MR``, ``CR`` …), users type ``xray`` or ``x-ray``. Everything that branches on
the modality (the CT intensity rule, conditioning labels, per-modality tables) goes through
:func:`modality_key`.
"""
from __future__ import annotations

#: Canonical key → display name (manifest spelling). The paper's eight modalities first.
MODALITIES: dict[str, str] = {
    "ct": "CT", "mri": "MRI", "xray": "X-ray", "ultrasound": "ultrasound",
    "dermoscopy": "dermoscopy", "endoscopy": "endoscopy", "fundus": "fundus",
    "pathology": "pathology",
}
_ALIASES = {
    "x-ray": "xray", "x_ray": "xray", "radiograph": "xray", "cr": "xray", "dx": "xray",
    "mr": "mri", "us": "ultrasound", "histopathology": "pathology", "histology": "pathology",
    "fundus photography": "fundus", "fundus-photography": "fundus", "dermatoscopy": "dermoscopy",
}
#: Spellings meaning "not known".
UNKNOWN = ("", "unknown", "none", "null", "auto")


def modality_key(name: str | None) -> str | None:
    """``'X-ray'``, ``'xray'``, ``'CR'`` → ``'xray'``; unknown / empty → ``None``.

    Names outside the known list are returned lower-cased (a user's own modality label).
    """
    if name is None:
        return None
    text = str(name).strip().lower()
    if text in UNKNOWN:
        return None
    return _ALIASES.get(text, text)


def display_name(key: str | None) -> str:
    """Canonical key → the manifest / paper spelling (``'xray'`` → ``'X-ray'``)."""
    k = modality_key(key)
    return MODALITIES.get(k, k) if k else "unknown"
