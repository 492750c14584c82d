"""The fused nearest-code search is exact: the same indices as the quantiser's reference
(``bmm`` + ``argmax`` over row chunks) on random and real latents, exact ties to the smallest
index, batch size 1, odd shapes; and the fallback to the reference is clean.

The kernel is built by ``scripts/install.sh`` (``python -m meditok.tokenizer.kernels build``);
without it the kernel tests skip and the fallback tests still run.
"""
from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from meditok.tokenizer.kernels import search as fs

HAVE_EXT = fs.load_extension()
needs_ext = pytest.mark.skipif(not HAVE_EXT, reason=f"kernel not built: {fs._state['error']}")
ISAS = ["avx512", "avx2", "gen512", "gen256", "base"]


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


@pytest.fixture
def ops():
    o = torch.ops.meditok_fused
    yield o
    o.set_isa("")  # restore the best instruction set after a test forced one


def available_isas(ops):
    return sorted({ops.set_isa(name) for name in ISAS})


# ---------------------------------------------------------------- wrapper == reference
@needs_ext
@pytest.mark.parametrize("k,n,v,d", [
    (8, 4096, 4096, 8), (8, 1, 4096, 8), (8, 64, 4096, 8), (8, 1025, 4096, 8), (8, 2049, 4096, 8),
    (3, 7, 4096, 8), (1, 300, 100, 8), (2, 33, 17, 8), (2, 5, 50, 3), (4, 130, 200, 16),
    (2, 1024, 256, 64), (2, 2, 256, 64), (1, 1, 1, 1), (8, 16, 15, 8),
])
def test_search_equals_reference_random(k, n, v, d):
    f, b = unit(k, n, d, seed=1), unit(k, v, d, seed=2)
    assert torch.equal(fs.nearest_codes(f, b), fs.reference_nearest_codes(f, b))


@needs_ext
def test_thread_count_does_not_change_indices():
    f, b = unit(8, 3000, 8, seed=3), unit(8, 4096, 8, seed=4)
    old = torch.get_num_threads()
    try:
        outs = []
        for t in (1, 2):
            torch.set_num_threads(t)
            outs.append(fs.nearest_codes(f, b))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0], fs.reference_nearest_codes(f, b))


def _real_batch(shared_data, n, size):
    from meditok.data.preprocess import PreprocessConfig, load_images

    files = sorted((shared_data / "isic_cc0_550").glob("ISIC_*.jpg"))[:n]
    if len(files) < n:
        pytest.skip("ISIC images not found in shared data")
    return load_images(files, PreprocessConfig(image_size=size))


@needs_ext
@pytest.mark.parametrize("size,batch", [(64, 16), (128, 16), (128, 1)])
def test_search_equals_reference_on_real_latents(shared_data, one_thread, size, batch):
    """Latents of the shipped model on real dermoscopy images: every index equal, and the
    fp32 scores of each reference chunk are bit for bit the kernel's arithmetic."""
    from meditok import MedITok

    model = MedITok.from_pretrained("meditok-small")
    x = _real_batch(shared_data, batch, size)
    with torch.no_grad():
        latents, _ = model._encode(x)
        f = model.quantizer._normalized_chunks(latents)
        books = model.quantizer.codebook_vectors()
    ref = fs.reference_nearest_codes(f, books)
    assert torch.equal(fs.nearest_codes(f, books), ref)
    for i in range(0, f.shape[1], fs.LOOKUP_ROWS):
        chunk = f[:, i:i + fs.LOOKUP_ROWS]
        if chunk.shape[1] > 1:  # 1-row chunks are gemv; the wrapper redoes those by reference
            scores = torch.bmm(chunk, books.transpose(1, 2))
            assert torch.ops.meditok_fused.scores_mismatch(chunk, books, scores) == 0
    # through the model API: the default path = the reference lookup
    tokens = model.tokenize(x)
    assert torch.equal(tokens.reshape(batch, 8, -1).transpose(0, 1).reshape(8, -1), ref)


