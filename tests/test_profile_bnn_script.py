"""benchmarks/profile_bnn_step.py: its multiply-add counts, checked by hand, and a tiny run."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from dwp.priors import KernelVAE

pytestmark = pytest.mark.usefixtures("one_thread")


def test_data_macs_count_both_lrt_passes(benchmark_script):
    mod = benchmark_script("profile_bnn_step")
    conv1 = 22 * 22 * 32 * 49  # per image: 22x22 outputs x 32 channels x 7x7 x 1 input channel
    conv2 = 7 * 7 * 128 * 32 * 25
    fwd, step = mod.data_macs(50)
    assert fwd == 50 * 2 * (conv1 + conv2)  # mean and variance convolutions
    # conv1: forward + weight gradient; conv2: forward + weight and input gradients
    assert step == 50 * (2 * 2 * conv1 + 2 * 3 * conv2)


def test_vae_macs_of_the_paper_5x5_vae(benchmark_script):
    mod = benchmark_script("profile_bnn_step")
    h, z = 64, 4
    encoder = (25 * h * 9 + 25 * h * h * 9 + 9 * 2 * h * h * 9 + 1 * 2 * h * 2 * h * 9
               + 2 * (1 * z * 2 * h))  # two 3x3 'same' convs, two valid ones, mean/var heads
    decoder = (1 * 2 * h * z + 1 * 2 * h * 2 * h * 9 + 9 * 2 * h * 2 * h * 9
               + 25 * h * 2 * h + 2 * 25 * h)  # 1x1, two transposed 3x3, 1x1, two heads
    assert mod.vae_macs(KernelVAE(5), 5, 3) == 3 * (encoder + decoder)


def test_tiny_run_writes_its_json(benchmark_script, tmp_path, monkeypatch):
    mod = benchmark_script("profile_bnn_step")
    out = tmp_path / "p.json"
    monkeypatch.setattr(sys, "argv", ["profile_bnn_step", "--steps", "1", "--warmup", "0",
                                      "--profile-steps", "1", "--subsample", "4",
                                      "--out", str(out)])
    torch.manual_seed(0)
    mod.main()
    rec = json.loads(out.read_text())
    assert set(rec["variants"]) == {"full", "data", "prior"}
    for name in ("data", "prior"):
        row = rec["variants"][name]
        assert row["seconds_per_step"] > 0 and row["gflops"] > 0 and "aten::" in row["profile"]
