"""Shared fixtures: the real data folder and small seeded models."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(os.environ.get("MEDITOK_SHARED_DATA",
                                  Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ``../shared/data``; skips the test with a clear message when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (set MEDITOK_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


SHARED_REFERENCE = SHARED_DATA.parent / "reference"


@pytest.fixture(scope="session")
def shared_reference() -> Path:
    """Path of ``../shared/reference`` (official key list, spec); skips when absent."""
    if not SHARED_REFERENCE.is_dir():
        pytest.skip(f"reference material not found at {SHARED_REFERENCE}")
    return SHARED_REFERENCE


@pytest.fixture()
def tiny_model():
    """A randomly initialised ``tiny`` MedITok in eval mode (seeded)."""
    from meditok import MedITok

    torch.manual_seed(0)
    return MedITok.from_preset("tiny").eval()


@pytest.fixture()
def one_thread():
    """Run a test with one torch thread: tiny ops on a shared 2-core machine otherwise lose
    most of their time to OpenMP threads spinning against each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
