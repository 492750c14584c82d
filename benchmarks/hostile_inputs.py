"""What every malformed or hostile input gets from the batch verbs (issue 9).

Generates malformed files by class (decompression bombs, truncated / empty / misnamed files,
damaged DICOM headers, odd NIfTI, odd names, odd pixels), hostile token files and damaged
checkpoints, runs `meditok tokenize`, `reconstruct` and `data qc` over the image folder, and
`detokenize` / checkpoint loading over the rest, recording per file what it got: processed,
skipped with a reason, refused with an error — or a crash (traceback / internal error).

Usage: python benchmarks/hostile_inputs.py [--shared ../shared/data]
Writes benchmarks/results/hostile_inputs.json and hostile_inputs.md.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import struct
import sys
import tempfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_header(w: int, h: int) -> bytes:
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + _chunk(b"IEND", b""))


def image_files(shared: Path, d: Path) -> dict[str, str]:
    """Malformed image inputs → their class."""
    import nibabel as nib
    import pydicom
    from PIL import Image
    from pydicom.data import get_testdata_file
    from pydicom.dataelem import DataElement

    cls: dict[str, str] = {}

    def add(name: str, kind: str) -> Path:
        cls[name] = kind
        return d / name

    jpg = (shared / "isic_cc0_550" / "ISIC_0000120.jpg").read_bytes()
    ct = get_testdata_file("CT_small.dcm")
    # decompression bombs
    add("bomb_20000.png", "bomb").write_bytes(_png_header(20000, 20000))
    add("bomb_wide.png", "bomb").write_bytes(_png_header(200000, 1000))
    add("bomb_12000.png", "bomb").write_bytes(_png_header(12000, 12000))
    # truncated / empty / misnamed
    add("trunc.jpg", "truncated").write_bytes(jpg[:700])
    add("trunc.png", "truncated").write_bytes(_png_header(64, 64)[:40])
    add("trunc.dcm", "truncated").write_bytes(Path(ct).read_bytes()[:3000])
    add("trunc.nii.gz", "truncated").write_bytes(
        (shared / "ct_volume" / "example_ct.nii.gz").read_bytes()[:5000])
    for ext in ("png", "jpg", "dcm", "nii.gz", "tif"):
        add(f"empty.{ext}", "empty").write_bytes(b"")
    add("jpeg_named.png", "misnamed").write_bytes(jpg)
    add("text_named.dcm", "misnamed").write_text("not a dicom")
    add("png_named.nii.gz", "misnamed").write_bytes(_png_header(64, 64))
    # damaged DICOM headers
    for name, tag, vr, value in [("slope_text.dcm", 0x00281053, "LO", "abc"),
                                 ("intercept_text.dcm", 0x00281052, "LO", "x"),
                                 ("spacing_text.dcm", 0x00280030, "LO", "a\\b"),
                                 ("frames_text.dcm", 0x00280008, "LO", "zz"),
                                 ("rows_wrong.dcm", 0x00280010, "US", 4000)]:
        ds = pydicom.dcmread(ct)
        ds[tag] = DataElement(tag, vr, value)
        ds.save_as(add(name, "dicom-header"))
    ds = pydicom.dcmread(ct)
    del ds.PixelData
    ds.save_as(add("no_pixels.dcm", "dicom-header"))
    # odd NIfTI
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.random((40, 50)).astype(np.float32), np.eye(4)), add("flat2d.nii.gz", "nifti"))
    nib.save(nib.Nifti1Image(rng.random((20, 20, 10, 3)).astype(np.float32), np.eye(4)), add("4d.nii.gz", "nifti"))
    nan = rng.random((20, 20, 10)).astype(np.float32)
    nan[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), add("nan.nii.gz", "nifti"))
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 10), np.float32), np.eye(4)), add("zeros.nii.gz", "nifti"))
    nib.save(nib.Nifti1Image(np.ones((1, 1, 1), np.float32), np.eye(4)), add("one_voxel.nii.gz", "nifti"))
    # names
    add("x" * 246 + ".jpg", "name").write_bytes(jpg)
    add("ünïcødé 名前.jpg", "name").write_bytes(jpg)
    (d / "a").mkdir()
    (d / "b").mkdir()
    add("a/same.jpg", "name").write_bytes(jpg)
    add("b/same.jpg", "name").write_bytes(jpg)
    # pixels
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(add("one_pixel.png", "pixels"))
    Image.fromarray(rng.integers(0, 255, (64, 64, 2), dtype=np.uint8), "LA").save(add("grey_alpha.png", "pixels"))
    Image.fromarray(rng.integers(0, 65535, (64, 64), dtype=np.uint16)).save(add("sixteen_bit.png", "pixels"))
    Image.open(io.BytesIO(jpg)).convert("CMYK").save(add("cmyk.jpg", "pixels"))
    import tifffile

    tifffile.imwrite(add("five_channel.tif", "pixels"), rng.integers(0, 255, (64, 64, 5), dtype=np.uint8),
                     photometric="minisblack", planarconfig="contig")
    tifffile.imwrite(add("page_stack.tif", "pixels"), rng.integers(0, 255, (64, 64, 5), dtype=np.uint8))
    tifffile.imwrite(add("float_nan.tif", "pixels"), np.full((64, 64), np.nan, np.float32))
    return cls


def token_files(d: Path, cfg: dict) -> dict[str, str]:
    def npz(name: str, **arrays) -> str:
        buf = io.BytesIO()
        np.savez_compressed(buf, config=np.array(json.dumps(cfg)), **arrays)
        (d / name).write_bytes(buf.getvalue())
        return name

    z = np.zeros
    out = {npz("huge_grid.npz", tokens=z((1, 4, 512, 512), np.uint16), paths=np.array(["a"])): "unbounded",
           npz("many_grids.npz", tokens=z((12000, 4, 1, 1), np.uint16), paths=np.array([str(i) for i in range(12000)])): "unbounded",
           npz("fewer_paths.npz", tokens=z((3, 4, 4, 4), np.uint16), paths=np.array(["a", "b"])): "counts",
           npz("wrong_k.npz", tokens=z((1, 8, 4, 4), np.uint16), paths=np.array(["a"])): "values",
           npz("out_of_range.npz", tokens=np.full((1, 4, 4, 4), 999, np.uint16), paths=np.array(["a"])): "values",
           npz("float_tokens.npz", tokens=z((1, 4, 4, 4), np.float32), paths=np.array(["a"])): "values",
           npz("bad_shapes.npz", codes=z((4, 16), np.uint16), shapes=np.array([[1, -4, -4]]), paths=np.array(["a"])): "shapes",
           npz("lying_shapes.npz", codes=z((4, 16), np.uint16), shapes=np.array([[1, 10**9, 10**9]]), paths=np.array(["a"])): "shapes",
           npz("traversal_name.npz", tokens=z((1, 4, 4, 4), np.uint16), paths=np.array(["../../escape"])): "names"}
    np.savez(d / "pickled.npz", tokens=np.array([{"a": 1}], dtype=object))
    out["pickled.npz"] = "not-tokens"
    shutil.copy(d.parent / "images" / "jpeg_named.png", d / "image_named.npz")
    out["image_named.npz"] = "not-tokens"
    np.save(d / "array.npy", z((1, 4, 4, 4), np.uint16))
    (d / "array.npy").rename(d / "npy_named.npz")
    out["npy_named.npz"] = "not-tokens"
    buf = io.BytesIO()   # a zip member claiming 2 GiB of zeros, compressed to a few MB
    with contextlib.suppress(Exception):
        import zipfile

        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            with zf.open("tokens.npy", "w", force_zip64=True) as fh:
                header = io.BytesIO()
                np.lib.format.write_array_header_1_0(header, {"descr": "<u2", "fortran_order": False,
                                                             "shape": (1, 4, 16384, 16384)})
                fh.write(header.getvalue())
                block = b"\0" * (1 << 24)
                for _ in range(128):
                    fh.write(block)
        (d / "zip_bomb.npz").write_bytes(buf.getvalue())
        out["zip_bomb.npz"] = "unbounded"
    return out


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    from meditok.cli import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = int(exc.code or 0)
        except BaseException as exc:  # noqa: BLE001 - a crash is what we are counting
            rc = -1
            err.write(f"CRASH {type(exc).__name__}: {exc}")
    return rc, out.getvalue(), err.getvalue()


def outcome(name: str, text: str) -> str:
    for line in text.splitlines():
        if line.strip().startswith(f"skipped {name}:"):
            return "skipped: " + line.split(":", 1)[1].strip()[:110]
    return "processed"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = ap.parse_args()
    import torch

    from meditok import MedITok

    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="meditok-hostile-"))
    images = work / "images"
    images.mkdir()
    classes = image_files(args.shared, images)
    ckpt = MedITok.from_preset("tiny").save_pretrained(work / "tiny")
    results: dict[str, dict] = {name: {"class": c} for name, c in classes.items()}
    for verb in ("tokenize", "reconstruct"):
        out = work / (f"{verb}.npz" if verb == "tokenize" else verb)
        rc, text, err = run_cli([verb, str(images), "--out", str(out), "-c", str(ckpt), "--size", "64"])
        for name in classes:
            results[name][verb] = "CRASH" if rc not in (0, 1) else outcome(name, text)
        results.setdefault("_runs", {})[verb] = {"rc": rc, "summary": text.splitlines()[-1:] if text else err[-300:]}
    rc, text, err = run_cli(["data", "qc", str(images), "--min-side", "8"])
    verdicts = {}
    for line in text.splitlines():
        if "\t" in line:
            verdict, path = line.split("\t", 1)
            verdicts[Path(path).relative_to(images).as_posix()] = verdict
    for name in classes:
        results[name]["qc"] = "CRASH" if rc != 0 else verdicts.get(name, "not listed")[:110]
    tokens = work / "tokens"
    tokens.mkdir()
    tclasses = token_files(tokens, MedITok.from_pretrained(ckpt).config.to_dict())
    for name, c in tclasses.items():
        rc, text, err = run_cli(["detokenize", str(tokens / name), "--out", str(work / "dec" / name), "-c", str(ckpt)])
        results[f"tokens/{name}"] = {"class": f"token-{c}", "detokenize": (
            "CRASH " + err[-200:] if rc not in (0, 1) else ("decoded" if rc == 0 else "refused: " + err.strip().split(": ", 2)[-1][:140]))}
    escaped = [p for p in work.rglob("escape*") if "dec" not in p.parts]
    results["_runs"]["traversal_escaped"] = [str(p) for p in escaped]
    results["_runs"]["python"] = sys.version.split()[0]
    summary = Counter()
    for name, r in results.items():
        if name.startswith("_"):
            continue
        for key in ("tokenize", "reconstruct", "qc", "detokenize"):
            if key in r:
                summary[(r["class"], key, "CRASH" if str(r[key]).startswith("CRASH") else "handled")] += 1
    lines = ["# Malformed and hostile inputs (issue 9)", "",
             f"{len(classes)} malformed image inputs in {len(set(classes.values()))} classes, "
             f"{len(tclasses)} hostile token files; tiny preset, `--size 64`.", "",
             "| input | class | tokenize | reconstruct | data qc |", "|---|---|---|---|---|"]
    for name in classes:
        r = results[name]
        short = name if len(name) < 40 else name[:18] + "…" + name[-12:]
        lines.append(f"| `{short}` | {r['class']} | {r['tokenize']} | {r['reconstruct']} | {r['qc']} |")
    lines += ["", "| token file | class | detokenize |", "|---|---|---|"]
    for name in tclasses:
        r = results[f"tokens/{name}"]
        lines.append(f"| `{name}` | {r['class']} | {r['detokenize']} |")
    crashes = sum(v for (c, k, h), v in summary.items() if h == "CRASH")
    lines += ["", f"Crashes (tracebacks / internal errors): {crashes}. Runs: "
              f"{json.dumps(results['_runs'], ensure_ascii=False)}", ""]
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "hostile_inputs.json").write_text(json.dumps(results, indent=1, ensure_ascii=False))
    (HERE / "results" / "hostile_inputs.md").write_text("\n".join(lines))
    print("\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
