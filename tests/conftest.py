"""Shared fixtures: the real dataset folder (``DWP_DATA_ROOT``, default ../shared/datasets)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real shared dataset folder; tests that need it skip when it is absent."""
    root = Path(os.environ.get("DWP_DATA_ROOT", _DEFAULT))
    if not (root / "mnist").is_dir():
        pytest.skip(f"real datasets not found at {root} (set DWP_DATA_ROOT)")
    return root


@pytest.fixture
def one_thread():
    """Run a test with one torch thread: tiny tensors, and no OpenMP stalls when the CI's two
    cores are oversubscribed. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
