"""Numeric settings of training loops (dwp.precision)."""

from __future__ import annotations

import pytest
import torch

from dwp.precision import check_precision, flush_denormals, flushing_denormals
from dwp.runtime import DwpError


def test_flush_denormals_zeroes_subnormal_arithmetic_and_restores_the_mode():
    tiny = torch.finfo(torch.float32).tiny  # smallest normal float32
    x = torch.full((3,), tiny)
    assert not flushing_denormals()
    assert (x / 4).ne(0).all()  # subnormal results survive by default
    with flush_denormals(torch.device("cpu")):
        assert flushing_denormals()
        assert (x / 4).eq(0).all()
        assert (x * 2).eq(2 * tiny).all()  # normal floats are untouched
        with flush_denormals(torch.device("cpu")):  # nested blocks keep the outer mode
            pass
        assert flushing_denormals()
    assert not flushing_denormals()
    assert (x / 4).ne(0).all()


def test_flush_denormals_leaves_other_devices_alone():
    with flush_denormals(torch.device("meta")):
        assert not flushing_denormals()


def test_precision_names_are_checked():
    check_precision("bf16")
    with pytest.raises(DwpError, match="precision must be one of fp32, tf32, bf16"):
        check_precision("fp16")