# ---------------------------------------------------------------- kernel arithmetic
@needs_ext
def test_scores_bitwise_equal_bmm_on_gemm_path(ops):
    f, b = unit(8, 1024, 8, seed=5), unit(8, 4096, 8, seed=6)
    if not fs.bmm_is_sequential_fma(1024, 8, 4096, 8):
        pytest.skip("this BLAS does not use the sequential FMA order; the wrapper uses the reference")
    s = torch.bmm(f, b.transpose(1, 2))
    assert torch.equal(s, ops.scores_fma(f, b))
    assert ops.scores_mismatch(f, b, s) == 0
    assert ops.scores_mismatch(f, b, s + 1e-3) == s.numel()


@needs_ext
@pytest.mark.parametrize("k,n,v,d", [(2, 37, 4096, 8), (1, 1, 17, 8), (3, 13, 33, 5), (2, 9, 16, 32), (1, 6, 1, 8)])
def test_every_isa_is_first_argmax_of_its_scores(ops, k, n, v, d):
    f, b = unit(k, n, d, seed=7), unit(k, v, d, seed=8)
    want = torch.argmax(ops.scores_fma(f, b), dim=-1)
    for isa in available_isas(ops):
        ops.set_isa(isa)
        got, code = ops.nearest_codes_status(f, b)
        assert code == 0
        assert torch.equal(got, want), isa


# ---------------------------------------------------------------- exact ties
def tie_cases():
    k, v, d = 2, 4096, 8
    books = unit(k, v, d, seed=9)
    f = unit(k, 50, d, seed=10)
    best = fs.reference_nearest_codes(f, books)
    dup = books.clone()  # the winner's row copied to a later and an earlier index
    for kk in range(k):
        for r in range(0, 50, 5):
            w = int(best[kk, r])
            dup[kk, (w + 1000) % v] = dup[kk, w]
            dup[kk, (w + 3000) % v] = dup[kk, w]
    yield "duplicate rows", f, dup
    yield "all codes equal", f, books[:, :1].expand(k, v, d).contiguous()
    z = f.clone()
    z[:, ::3] = 0  # F.normalize of a zero chunk: every score 0
    yield "zero queries", z, books
    q = torch.zeros(k, 4, d)
    q[:, :, 0] = q[:, :, 1] = 2 ** -0.5
    bk = books.clone()
    bk[..., :2] = -bk[..., :2].abs()  # every other code scores <= 0 for q
    bk[:, 700] = 0
    bk[:, 700, 1] = 1  # e1 at 700
    bk[:, 3000] = 0
    bk[:, 3000, 0] = 1  # e0 at 3000: exactly the same score as e1
    bk[:, 9] = 0
    bk[:, 9, 0] = bk[:, 9, 1] = 2 ** -0.5  # the exact winner at 9
    yield "equal scores, winner first", q, bk
    bk2 = bk.clone()
    bk2[:, 9] = -bk2[:, 9]
    yield "equal scores e0/e1", q, bk2
    qn = torch.zeros(1, 3, d)
    qn[..., 0] = 1
    bn = F.normalize(torch.rand(1, 17, d) + 0.1, dim=-1)
    bn[..., 0] = -bn[..., 0].abs()
    yield "negative scores, V=17", qn, bn  # padded lanes of the tail block must not win


@needs_ext
@pytest.mark.parametrize("case", list(range(6)))
def test_exact_ties_go_to_the_smallest_index(ops, case):
    name, f, b = list(tie_cases())[case]
    ref = fs.reference_nearest_codes(f, b)
    want = torch.argmax(torch.bmm(f.double(), b.double().transpose(1, 2)), dim=-1)
    assert torch.equal(ref, want), f"reference vs fp64 first-argmax ({name})"
    expected = {"all codes equal": 0, "equal scores, winner first": 9, "equal scores e0/e1": 700}
    if name in expected:
        assert (ref == expected[name]).all(), name
    if name == "zero queries":
        assert (ref[:, ::3] == 0).all()
    for isa in available_isas(ops):
        ops.set_isa(isa)
        got, code = ops.nearest_codes_status(f, b)
        assert code == 0 and torch.equal(got, ref), f"{name} / {isa}"
    ops.set_isa("")
    assert torch.equal(fs.nearest_codes(f, b), ref), name


