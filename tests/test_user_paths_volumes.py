"""Volumes as volumes (issue 9, items 11-12): NIfTI / NRRD volumes, DICOM series and
multi-frame DICOM through tokenize / detokenize / reconstruct, and `eval volume`'s errors."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from meditok.cli import main

nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")


@pytest.fixture()
def tiny_ckpt(tmp_path, tiny_model):
    return tiny_model.save_pretrained(tmp_path / "tiny")


def _items(npz: Path):
    from meditok.data.tokens import read_token_file

    return read_token_file(npz).items


def test_nifti_volume_is_tokenized_slice_by_slice_and_comes_back_in_its_geometry(
        shared_data, tmp_path, tiny_ckpt, one_thread):
    src = shared_data / "ct_volume" / "example_ct.nii.gz"   # 122 x 101 x 112 voxels, 3 mm
    npz = tmp_path / "ct.npz"
    assert main(["tokenize", str(src), "--out", str(npz), "-c", str(tiny_ckpt), "--size", "64"]) == 0
    (item,) = _items(npz)
    assert item.kind == "volume" and item.grids.shape[0] == 112   # every axial slice, not one
    assert item.info["plane"] == "axial" and item.info["volume_shape"] == [112, 101, 122]
    assert item.info["modality"] == "ct" and item.info["window"] == [-1000.0, 1000.0]
    out = tmp_path / "dec"
    assert main(["detokenize", str(npz), "--out", str(out), "-c", str(tiny_ckpt)]) == 0
    rec, ref = nib.load(str(out / "example_ct.nii.gz")), nib.load(str(src))
    assert rec.shape == ref.shape and rec.get_data_dtype() == np.int16
    np.testing.assert_allclose(rec.affine, ref.affine, atol=1e-5)   # voxel for voxel
    data = np.asarray(rec.dataobj)
    assert -1000 <= data.min() and data.max() <= 1000                 # HU within the window


def test_dicom_series_becomes_one_volume_and_a_fresh_identifier_free_series(shared_data, tmp_path, tiny_ckpt,
                                                                           one_thread):
    from meditok.data.readers import read_volume

    series = tmp_path / "example_ct_dicom"     # the real series, given a patient's identity
    series.mkdir()
    for f in sorted((shared_data / "ct_volume" / "example_ct_dicom").iterdir()):
        ds = pydicom.dcmread(f)
        ds.PatientName, ds.PatientID, ds.AccessionNumber = "Qzxsecret^Jane", "MRN778899", "ACC5566"
        ds.save_as(series / f.name)
    npz = tmp_path / "s.npz"
    assert main(["tokenize", str(series), "--out", str(npz), "-c", str(tiny_ckpt), "--size", "64"]) == 0
    (item,) = _items(npz)
    assert item.kind == "volume" and item.grids.shape[:2] == (20, 4) and item.name == "example_ct_dicom"
    out = tmp_path / "dec"
    assert main(["detokenize", str(npz), "--out", str(out), "-c", str(tiny_ckpt),
                 "--volume-format", "both"]) == 0
    files = sorted((out / "example_ct_dicom_dicom").glob("*.dcm"))
    assert len(files) == 20 and (out / "example_ct_dicom.nii.gz").exists()
    src_ds = pydicom.dcmread(sorted(series.iterdir())[0], stop_before_pixels=True)
    secrets = {str(src_ds.get(k, "")) for k in ("StudyInstanceUID", "SeriesInstanceUID",
                                                "SOPInstanceUID", "FrameOfReferenceUID")} - {""}
    secrets |= {"Qzxsecret", "MRN778899", "ACC5566"}
    for f in files:
        ds = pydicom.dcmread(f)
        assert str(ds.PatientName) == "" and str(ds.PatientID) == "" and ds.Modality == "CT"
        raw = f.read_bytes()
        assert not [s for s in secrets if s.encode() in raw]
    with np.load(npz) as data:
        stored = " ".join(str(data[k]) for k in data.files if data[k].dtype.kind in "US")
    assert "example_ct_dicom" in stored and not [s for s in secrets if s in stored]
    back, source = read_volume(out / "example_ct_dicom_dicom"), read_volume(series)
    assert back.array.shape == source.array.shape
    np.testing.assert_allclose(back.affine, source.affine, atol=1e-3)
    np.testing.assert_allclose(back.spacing, source.spacing, atol=1e-4)


def test_planes_and_step_with_reconstruct(shared_data, tmp_path, tiny_ckpt, one_thread):
    src = shared_data / "radiomics_nrrd" / "brain1_image.nrrd"      # z 25 x y 256 x x 256
    out = tmp_path / "r"
    assert main(["reconstruct", str(src), "--out", str(out), "-c", str(tiny_ckpt), "--size", "64",
                 "--planes", "axial", "coronal", "--step", "2"]) == 0
    rows = {r["kind"]: r for r in csv.DictReader((out / "metrics.csv").open())}
    assert set(rows) == {"volume:axial", "volume:coronal"}
    axial = nib.load(str(out / rows["volume:axial"]["output"]))
    coronal = nib.load(str(out / rows["volume:coronal"]["output"]))
    assert axial.shape == (256, 256, 13) and coronal.shape == (256, 128, 25)
    assert rows["volume:coronal"]["output"] == "brain1_image_coronal.nii.gz"
    # every 2nd slice: twice the spacing along the sliced axis, same elsewhere
    zooms_a, zooms_c = axial.header.get_zooms(), coronal.header.get_zooms()
    assert zooms_a[2] == pytest.approx(13.0) and zooms_c[1] == pytest.approx(2 * 0.78125)
    # a coronal slice of 25 x 256 voxels (6.5 mm x 0.78 mm = 162 x 200 mm) keeps its physical
    # aspect: 208 x 256 px at isotropic spacing → 52 x 64 → sides rounded to multiples of 8
    assert rows["volume:coronal"]["model_size"] == "48x64"
    assert rows["volume:axial"]["model_size"] == "64x64"
    assert 0 < float(rows["volume:axial"]["ssim"]) <= 1


def test_multiframe_dicom_frames_are_all_used(tmp_path, tiny_ckpt, one_thread):
    from pydicom.data import get_testdata_file

    emri, cine = get_testdata_file("emri_small.dcm"), get_testdata_file("examples_ybr_color.dcm")
    if not (emri and cine):
        pytest.skip("pydicom test files missing")
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(emri, src / "emri.dcm")
    shutil.copy(cine, src / "cine.dcm")
    npz = tmp_path / "m.npz"
    assert main(["tokenize", str(src), "--out", str(npz), "-c", str(tiny_ckpt), "--size", "64"]) == 0
    items = {it.name: it for it in _items(npz)}
    assert items["emri.dcm"].kind == "volume" and items["emri.dcm"].grids.shape[0] == 10
    assert items["cine.dcm"].kind == "frames" and items["cine.dcm"].grids.shape[0] == 30
    out = tmp_path / "dec"
    assert main(["detokenize", str(npz), "--out", str(out), "-c", str(tiny_ckpt)]) == 0
    assert nib.load(str(out / "emri.nii.gz")).shape == (64, 64, 10)
    frames = sorted((out / "cine").glob("frame*.png"))
    assert len(frames) == 30 and Image.open(frames[0]).size == (320, 240)


def _wsi(path: Path, tiles: np.ndarray, total: tuple[int, int]) -> Path:
    """A TILED_FULL whole-slide DICOM (VL WSI storage) holding ``tiles`` [T, t, t, 3]."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.6"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientName = "SM", "Slide^Patient"
    ds.NumberOfFrames, ds.Rows, ds.Columns = len(tiles), tiles.shape[1], tiles.shape[2]
    ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns = total
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(tiles, np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_whole_slide_dicom_is_tiled_not_reduced_to_one_frame(tmp_path, tiny_ckpt, one_thread):
    from meditok.utils.lazy import package_dir

    sk = package_dir("skimage")
    if sk is None or not (sk / "data" / "ihc.png").exists():
        pytest.skip("scikit-image's ihc.png sample is not installed")
    slide = np.asarray(Image.open(sk / "data" / "ihc.png").convert("RGB"))[:210, :210]
    t = 32
    pad = np.zeros((224, 224, 3), np.uint8)
    pad[:210, :210] = slide
    tiles = pad.reshape(7, t, 7, t, 3).transpose(0, 2, 1, 3, 4).reshape(49, t, t, 3)
    path = _wsi(tmp_path / "slide.dcm", tiles, (210, 210))
    npz = tmp_path / "w.npz"
    assert main(["tokenize", str(path), "--out", str(npz), "-c", str(tiny_ckpt), "--size", "32"]) == 0
    (item,) = _items(npz)
    assert item.kind == "tiles" and item.grids.shape == (49, 4, 4, 4)
    assert item.info["total_shape"] == [210, 210] and item.info["positions"][8] == [32, 32]
    out = tmp_path / "dec"
    assert main(["detokenize", str(npz), "--out", str(out), "-c", str(tiny_ckpt)]) == 0
    mosaic = np.asarray(Image.open(out / "slide.png"))
    assert mosaic.shape == (210, 210, 3)
    from meditok import MedITok
    from meditok.data.preprocess import uint8_hwc

    model = MedITok.from_pretrained(tiny_ckpt)
    tile_9 = uint8_hwc(model.detokenize(item.grids[9:10])[0])   # row 1, column 2
    assert np.array_equal(mosaic[32:64, 64:96], tile_9)
    rec = tmp_path / "rec"
    assert main(["reconstruct", str(path), "--out", str(rec), "-c", str(tiny_ckpt), "--size", "32"]) == 0
    panel = Image.open(rec / "slide.png")
    assert panel.size == (3 * 420, 420)  # the whole slide, enlarged x2 for display


# ----------------------------------------------------------------------------- item 12
def test_eval_volume_fails_clearly_on_missing_2d_or_unusable_input(shared_data, tmp_path, tiny_ckpt, capsys):
    png = tmp_path / "flat.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(png)
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((40, 50)).astype(np.float32), np.eye(4)), flat)
    cases = [([str(tmp_path / "nope.nii.gz")], "volume not found"),
             ([str(png)], "unsupported volume format .png"),
             ([str(flat)], "is not a 3D volume"),
             ([str(tmp_path)], "folder holds no DICOM files")]
    for i, (vols, message) in enumerate(cases):
        out = tmp_path / f"ev{i}"
        assert main(["eval", "volume", str(tiny_ckpt), *vols, "--out", str(out), "--quiet",
                     "--features", "none"]) == 1, vols
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
        assert not (out / "volume.json").exists()


