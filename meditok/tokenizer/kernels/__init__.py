"""Compiled CPU kernels of the tokenizer and the CPU run-time settings around them.

* :mod:`.search`: the exact fused nearest-code search (``nearest_codes``), its torch reference
  and the build / cache / fallback machinery of the C++ extension (``nearest_code.cpp``).
* :mod:`.cpu`: threads from the cores this process may really use, OpenMP wait policy.

Build the extension once with ``python -m meditok.tokenizer.kernels build`` (the install script
does); ``python -m meditok.tokenizer.kernels info`` says what is used.
"""
from meditok.tokenizer.kernels.search import (LOOKUP_ROWS, build, extension_available,
                                              load_extension, nearest_codes,
                                              reference_nearest_codes, status)

__all__ = ["LOOKUP_ROWS", "build", "extension_available", "load_extension", "nearest_codes",
           "reference_nearest_codes", "status"]
