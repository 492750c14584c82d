"""3D-by-slices evaluation on the real example CT (NIfTI and DICOM)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

nib = pytest.importorskip("nibabel")

from meditok.tokenizer.config import preset  # noqa: E402
from meditok.tokenizer.bench.volume import evaluate_volumes, load_sliced_volume, reconstruct_volume, volume_features  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


class _Identity:
    """Stands in for a perfect tokenizer: reconstruct() returns its input."""

    def __init__(self, size: int):
        self.config = preset("tiny", image_size=size)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.fixture(scope="module")
def tiny():
    from meditok.tokenizer.hub import load_tokenizer as load_model

    return load_model("preset:tiny")


def test_nifti_round_trip_keeps_affine_and_header(shared_data, tmp_path, tiny):
    src_path = shared_data / "ct_volume" / "example_ct.nii.gz"
    res = evaluate_volumes(tiny, [src_path], tmp_path, progress=False)
    src, out = nib.load(str(src_path)), nib.load(str(tmp_path / "example_ct_recon.nii.gz"))
    np.testing.assert_array_equal(out.affine, src.affine)
    assert out.shape == src.shape
    assert out.header.get_zooms() == src.header.get_zooms()
    assert int(out.header["sform_code"]) == int(src.header["sform_code"])
    data = np.asarray(out.dataobj)
    lo, hi = tiny.config.preprocess.ct_window
    assert data.dtype == np.int16 and lo <= data.min() and data.max() <= hi
    row = res["volumes"][0]
    assert row["modality"] == "ct" and row["slices"] == 112
    assert np.isfinite(row["psnr"]) and 0 < row["ssim"] <= 1  # SSIM in 0-1 units everywhere
    feats = torch.load(tmp_path / row["features"]["file"], weights_only=True)
    assert feats.shape == (tiny.config.model.width,)


def test_slices_map_back_to_the_right_voxels(shared_data, tmp_path):
    """With a perfect tokenizer the output equals the windowed input, also for a volume stored
    in a non-RAS voxel order (axes permuted and flipped, affine adjusted to match)."""
    src = nib.load(str(shared_data / "ct_volume" / "example_ct.nii.gz"))
    data = np.asarray(src.dataobj)[:, :, 40:52]
    ornt = np.array([[2, -1], [0, 1], [1, -1]])  # new axis i <- old axis ornt[i,0], flipped if -1
    shuffled = nib.orientations.apply_orientation(data, ornt)
    affine = src.affine @ nib.orientations.inv_ornt_aff(ornt, data.shape)
    path = tmp_path / "shuffled.nii.gz"
    nib.save(nib.Nifti1Image(shuffled.astype(np.int16), affine), str(path))
    assert nib.aff2axcodes(affine) != ("R", "A", "S")

    model = _Identity(128)  # slices are 122x101 or permuted; 128 keeps resampling error small
    vol = load_sliced_volume(path, model.config.preprocess)
    assert vol.unit.shape[0] == 12  # axial slices found along the permuted S axis
    unit, metrics = reconstruct_volume(model, vol, progress=False)
    back = np.asarray(vol.to_nifti(vol.to_native(unit)).dataobj).astype(float)
    lo, hi = model.config.preprocess.ct_window
    want = np.clip(shuffled, lo, hi)
    assert back.shape == shuffled.shape
    # Bilinear down/up sampling error only: a transposed or flipped slice would be far off.
    err = np.mean(np.abs(back - want))
    assert err < 30.0  # HU, over a 2000 HU window
    for axis in range(3):
        assert np.mean(np.abs(np.flip(back, axis) - want)) > 2.5 * err
    assert metrics["psnr"] > 30


def test_dicom_series_geometry_and_volume_features(shared_data, tmp_path, tiny):
    sitk = pytest.importorskip("SimpleITK")
    folder = shared_data / "ct_volume" / "example_ct_dicom"
    res = evaluate_volumes(tiny, [folder], tmp_path, feature_kind=None, progress=False)
    out = nib.load(str(tmp_path / "example_ct_dicom_recon.nii.gz"))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    ref = reader.Execute()
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(ref.GetDirection()).reshape(3, 3) * np.asarray(ref.GetSpacing())
    lps[:3, 3] = ref.GetOrigin()
    np.testing.assert_allclose(out.affine, np.diag([-1, -1, 1, 1]) @ lps, atol=1e-4)
    assert out.shape == ref.GetSize() and res["volumes"][0]["modality"] == "ct"

    vol = load_sliced_volume(folder, tiny.config.preprocess)
    feats = volume_features(tiny, vol, kind="embed", batch_size=7)
    per_slice = [volume_features(tiny, _single(vol, i), kind="embed") for i in range(20)]
    torch.testing.assert_close(feats, torch.stack(per_slice).mean(0), atol=1e-5, rtol=1e-5)


def _single(vol, i):
    from dataclasses import replace

    return replace(vol, unit=vol.unit[i:i + 1])