def test_eval_volume_never_overwrites_results_silently(shared_data, tmp_path, tiny_ckpt, capsys, one_thread):
    vol = shared_data / "radiomics_nrrd" / "brain2_image.nrrd"
    out = tmp_path / "ev"
    argv = ["eval", "volume", str(tiny_ckpt), str(vol), "--out", str(out), "--quiet", "--features", "none"]
    assert main(argv) == 0
    before = (out / "volume.json").read_bytes()
    capsys.readouterr()
    assert main(argv) == 1
    assert "already holds volume results; pass --overwrite" in capsys.readouterr().err
    assert (out / "volume.json").read_bytes() == before
    assert main(argv + ["--overwrite"]) == 0


def test_copies_of_one_slice_are_images_and_a_series_next_to_them_is_a_volume(shared_data, tmp_path):
    from pydicom.data import get_testdata_file

    from meditok.data.inputs import collect_inputs

    src = tmp_path / "mixed"
    src.mkdir()
    for i in range(3):   # the same instance three times: not a volume
        shutil.copy(get_testdata_file("CT_small.dcm"), src / f"copy{i}.dcm")
    shutil.copytree(shared_data / "ct_volume" / "example_ct_dicom", src / "series")
    items = collect_inputs([src])
    assert [(it.name, it.kind, len(it.files)) for it in items] == [
        ("copy0.dcm", "image", 0), ("copy1.dcm", "image", 0), ("copy2.dcm", "image", 0),
        ("series", "series", 20)]
