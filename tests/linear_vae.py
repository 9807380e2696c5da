"""Linear-Gaussian kernel VAEs with known p(w) and p(z | w), shared by the estimator tests."""

from __future__ import annotations

import torch

from dwp.priors.vae import KernelVAE, linear_gaussian_marginal


def set_exact_posterior(
    vae: KernelVAE, a: torch.Tensor, b: torch.Tensor, noise_var: torch.Tensor
) -> KernelVAE:
    """Give ``vae`` (arch "linear") the decoder p(w|z) = N(Az + b, diag(noise_var)) and the
    encoder p(z|w) exactly: N(S A^T D^-1 (w - b), S), S = (I + A^T D^-1 A)^-1, D = diag(noise_var).

    a (d, z), b (d,), noise_var (d,). A^T D^-1 A must be diagonal (the encoder's covariance is).
    """
    m = a.T @ (a / noise_var[:, None])
    assert torch.allclose(m, torch.diag(m.diagonal()), atol=1e-5), "A^T D^-1 A not diagonal"
    post_var = 1.0 / (1.0 + m.diagonal())
    e = post_var[:, None] * (a.T / noise_var)
    with torch.no_grad():
        vae.decoder.linear.weight.copy_(a)
        vae.decoder.linear.bias.copy_(b)
        vae.decoder.log_var.copy_(torch.log(noise_var))
        vae.encoder.linear.weight.copy_(e)
        vae.encoder.linear.bias.copy_(-e @ b)
        vae.encoder.log_var.copy_(torch.log(post_var))
    return vae


@torch.no_grad()
def exact_log_prob(vae: KernelVAE, w: torch.Tensor) -> torch.Tensor:
    """log p(w) in closed form, in float64: (N, k, k) -> (N,)."""
    loc, cov = linear_gaussian_marginal(vae)
    dist = torch.distributions.MultivariateNormal(loc.double(), cov.double())
    return dist.log_prob(w.flatten(1).double())
