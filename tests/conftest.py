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
