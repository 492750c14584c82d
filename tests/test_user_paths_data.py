"""Data curation on the user's paths (issue 9): a full disk never loses images, killed builds
clean up and take their workers with them, identifiers stay out of curated outputs, and users
can say which modality their folders hold."""
from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from meditok.cli import main
from meditok.data.corpus import build_corpus


def _user_folder(shared: Path, folder: Path, n: int = 6) -> Path:
    """Real ISIC dermoscopy images as a user's folder of PNGs (no modality anywhere)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        # ISIC_0000105.. are real lesions (the first ~100 files are stripe renderings QC drops)
        Image.open(shared / "isic_cc0_550" / f"ISIC_{105 + i:07d}.jpg").save(folder / f"lesion_{i}.png")
    return folder


# ----------------------------------------------------------------------------- item 4: full disk
def test_a_full_disk_leaves_the_job_undone_and_the_rerun_recovers(shared_data, tmp_path, monkeypatch):
    import meditok.data.corpus_jobs as jobs
    from meditok.data.corpus import CorpusIncompleteError

    src = _user_folder(shared_data, tmp_path / "derm")
    clean = build_corpus(None, tmp_path / "clean", workers=1, extra=[f"{src}=dermoscopy"], progress=False)
    assert clean["images"] == 6

    real, calls = jobs._save_u8, {"n": 0}

    def full_disk(path, arr):
        calls["n"] += 1
        if calls["n"] >= 3:   # the disk fills up after two images
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, arr)

    monkeypatch.setattr(jobs, "_save_u8", full_disk)
    out = tmp_path / "corpus"
    with pytest.raises(CorpusIncompleteError, match="No space left on device"):
        build_corpus(None, out, workers=1, extra=[f"{src}=dermoscopy"], progress=False)
    assert not list((out / "_jobs").glob("*.json"))          # the job is not marked done
    assert not (out / "manifest.csv").exists()
    monkeypatch.setattr(jobs, "_save_u8", real)
    again = build_corpus(None, out, workers=1, extra=[f"{src}=dermoscopy"], progress=False)
    assert again == clean                                     # 6 images, no --force needed


def test_a_crash_writing_the_job_record_is_one_line_and_recoverable(shared_data, tmp_path, monkeypatch,
                                                                    capsys):
    import meditok.data.corpus_jobs as jobs

    src = _user_folder(shared_data, tmp_path / "derm", n=3)
    real = jobs.atomic_write_text

    def failing(path, text):
        if Path(path).parent.name == "_jobs":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, text)

    monkeypatch.setattr(jobs, "atomic_write_text", failing)
    out = tmp_path / "corpus"
    argv = ["data", "build-corpus", "--sources", "--extra", f"{src}=dermoscopy", "--out", str(out),
            "--workers", "1", "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "could not write their outputs" in err and "rerun the same command" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    monkeypatch.setattr(jobs, "atomic_write_text", real)
    assert main(argv) == 0
    assert len(list(csv.DictReader((out / "manifest.csv").open()))) == 3


def test_stale_temporary_files_are_removed_by_the_next_build(shared_data, tmp_path):
    src = _user_folder(shared_data, tmp_path / "derm", n=2)
    out = tmp_path / "corpus"
    stale = [out / "images" / "extra" / "train" / ".0123456789abcdef.png.k3j2h1g0.tmp",
             out / "_jobs" / ".extra-0000.json.a1b2c3d4.tmp"]
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half-written by a killed build")
    keep = out / "images" / "notes.tmp"   # not one of ours: left alone
    keep.write_text("mine")
    build_corpus(None, out, workers=1, extra=[f"{src}=dermoscopy"], progress=False)
    assert not [p for p in stale if p.exists()] and keep.exists()


KILL_PARENT = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import meditok.data.corpus as corpus
    import meditok.data.corpus_jobs as jobs

    pids = Path(sys.argv[2])

    def slow_job(job, out, cfg=None):      # a long job in each worker (inherited by fork)
        (pids / f"{os.getpid()}").write_text("")
        time.sleep(120)

    corpus.run_job = slow_job
    corpus.collect_jobs = lambda *a, **k: ([{"kind": "files", "dataset": "d", "items": [],
                                             "job_id": f"j{i}"} for i in range(4)], [])
    corpus.build_corpus(None, sys.argv[1], workers=2, progress=False)
""")


