"""Shared fixtures: the real dataset folder (``DWP_DATA_ROOT``, default ../shared/datasets)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

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


@pytest.fixture(scope="session")
def benchmark_script():
    """A loader of the scripts under ``benchmarks/`` (not a package): ``load("bnn_validation")``
    imports ``benchmarks/bnn_validation.py`` as a module, so tests can check its functions."""
    folder = Path(__file__).resolve().parents[1] / "benchmarks"

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load
