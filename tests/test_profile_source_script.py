"""benchmarks/profile_source_step.py: its FLOP count and a tiny CPU run."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

from dwp.nets import FConvMNIST

pytestmark = pytest.mark.usefixtures("one_thread")


def _macs_by_hooks(widths: tuple[int, int]) -> int:
    """Multiply-adds of one image through FConvMNIST, counted from the layers' real outputs."""
    net = FConvMNIST(widths)
    total = 0

    def hook(module, inp, out):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total += out[0].numel() * module.in_channels * k
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.register_forward_hook(hook)
    net(torch.zeros(1, 1, 28, 28))
    return total


@pytest.mark.parametrize("widths", [(256, 512), (32, 128), (3, 5)])
def test_mac_count_matches_the_layers(benchmark_script, widths):
    mod = benchmark_script("profile_source_step")
    assert mod.conv_macs_per_image(widths) == _macs_by_hooks(widths)


def test_tiny_cpu_run_writes_results(benchmark_script, tmp_path, monkeypatch):
    mod = benchmark_script("profile_source_step")
    out = tmp_path / "prof.json"
    monkeypatch.setattr(sys, "argv", [
        "profile_source_step.py", "--device", "cpu", "--widths", "4", "8", "--nets", "2",
        "--batch", "8", "--steps", "1", "--warmup", "1", "--out", str(out)])
    mod.main()
    rec = json.loads(out.read_text())
    assert set(rec["results"]) == {"plain-fp32", "plain-tf32", "plain-bf16", "plain-bf16-cl",
                                   "batched-bf16-1", "batched-bf16-2", "unfold-bf16-1",
                                   "unfold-bf16-2", "mixed-bf16-2", "plain-fp32-paperorder",
                                   "plain-bf16-paperorder", "mixed-bf16-2-paperorder",
                                   "batched-fp32-2", "batched-fp32-2-paperorder"}
    for r in rec["results"].values():
        assert r["s_per_step"] > 0 and r["tflops"] > 0
    assert rec["results"]["batched-bf16-2"]["s_per_net_step"] == pytest.approx(
        rec["results"]["batched-bf16-2"]["s_per_step"] / 2)
    text = out.with_suffix(".txt").read_text()
    assert "conv_impl=native" in text and "conv_impl=unfold" in text and "Name" in text
    assert "conv_impl=mixed" in text


def test_variants_flag_times_only_those(benchmark_script, tmp_path, monkeypatch):
    mod = benchmark_script("profile_source_step")
    out = tmp_path / "prof.json"
    monkeypatch.setattr(sys, "argv", [
        "profile_source_step.py", "--device", "cpu", "--widths", "4", "8", "--nets", "2",
        "--batch", "8", "--steps", "1", "--warmup", "1", "--variants", "mixed-bf16-2",
        "--profile-impls", "--out", str(out)])
    mod.main()
    assert set(json.loads(out.read_text())["results"]) == {"mixed-bf16-2"}
    # several rounds: still one (median) row per variant
    monkeypatch.setattr(sys, "argv", [
        "profile_source_step.py", "--device", "cpu", "--widths", "4", "8", "--nets", "2",
        "--batch", "8", "--steps", "1", "--warmup", "1", "--repeats", "3", "--variants",
        "batched-fp32-2", "batched-fp32-2-paperorder", "--profile-impls", "--out", str(out)])
    mod.main()
    res = json.loads(out.read_text())["results"]
    assert set(res) == {"batched-fp32-2", "batched-fp32-2-paperorder"}
    assert all(r["s_per_step"] > 0 for r in res.values())
    monkeypatch.setattr(sys, "argv", ["profile_source_step.py", "--device", "cpu",
                                      "--variants", "nope"])
    with pytest.raises(SystemExit):
        mod.main()