def test_pool_workers_die_with_their_parent(tmp_path):
    psutil = pytest.importorskip("psutil")
    pids = tmp_path / "pids"
    pids.mkdir()
    parent = subprocess.Popen([sys.executable, "-c", KILL_PARENT, str(tmp_path / "c"), str(pids)])
    try:
        deadline = time.time() + 60
        while len(list(pids.iterdir())) < 2 and time.time() < deadline:
            time.sleep(0.2)
        workers = [int(p.name) for p in pids.iterdir()]
        assert len(workers) == 2
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 10
        alive = workers
        while alive and time.time() < deadline:
            time.sleep(0.2)
            alive = [w for w in workers if psutil.pid_exists(w)
                     and psutil.Process(w).status() != psutil.STATUS_ZOMBIE]
        assert not alive, f"workers {alive} outlived the killed build"
    finally:
        for p in pids.iterdir():
            try:
                os.kill(int(p.name), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass


# ----------------------------------------------------------------------------- item 9: identifiers
SECRET_DIR = "ZZTEST^PATIENT_MRN4471"


def _patient_series(shared: Path, folder: Path) -> Path:
    pydicom = pytest.importorskip("pydicom")
    folder.mkdir(parents=True)
    for f in sorted((shared / "ct_volume" / "example_ct_dicom").iterdir())[:6]:
        ds = pydicom.dcmread(f)
        ds.PatientName = "Zyxwv^Patient"
        ds.save_as(folder / f"{SECRET_DIR}_{f.name}")
    return folder


def test_rejected_dicoms_leave_no_path_in_curated_outputs(shared_data, tmp_path):
    src = _patient_series(shared_data, tmp_path / SECRET_DIR)
    data = next(src.iterdir()).read_bytes()
    (src / f"{SECRET_DIR}_broken.dcm").write_bytes(data[: len(data) // 3])
    (src / f"{SECRET_DIR}_nopixels.dcm").write_bytes(data[:2000])
    out = tmp_path / "corpus"
    build_corpus(None, out, workers=1, extra=[src], progress=False)
    curated = [out / "rejects.csv", out / "manifest.csv", out / "summary.json",
               *sorted((out / "_jobs").glob("*.json"))]
    rejects = list(csv.DictReader((out / "rejects.csv").open()))
    assert len(rejects) >= 2 and all(r["source"].startswith("sha256:") for r in rejects)
    for f in curated:
        text = f.read_text()
        assert "ZZTEST" not in text and "MRN4471" not in text and str(tmp_path) not in text, f
    local = (out / "_local" / "sources.csv").read_text()   # the documented local-only map
    assert f"{SECRET_DIR}_broken.dcm" in local


def test_data_slice_names_outputs_by_content_not_by_the_series_folder(shared_data, tmp_path, capsys):
    src = _patient_series(shared_data, tmp_path / SECRET_DIR)
    out = tmp_path / "slices"
    assert main(["data", "slice", str(src), "--out", str(out), "--step", "1", "--planes", "axial"]) == 0
    stem = json.loads(capsys.readouterr().out)["stem"]
    names = [p.name for p in out.rglob("*") if p.is_file() and p.parent.name != "_local"]
    assert names and all(n.startswith(stem) or n == ".meditok.lock" for n in names)
    assert not [n for n in names if "ZZTEST" in n or "MRN" in n]
    assert len(stem) == 16 and all(c in "0123456789abcdef" for c in stem)
    assert SECRET_DIR in (out / "_local" / "sources.csv").read_text()


@pytest.mark.parametrize("verb", ["tokenize", "reconstruct"])
def test_batch_verbs_store_relative_or_pseudonymous_names(shared_data, tmp_path, tiny_model, verb, one_thread):
    ckpt = tiny_model.save_pretrained(tmp_path / "tiny")
    src = tmp_path / "study" / "Doe^John_1970"
    src.mkdir(parents=True)
    for i in range(2):
        shutil.copy(shared_data / "isic_cc0_550" / f"ISIC_{i:07d}.jpg", src / f"Doe_John_{i}.jpg")
    common = ["-c", str(ckpt), "--size", "32"]
    plain = tmp_path / ("p.npz" if verb == "tokenize" else "p")
    assert main([verb, str(tmp_path / "study"), "--out", str(plain), *common]) == 0
    stored = _stored_names(plain, verb)
    assert sorted(stored) == ["Doe^John_1970/Doe_John_0.jpg", "Doe^John_1970/Doe_John_1.jpg"]
    pseudo = tmp_path / ("q.npz" if verb == "tokenize" else "q")
    assert main([verb, str(tmp_path / "study"), "--out", str(pseudo), *common, "--pseudonymize"]) == 0
    stored = _stored_names(pseudo, verb)
    assert len(stored) == 2 and all(len(n) == 16 and set(n) <= set("0123456789abcdef") for n in stored)
    shared_outputs = [pseudo] if verb == "tokenize" else [p for p in pseudo.rglob("*")
                                                          if p.is_file() and "_local" not in p.parts]
    for f in shared_outputs:
        assert "Doe" not in f.name and b"Doe" not in _all_text(f)
    local = Path(str(pseudo) + ".sources.csv") if verb == "tokenize" else pseudo / "_local" / "sources.csv"
    assert "Doe_John_0.jpg" in local.read_text()


def _stored_names(out: Path, verb: str) -> list[str]:
    if verb == "tokenize":
        with np.load(out) as data:
            return [str(p) for p in data["paths"]]
    return [r["source"] for r in csv.DictReader((out / "metrics.csv").open())]


def _all_text(f: Path) -> bytes:
    if f.suffix == ".npz":
        with np.load(f) as data:
            return " ".join(str(data[k]) for k in data.files if data[k].dtype.kind in "US").encode()
    return f.read_bytes()


# ----------------------------------------------------------------------------- item 13: modality
def test_extra_folders_and_csv_say_their_modality(shared_data, tmp_path, capsys):
    us = tmp_path / "breast_us"
    us.mkdir()
    with np.load(shared_data / "medmnist" / "breastmnist.npz") as m:
        for i in range(3):
            img = Image.fromarray(m["test_images"][i]).resize((160, 160), Image.BICUBIC)
            img.save(us / f"us_{i}.png")
    _user_folder(shared_data, tmp_path / "derm", n=2)
    table = tmp_path / "list.csv"
    table.write_text("path,modality,caption\nderm/lesion_0.png,dermoscopy,\n"
                     "derm/lesion_1.png,Dermoscopy,This is a dermoscopy image of a nevus.\n")
    out = tmp_path / "corpus"
    assert main(["data", "build-corpus", "--sources", "--extra", f"{us}=US", "--extra-csv", str(table),
                 "--out", str(out), "--workers", "1", "--quiet"]) == 0
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    mods = sorted(r["modality"] for r in rows)
    assert mods == ["dermoscopy", "dermoscopy", "ultrasound", "ultrasound", "ultrasound"]
    assert "This is a dermoscopy image of a nevus." in {r["caption"] for r in rows}
    assert "This is an ultrasound image." in {r["caption"] for r in rows}
    capsys.readouterr()
    assert main(["data", "build-corpus", "--sources", "--extra", f"{us}=sonar", "--out",
                 str(tmp_path / "c2"), "--quiet"]) == 1
    assert "unknown modality 'sonar'" in capsys.readouterr().err
