"""Readers and model-input preprocessing on real files, plus bad inputs."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from meditok.data.preprocess import PreprocessConfig
from meditok.data.preprocess import interpret, load_image, load_images, resize_to_square, to_input
from meditok.data.benchmarks import iter_medmnist
from meditok.data.readers import (MedicalImage, iter_image_files, read_image,
                                  read_volume)
from meditok.errors import ImageReadError

PRE = PreprocessConfig(image_size=64)


def _dicom_files(shared: Path) -> list[Path]:
    return sorted((shared / "ct_volume" / "example_ct_dicom").iterdir())


def _check_input(x: torch.Tensor, size: int = 64) -> None:
    assert x.shape == (3, size, size) and x.dtype == torch.float32
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    assert float(x.std()) > 0.01  # real content, not a constant


def test_dicom_ct_jpeg2000_gives_hu(shared_data):
    f = _dicom_files(shared_data)[0]  # no extension: detected by the DICM preamble
    img = read_image(f)
    assert img.kind == "hu" and img.modality == "ct" and img.array.shape == (512, 512)
    # RescaleIntercept -1024 applied: air near -1024, nothing below the stored-value floor
    assert img.array.min() == pytest.approx(-1024.0)
    assert img.meta["spacing"] == pytest.approx([0.9765625, 0.9765625])
    for banned in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"):
        assert banned not in img.meta
    _check_input(to_input(img, PRE))


def test_dicom_series_sorted_by_position(shared_data):
    vol = read_volume(shared_data / "ct_volume" / "example_ct_dicom")
    assert vol.array.shape == (20, 512, 512) and vol.modality == "ct"
    z = vol.affine[:3, 2]
    assert np.linalg.norm(z) == pytest.approx(vol.spacing[0])
    assert vol.spacing[1] == pytest.approx(0.9765625)


def test_dicom_series_order_independent_of_file_names(shared_data, tmp_path):
    files = _dicom_files(shared_data)[:6]
    for i, f in enumerate(reversed(files)):
        shutil.copy(f, tmp_path / f"{i:02d}.dcm")
    import pydicom
    a = read_volume(tmp_path).array
    z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    by_position = [files[i] for i in np.argsort(z)]
    b = np.stack([read_image(f).array for f in by_position])
    assert np.array_equal(a, b)  # sorted by position (axial normal +z), not by file name


def test_nifti_volume_and_middle_slice(shared_data):
    path = shared_data / "ct_volume" / "example_ct.nii.gz"
    vol = read_volume(path, modality="ct")
    assert vol.array.shape == (112, 101, 122) and vol.spacing == (3.0, 3.0, 3.0)
    assert vol.affine.shape == (4, 4) and vol.meta["orientation"] == "LPS"
    img = read_image(path, modality="ct")
    assert img.kind == "hu" and np.array_equal(img.array, vol.array[56])
    assert np.array_equal(read_image(path, slice_index=3).array, vol.array[3])
    assert read_image(path).kind == "float"  # no modality hint: generic float scaling
    _check_input(to_input(img, PRE))


def test_nrrd_mri(shared_data):
    vol = read_volume(shared_data / "radiomics_nrrd" / "brain1_image.nrrd", modality="mri")
    assert vol.array.shape == (25, 256, 256)
    assert vol.spacing == pytest.approx((6.5, 0.78125, 0.78125))
    img = read_image(shared_data / "radiomics_nrrd" / "brain1_image.nrrd")
    x = to_input(img, PRE)
    _check_input(x)
    from meditok.data.preprocess import scale_intensity
    s = scale_intensity(img, PRE)  # percentile clip then min-max, before resizing
    assert float(s.min()) == -1.0 and float(s.max()) == 1.0
    hi = np.percentile(img.array, 99.5)
    assert float((s == 1.0).float().mean()) == pytest.approx(float((img.array >= hi).mean()), abs=2e-3)


def test_isic_jpeg_uint8_scaling(shared_data):
    img = read_image(shared_data / "isic_cc0_550" / "ISIC_0000000.jpg")
    assert img.kind == "uint8" and img.array.shape == (250, 250, 3)
    big = to_input(img, PreprocessConfig(image_size=250))
    expected = torch.from_numpy(img.array).permute(2, 0, 1) / 255 * 2 - 1
    assert torch.allclose(big, expected, atol=1e-6)  # same size: exact x/255*2-1


def test_drive_tiff(shared_data):
    f = sorted((shared_data / "retina_vessels" / "DRIVE" / "training" / "images").glob("*.tif"))[0]
    img = read_image(f)
    assert img.kind == "uint8" and img.array.shape == (584, 565, 3)
    _check_input(to_input(img, PRE))


def test_medmnist_npz(shared_data):
    items = list(iter_medmnist(shared_data / "medmnist" / "breastmnist.npz", split="val"))
    assert len(items) == 78
    split, idx, img, label = items[0]
    assert split == "val" and idx == 0 and img.array.shape == (28, 28) and label in (0, 1)
    assert {lab for *_, lab in items} == {0, 1}


def test_16bit_png_hu_round_trip_from_real_ct(shared_data, tmp_path):
    hu = read_image(_dicom_files(shared_data)[10]).array
    stored = (np.clip(hu, -1000, 2000) + 1024).astype(np.uint16)
    Image.fromarray(stored).save(tmp_path / "ct.png")
    raw = read_image(tmp_path / "ct.png")
    assert raw.kind == "uint16" and "ct_offset" not in raw.meta  # a plain PNG says nothing
    img = interpret(raw, "ct", PRE)
    assert img.kind == "hu" and img.modality == "ct"
    assert np.array_equal(img.array, np.clip(hu, -1000, 2000))
    x = load_image(tmp_path / "ct.png", PRE, modality="ct")
    _check_input(x)


def test_rgba_and_grey_channels(tmp_path):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (40, 50, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert img.array.shape == (40, 50, 4)
    x = to_input(img, PreprocessConfig(image_size=32))
    rgb_only = to_input(MedicalImage(rgba[..., :3].astype(np.float32), "uint8"),
                              PreprocessConfig(image_size=32))
    assert torch.equal(x, rgb_only)  # alpha dropped, nothing else changed
    grey = read_image(_save_grey(tmp_path))
    g = to_input(grey, PreprocessConfig(image_size=32))
    assert torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])


def _save_grey(tmp_path: Path) -> Path:
    arr = np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1))
    Image.fromarray(arr).save(tmp_path / "g.png")
    return tmp_path / "g.png"


def test_hu_window_mapping():
    hu = np.array([[-2000, -1000, 0], [1000, 3000, 500]], dtype=np.float32)
    img = MedicalImage(np.kron(hu, np.ones((2, 2), np.float32)), "hu", "ct")
    x = to_input(img, PreprocessConfig(image_size=4, resize="squash", ct_window=(-1000, 1000)))
    # 4x6 → 4x4 changes values, so check the mapping before resizing instead
    from meditok.data.preprocess import scale_intensity
    s = scale_intensity(img, PreprocessConfig(ct_window=(-1000, 1000)))
    assert s.min() == -1 and s.max() == 1 and float(s[0, 4]) == 0.0 and float(s[3, 4]) == 0.5
    assert x.shape == (3, 4, 4)


@pytest.mark.parametrize("policy", ["squash", "center_crop", "pad"])
def test_resize_policies(policy):
    t = torch.linspace(-1, 1, 3 * 30 * 60).reshape(3, 30, 60)
    out = resize_to_square(t, 32, policy)
    assert out.shape == (3, 32, 32)
    if policy == "pad":
        assert torch.all(out[:, :4] == -1) and torch.all(out[:, -4:] == -1)
    if policy == "center_crop":
        assert float(out[0, 16, 0]) > float(t[0, 15, 0])  # left edge cropped away


def test_iter_image_files_finds_extensionless_dicom(shared_data):
    files = iter_image_files([shared_data / "ct_volume", shared_data / "radiomics_nrrd"])
    names = {f.name for f in files}
    assert len([f for f in files if f.parent.name == "example_ct_dicom"]) == 20
    assert "example_ct.nii.gz" in names and "brain1_image.nrrd" in names
    assert "md5sums.txt" not in names


# ------------------------------------------------------------------ bad inputs
def _assert_read_error(path: Path, fragment: str = "") -> ImageReadError:
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert str(path) in str(info.value) and fragment in info.value.reason
    return info.value


def test_truncated_png(shared_data, tmp_path):
    data = (shared_data / "sam_med2d_demo" / "images" / "amos_0004_75.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    _assert_read_error(tmp_path / "t.png")


def test_truncated_dicom(shared_data, tmp_path):
    data = _dicom_files(shared_data)[0].read_bytes()
    (tmp_path / "t.dcm").write_bytes(data[: len(data) // 2])
    _assert_read_error(tmp_path / "t.dcm")
    with pytest.raises(ImageReadError):
        read_volume(tmp_path)


def test_zero_byte_missing_unsupported(tmp_path):
    (tmp_path / "z.png").write_bytes(b"")
    _assert_read_error(tmp_path / "z.png", "empty")
    _assert_read_error(tmp_path / "missing.png", "does not exist")
    (tmp_path / "x.xyz").write_bytes(b"hello")
    _assert_read_error(tmp_path / "x.xyz", "unsupported")


def test_one_pixel_and_nan(tmp_path):
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(tmp_path / "one.png")
    _assert_read_error(tmp_path / "one.png", "too small")
    tifffile = pytest.importorskip("tifffile")
    arr = np.ones((8, 8), np.float32)
    arr[2, 3] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", arr)
    _assert_read_error(tmp_path / "nan.tif", "NaN")


def test_wrong_channel_count(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "five.tif", np.zeros((16, 16, 5), np.uint8), photometric="minisblack",
                     planarconfig="contig")
    img = read_image(tmp_path / "five.tif")
    with pytest.raises(ImageReadError) as info:
        to_input(img, PRE)
    assert "five.tif" in str(info.value) and "5 channels" in info.value.reason


def test_load_images_skips_and_reports(shared_data, tmp_path):
    (tmp_path / "z.png").write_bytes(b"")
    good = shared_data / "isic_cc0_550" / "ISIC_0000001.jpg"
    errors: list[ImageReadError] = []
    batch = load_images([good, tmp_path / "z.png", good], PRE, errors=errors)
    assert batch.shape == (2, 3, 64, 64) and len(errors) == 1 and errors[0].path.endswith("z.png")
    with pytest.raises(ImageReadError):
        load_images([good, tmp_path / "z.png"], PRE)


def test_monochrome1_and_palette_dicom():
    pydicom_data = pytest.importorskip("pydicom.data")
    try:
        cr = pydicom_data.get_testdata_file("RG1_UNCI.dcm")
        us = pydicom_data.get_testdata_file("US1_UNCR.dcm")
    except Exception:  # pragma: no cover - only without pydicom-data
        pytest.skip("pydicom-data test files not installed")
    if cr is None or us is None:
        pytest.skip("pydicom-data test files not installed")
    import pydicom
    ds = pydicom.dcmread(cr)
    raw = ds.pixel_array.astype(np.float32)
    img = read_image(cr)
    assert img.modality == "xray" and img.meta["inverted_monochrome1"]
    assert np.allclose(img.array, raw.max() + raw.min() - raw)
    u = read_image(us)
    assert u.modality == "ultrasound" and u.array.shape[2] == 3
