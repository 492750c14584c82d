"""Golden values of the bundled ``meditok-small`` on real bundled samples.

Written before the package redesign: any change anywhere in the chain (reader → intensity
contract → encoder → quantiser → decoder) that alters a token or a reconstruction value of
these real images fails here. Only losslessly stored inputs are pinned (DICOM, NIfTI, PNG),
so a different JPEG decoder cannot move the goal posts.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

# name -> (reader modality, sha256 of the int64 tokens, sum of the input, sum of the
# reconstruction, reconstruction[0, :, 10, 20], reconstruction[0, 0, 32, 32])
GOLDEN = {
    "CT_small.dcm": ("ct", "6e8171efccc15916", -1463.906005859375, -1556.7406005859375,
                     (-0.05932435020804405, -0.07535871118307114, -0.057211704552173615),
                     0.5629821419715881),
    "MR_small.dcm": ("mri", "03ae7d41105cd898", -6913.3134765625, -7290.88818359375,
                     (-0.7783529162406921, -0.7858089804649353, -0.7910078167915344),
                     -0.9758211970329285),
    "RG1_UNCI.dcm": ("xray", "b82ddff9bfe54f7a", 5982.220703125, 5715.5869140625,
                     (-0.06557220965623856, -0.06923186033964157, -0.06490372121334076),
                     0.7552791237831116),
    "US1_UNCI.dcm": ("ultrasound", "49fb9235e4432658", -8944.1875, -9169.7734375,
                     (-0.9836587309837341, -0.983738899230957, -0.9928151965141296),
                     -0.4313584864139557),
    "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz": (
        "mri", "45b3d13804e67457", -4134.9326171875, -4094.27783203125,
        (-0.9665156602859497, -0.975979208946228, -0.884778618812561), -0.3392278552055359),
    "ihc.png": ("pathology", "3657a05f1ccd354d", 3162.3720703125, 3378.4306640625,
                (0.18471688032150269, -0.07738623023033142, -0.17184963822364807),
                0.7864189147949219),
}


def _sample_path(name: str) -> Path | None:
    from meditok.utils.lazy import package_dir

    if name.endswith(".dcm"):
        try:
            from pydicom.data import get_testdata_file
        except ImportError:
            return None
        found = get_testdata_file(name, download=False)
        return Path(found) if found else None
    if name.endswith(".nii.gz"):
        root = package_dir("nilearn")
        path = root / "datasets" / "data" / name if root else None
    else:
        root = package_dir("skimage")
        path = root / "data" / name if root else None
    return path if path is not None and path.exists() else None


@pytest.fixture(scope="module")
def shipped():
    from meditok import MedITok

    return MedITok.from_pretrained("meditok-small")


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_bundled_model_tokens_and_reconstruction_are_pinned(name, shipped, one_thread):
    from meditok.data.preprocess import load_image

    path = _sample_path(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install 'meditok[samples]')")
    modality, token_hash, x_sum, r_sum, r_pixels, r_center = GOLDEN[name]
    x = load_image(path, shipped.config.preprocess, modality=modality).unsqueeze(0)
    assert float(x.sum()) == pytest.approx(x_sum, abs=1e-2)
    tokens = shipped.tokenize(x)
    digest = hashlib.sha256(tokens.numpy().astype("<i8").tobytes()).hexdigest()
    assert digest[:16] == token_hash, f"tokens of {name} changed"
    rec = shipped.detokenize(tokens)
    assert float(rec.sum()) == pytest.approx(r_sum, abs=1e-2)
    assert rec[0, :, 10, 20].tolist() == pytest.approx(list(r_pixels), abs=1e-4)
    assert float(rec[0, 0, 32, 32]) == pytest.approx(r_center, abs=1e-4)
