"""The rescaled prior of benchmarks/bnn_scaled_prior.py: p_s(w) = s^-d p(w / s)."""

from __future__ import annotations

import torch

from dwp.priors import FittedGaussian, IsotropicGaussian


def test_scaled_prior_equals_prior_fitted_on_scaled_kernels(benchmark_script):
    # Maximum-likelihood Gaussians are equivariant: fitting s * kernels gives exactly p_s.
    scaled = benchmark_script("bnn_scaled_prior").ScaledKernelPrior
    g = torch.Generator().manual_seed(0)
    kernels = torch.randn(400, 5, 5, generator=g) * 0.1 + 0.03
    mu = torch.randn(6, 5, 5, generator=g) * 0.2
    log_var = torch.randn(6, 5, 5, generator=g) - 4.0
    w = torch.randn(6, 5, 5, generator=g) * 0.3
    for cls in (IsotropicGaussian, FittedGaussian):
        s = 2.5
        p_s = scaled(cls.fit(kernels), s)
        ref = cls.fit(kernels * s)
        torch.testing.assert_close(p_s.kl(mu, log_var), ref.kl(mu, log_var), rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(p_s.log_prob(w), ref.log_prob(w), rtol=1e-4, atol=1e-3)
    samples = scaled(IsotropicGaussian.fit(kernels), 3.0).sample(20000, generator=g)
    assert abs(samples.std().item() / (3.0 * kernels.std().item()) - 1) < 0.05