# ---------------------------------------------------------------- inputs
@needs_ext
def test_non_contiguous_and_grad_inputs():
    z = torch.randn(2, 37, 64)
    f = F.normalize(z.reshape(-1, 8, 8), dim=-1).transpose(0, 1)  # as _normalized_chunks: a view
    assert not f.is_contiguous()
    b = unit(8, 4096, 8, seed=11).requires_grad_(True)
    out = fs.nearest_codes(f, b)
    assert out.dtype == torch.int64 and out.shape == (8, 74)
    assert torch.equal(out, fs.reference_nearest_codes(f.contiguous(), b.detach()))


@needs_ext
def test_non_finite_input_gets_torch_semantics(ops):
    f, b = unit(2, 40, 8, seed=12), unit(2, 4096, 8, seed=13)
    f[0, 3, 2] = float("nan")
    f[1, 5, 0] = float("inf")
    assert ops.nearest_codes_status(f, b)[1] == 1
    assert torch.equal(fs.nearest_codes(f, b), fs.reference_nearest_codes(f, b))
    big = unit(1, 4, 8) * 1e20  # a partial sum could overflow: refused
    assert ops.nearest_codes_status(big, b[:1] * 1e20)[1] == 1


@needs_ext
def test_empty_and_bad_arguments(ops):
    b = unit(8, 4096, 8)
    assert fs.nearest_codes(torch.empty(8, 0, 8), b).shape == (8, 0)
    with pytest.raises(RuntimeError):
        ops.nearest_codes(torch.zeros(8, 3, 8, dtype=torch.float64), b.double())
    with pytest.raises(RuntimeError):
        ops.nearest_codes(torch.zeros(8, 3, 4), b)


def test_other_devices_never_touch_the_extension(monkeypatch):
    """Non-CPU tensors take the torch path (``meta`` stands in for CUDA/MPS here)."""
    monkeypatch.setattr(fs, "load_extension", lambda *a, **k: pytest.fail("extension used"))
    out = fs.nearest_codes(torch.empty(8, 10, 8, device="meta"), torch.empty(8, 4096, 8, device="meta"))
    assert out.device.type == "meta" and out.shape == (8, 10) and out.dtype == torch.int64
    f, b = unit(2, 9, 8).double(), unit(2, 4096, 8).double()
    assert torch.equal(fs.nearest_codes(f, b), fs.reference_nearest_codes(f, b))


def test_traced_graphs_contain_plain_torch_ops(monkeypatch):
    monkeypatch.setattr(fs, "load_extension", lambda *a, **k: pytest.fail("extension used in a trace"))
    b = unit(2, 4096, 8)
    traced = torch.jit.trace(lambda f: fs.nearest_codes(f, b), (unit(2, 20, 8),), check_trace=False)
    assert "meditok_fused" not in str(traced.graph)
    f = unit(2, 20, 8, seed=3)
    assert torch.equal(traced(f), fs.reference_nearest_codes(f, b))


def test_reduced_precision_flag_mirrors_reference():
    f, b = unit(8, 100, 8), unit(8, 4096, 8)
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        assert fs._reference_not_fp32_fma(f, b)
        assert torch.equal(fs.nearest_codes(f, b), fs.reference_nearest_codes(f, b))
    finally:
        torch.set_float32_matmul_precision(old)


