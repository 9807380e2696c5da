"""The improper log-uniform prior p(w) ∝ 1/|w| of sparse variational dropout.

Its KL divergence with a Gaussian posterior N(mu, sigma^2) depends only on
alpha = sigma^2 / mu^2 and has no closed form; we use the approximation of Molchanov,
Ashukha & Vetrov (2017), "Variational Dropout Sparsifies Deep Neural Networks", Eq. 14:

    -KL ≈ k1 * sigmoid(k2 + k3 * log alpha) - 0.5 * log(1 + 1/alpha) - k1,
    k1 = 0.63576, k2 = 1.87320, k3 = 1.48695,

which fixes the (infinite) constant of the improper prior so that KL -> 0 as alpha -> inf.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from dwp.priors.base import KernelPrior
from dwp.runtime import DwpError

K1, K2, K3 = 0.63576, 1.87320, 1.48695
#: Added to mu^2 before the log, so a posterior mean of exactly 0 gives a finite log alpha.
MU2_FLOOR = 1e-16


def log_alpha(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """log(sigma^2 / mu^2) elementwise (mu^2 floored at ``MU2_FLOOR``)."""
    return log_var - torch.log(mu.square() + MU2_FLOOR)


def kl_loguniform_approx(la: torch.Tensor) -> torch.Tensor:
    """Molchanov et al. (2017) approximation of KL(N(mu, alpha mu^2) || LogU) elementwise."""
    return K1 - K1 * torch.sigmoid(K2 + K3 * la) + 0.5 * F.softplus(-la)


class LogUniform(KernelPrior):
    """Improper log-uniform prior p(w) ∝ prod_i 1/|w_i| (any kernel size).

    ``sample`` raises ``DwpError`` (an improper distribution cannot be sampled);
    ``log_prob`` returns the *unnormalised* -sum_i log|w_i| (defined up to an infinite
    constant: use it for gradients or comparisons between kernels, never as a likelihood);
    ``kl`` is the Molchanov et al. (2017) approximation summed over the k*k entries.
    """

    family = "loguniform"

    def __init__(self, kernel_size: int | None = None) -> None:
        super().__init__(kernel_size)

    def sample(self, n, kernel_size=None, generator=None):
        raise DwpError(
            "the log-uniform prior is improper and cannot be sampled: use another prior "
            "(e.g. --family sn or a trained vae) to initialise or sample kernels"
        )

    def log_prob(self, w):
        self.check_kernels(w)
        return -torch.log(w.abs()).flatten(1).sum(1)

    def kl(self, mu, log_var, reverse=None):
        self.check_kernels(mu, "mu", finite=False)
        return kl_loguniform_approx(log_alpha(mu, log_var)).flatten(1).sum(1)

    def config(self) -> dict[str, Any]:
        return {"kernel_size": self.kernel_size}
