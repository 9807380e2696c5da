"""benchmarks/posterior_stats.py: kernel norms and SNRs against hand-computed values."""

from __future__ import annotations

import math

import torch


def test_layer_stats_gaussian_and_truncated_alpha(benchmark_script):
    mod = benchmark_script("posterior_stats")
    mu = torch.zeros(1, 3, 2, 2)
    mu[0, :, 0, 0] = torch.tensor([3.0, 1.0, 2.0])  # kernel norms 3, 1, 2: median 2
    mu[0, :, 1, 1] = torch.tensor([4.0, 0.0, 0.0])  # first kernel's norm becomes 5
    log_s2 = torch.full_like(mu, math.log(0.25))  # sum sigma^2 = 1 per kernel: SNR = norm
    stats = mod.layer_stats({"c.weight_mu": mu, "c.log_sigma2": log_s2,
                             "d.weight_mu": mu, "d.alpha_logit": torch.zeros(1, 3, 1, 1)})
    assert stats["c"]["norm"] == 2.0 and math.isclose(stats["c"]["snr"], 2.0)
    assert stats["c"]["norm_max"] == 5.0
    assert math.isclose(stats["c"]["log_sigma2"], math.log(0.25), rel_tol=1e-6)
    # truncated alpha: sigma^2 = sigmoid(0) mu^2 = mu^2 / 2, so SNR = sqrt(2) for every kernel
    assert math.isclose(stats["d"]["snr"], math.sqrt(2.0), rel_tol=1e-6)