# ---------------------------------------------------------------- fallback / loading
def test_missing_extension_warns_once_and_gives_the_same_tokens(monkeypatch, tiny_model):
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with_ext = tiny_model.tokenize(x)
    monkeypatch.setattr(fs, "_state", fs._fresh_state())
    monkeypatch.setattr(fs, "library_path", lambda: None)
    monkeypatch.delenv("MEDITOK_FUSED_SEARCH", raising=False)
    f, b = unit(8, 30, 8), unit(8, 4096, 8)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        got = fs.nearest_codes(f, b)
        fs.nearest_codes(f, b)
        fallback = tiny_model.tokenize(x)
    msgs = [str(m.message) for m in w if issubclass(m.category, RuntimeWarning)]
    assert len(msgs) == 1 and "unavailable" in msgs[0] and "\n" not in msgs[0]
    assert not fs._state["ok"]
    assert torch.equal(got, fs.reference_nearest_codes(f, b))
    assert torch.equal(fallback, with_ext)


def test_fallback_in_a_fresh_process_is_one_warning_line(tmp_path, shared_data):
    """A process that finds no compiled kernel (empty caches) still tokenizes, identically,
    with exactly one warning line on stderr."""
    from meditok import MedITok

    x = _real_batch(shared_data, 2, 64)
    torch.save(x, tmp_path / "x.pt")
    code = (
        "import torch, sys\n"
        "from pathlib import Path\n"
        "from meditok.tokenizer.kernels import search\n"
        f"search._cache_dirs = lambda: [Path({str(tmp_path / 'empty')!r})]\n"
        "from meditok import MedITok\n"
        "m = MedITok.from_pretrained('meditok-small')\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r})\n"
        "t = m.tokenize(x); m.tokenize(x)\n"
        "assert not search._state['ok']\n"
        f"torch.save(t, {str(tmp_path / 't.pt')!r})\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MEDITOK_FUSED_SEARCH"}
    env["OMP_NUM_THREADS"] = "1"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "RuntimeWarning" in lines[0] and "fused nearest-code search" in lines[0], lines
    model = MedITok.from_pretrained("meditok-small")
    assert torch.equal(torch.load(tmp_path / "t.pt"), model.tokenize(x))


def test_disabled_by_env_gives_no_warning(monkeypatch):
    monkeypatch.setattr(fs, "_state", fs._fresh_state())
    monkeypatch.setenv("MEDITOK_FUSED_SEARCH", "0")
    f, b = unit(8, 30, 8), unit(8, 4096, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(fs.nearest_codes(f, b), fs.reference_nearest_codes(f, b))


def test_unloadable_library_falls_back(monkeypatch, tmp_path):
    bad = tmp_path / "broken.so"
    bad.write_bytes(b"not an ELF file")
    monkeypatch.setattr(fs, "_state", fs._fresh_state())
    monkeypatch.setattr(fs, "library_path", lambda: bad)
    monkeypatch.setattr(fs, "_OPS_NAMESPACE", "meditok_fused_absent")
    assert fs.load_extension() is False and "Error" in fs._state["error"]


def test_failed_build_raises_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(RuntimeError, match="compiler"):
        fs.build(tmp_path)
    res = subprocess.run([sys.executable, "-m", "meditok.tokenizer.kernels", "build", "--dest",
                          str(tmp_path), "--quiet"], capture_output=True, text=True,
                         env={**os.environ, "CXX": str(tmp_path / "no-such-compiler")}, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr and "torch reference" in res.stderr


@pytest.mark.slow
def test_build_from_source_into_a_temp_dir(tmp_path):
    """What install.sh does on a fresh machine (one compiler call, ~12 s of CPU)."""
    p = fs.build(tmp_path)
    assert p.is_file() and p.name == fs.library_name()


@needs_ext
def test_other_chunk_size_follows_the_reference():
    """With a chunk size whose full chunks the BLAS may compute otherwise, the search still
    equals the reference chunked the same way."""
    f, b = unit(8, 70, 8, seed=21), unit(8, 4096, 8, seed=22)
    for rows in (5, 64, 1):
        assert torch.equal(fs.nearest_codes(f, b, rows), fs.reference_nearest_codes(f, b, rows))
