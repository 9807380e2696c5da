"""Gaussian kernel priors: the standard normal, an isotropic fit and a full-covariance fit.

All three score kernels of shape (N, k, k) exactly and give the KL divergence of a factorised
Gaussian posterior q(w) = N(mu, diag(exp(log_var))) in closed form, in nats per kernel summed
over the k*k entries.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from dwp.kernelsets import as_kernels
from dwp.priors.base import KernelPrior
from dwp.runtime import DwpError

LOG_2PI = math.log(2 * math.pi)


def kl_diag_vs_isotropic(
    mu: torch.Tensor, log_var: torch.Tensor, loc: torch.Tensor | float, log_var_p: torch.Tensor
) -> torch.Tensor:
    """KL(N(mu, diag e^log_var) || N(loc, e^log_var_p I)) per kernel: (N, k, k) -> (N,).

    ``loc`` broadcasts against ``mu`` (a scalar or a (k, k) tensor); ``log_var_p`` is a scalar.
    """
    var_ratio = torch.exp(log_var - log_var_p)
    terms = var_ratio + (mu - loc).square() * torch.exp(-log_var_p) - 1.0 - log_var + log_var_p
    return 0.5 * terms.flatten(1).sum(1)


def kl_diag_vs_full(
    mu: torch.Tensor, log_var: torch.Tensor, loc: torch.Tensor, scale_tril: torch.Tensor
) -> torch.Tensor:
    """KL(N(mu, diag e^log_var) || N(loc, L L^T)) per kernel in closed form: (N, k, k) -> (N,).

    ``loc`` is (d,), ``scale_tril`` = L is (d, d) lower triangular with d = k*k.
    KL = 1/2 [tr(S^-1 V) + (loc - mu)^T S^-1 (loc - mu) - d + log|S| - sum log v].
    """
    n = mu.shape[0]
    d = loc.shape[0]
    m = mu.reshape(n, d)
    lv = log_var.reshape(n, d)
    eye = torch.eye(d, dtype=scale_tril.dtype, device=scale_tril.device)
    l_inv = torch.linalg.solve_triangular(scale_tril, eye, upper=False)  # (d, d)
    prec_diag = l_inv.square().sum(0)  # diag(S^-1) = column sums of L^-T L^-1 -> sum_k Linv_ki^2
    trace = (torch.exp(lv) * prec_diag).sum(1)
    maha = ((m - loc) @ l_inv.T).square().sum(1)
    logdet = 2.0 * torch.log(torch.diagonal(scale_tril)).sum()
    return 0.5 * (trace + maha - d + logdet - lv.sum(1))


def _gaussian_logpdf_iso(w: torch.Tensor, loc, log_var: torch.Tensor) -> torch.Tensor:
    """Sum over entries of log N(w | loc, e^log_var): (N, k, k) -> (N,)."""
    return (-0.5 * (LOG_2PI + log_var + (w - loc).square() * torch.exp(-log_var))).flatten(1).sum(1)


class StandardNormal(KernelPrior):
    """N(0, sigma^2) on every kernel entry, independently; works for any kernel size.

    Parameters
    ----------
    sigma:
        The standard deviation (default 1).
    kernel_size:
        Optional fixed k; ``None`` (default) accepts any k.
    """

    family = "sn"

    def __init__(self, sigma: float = 1.0, kernel_size: int | None = None) -> None:
        super().__init__(kernel_size)
        if not sigma > 0:
            raise DwpError(f"StandardNormal: sigma must be > 0, got {sigma}")
        self.sigma = float(sigma)

    def _log_var(self, like: torch.Tensor) -> torch.Tensor:
        # torch.full, not torch.tensor: no host-to-device copy, so a CUDA graph can record it
        return torch.full((), 2 * math.log(self.sigma), dtype=like.dtype, device=like.device)

    def sample(self, n, kernel_size=None, generator=None):
        k = self._resolve_k(kernel_size)
        dev = generator.device if generator is not None else None
        return self.sigma * torch.randn(n, k, k, generator=generator, device=dev)

    def log_prob(self, w):
        self.check_kernels(w)
        return _gaussian_logpdf_iso(w, 0.0, self._log_var(w))

    def kl(self, mu, log_var, reverse=None):
        self.check_kernels(mu, "mu", finite=False)
        return kl_diag_vs_isotropic(mu, log_var, 0.0, self._log_var(mu))

    def config(self) -> dict[str, Any]:
        return {"sigma": self.sigma, "kernel_size": self.kernel_size}


class IsotropicGaussian(KernelPrior):
    """N(loc, s^2 I) over the k*k entries: per-entry mean, one shared variance.

    Fitted by maximum likelihood with ``IsotropicGaussian.fit(kernels)``:
    loc = mean kernel, s^2 = mean squared deviation over all entries.
    Buffers: ``loc`` (k, k), ``log_var`` (scalar).
    """

    family = "iso"

    def __init__(self, kernel_size: int) -> None:
        super().__init__(kernel_size)
        self.register_buffer("loc", torch.zeros(kernel_size, kernel_size))
        self.register_buffer("log_var", torch.zeros(()))

    @classmethod
    def fit(cls, kernels: torch.Tensor) -> IsotropicGaussian:
        """Closed-form MLE on kernels (N, k, k) (computed in float64)."""
        w = as_kernels(kernels).double()
        prior = cls(w.shape[-1])
        loc = w.mean(0)
        var = (w - loc).square().mean()
        if not var > 0:
            raise DwpError("IsotropicGaussian.fit: the kernels have zero variance")
        prior.loc.copy_(loc.float())
        prior.log_var.copy_(torch.log(var).float())
        return prior

    def sample(self, n, kernel_size=None, generator=None):
        k = self._resolve_k(kernel_size)
        eps = torch.randn(n, k, k, generator=generator, device=self.loc.device)
        return self.loc + torch.exp(0.5 * self.log_var) * eps

    def log_prob(self, w):
        self.check_kernels(w)
        return _gaussian_logpdf_iso(w, self.loc, self.log_var)

    def kl(self, mu, log_var, reverse=None):
        self.check_kernels(mu, "mu", finite=False)
        return kl_diag_vs_isotropic(mu, log_var, self.loc, self.log_var)


class FittedGaussian(KernelPrior):
    """Full-covariance N(loc, S) over the k*k entries (the paper's Appendix C baseline).

    ``FittedGaussian.fit(kernels)`` computes the closed-form maximum-likelihood estimate
    loc = mean, S = (1/N) sum (w - loc)(w - loc)^T in float64. When S is not positive
    definite (fewer kernels than k*k + 1, or exactly collinear entries) a jitter
    eps * mean(diag S) * I is added, eps = 1e-10, 1e-9, ... up to 1e-3, the smallest that makes
    the Cholesky factorisation succeed; the jitter used is stored in the ``jitter`` buffer
    (0 when none was needed).

    Buffers: ``loc`` (d,), ``covariance_matrix`` (d, d), ``scale_tril`` (d, d), ``jitter`` (),
    with d = k*k (row-major flattening of the kernel).
    """

    family = "mvn"

    def __init__(self, kernel_size: int) -> None:
        super().__init__(kernel_size)
        d = kernel_size * kernel_size
        self.register_buffer("loc", torch.zeros(d))
        self.register_buffer("covariance_matrix", torch.eye(d))
        self.register_buffer("scale_tril", torch.eye(d))
        self.register_buffer("jitter", torch.zeros(()))

    @classmethod
    def fit(cls, kernels: torch.Tensor) -> FittedGaussian:
        """Closed-form MLE on kernels (N, k, k)."""
        w = as_kernels(kernels).double()
        n, k = w.shape[0], w.shape[-1]
        x = w.reshape(n, k * k)
        loc = x.mean(0)
        xc = x - loc
        cov = xc.T @ xc / n
        jitter = 0.0
        chol, info = torch.linalg.cholesky_ex(cov)
        if info != 0:
            scale = float(torch.diagonal(cov).mean())
            if not scale > 0:
                raise DwpError("FittedGaussian.fit: the kernels have zero variance")
            for eps in [10.0**e for e in range(-10, -2)]:
                chol, info = torch.linalg.cholesky_ex(cov + eps * scale * torch.eye(k * k).double())
                if info == 0:
                    jitter = eps * scale
                    break
            else:
                raise DwpError(
                    f"FittedGaussian.fit: covariance of {n} kernels is singular even with jitter; "
                    f"use more kernels (at least {k * k + 1})"
                )
        prior = cls(k)
        prior.loc.copy_(loc.float())
        prior.covariance_matrix.copy_((cov + jitter * torch.eye(k * k).double()).float())
        prior.scale_tril.copy_(chol.float())
        prior.jitter.fill_(jitter)
        return prior

    def sample(self, n, kernel_size=None, generator=None):
        k = self._resolve_k(kernel_size)
        eps = torch.randn(n, k * k, generator=generator, device=self.loc.device)
        return (self.loc + eps @ self.scale_tril.T).reshape(n, k, k)

    def log_prob(self, w):
        self.check_kernels(w)
        n, d = w.shape[0], self.loc.shape[0]
        diff = (w.reshape(n, d) - self.loc).T  # (d, N)
        sol = torch.linalg.solve_triangular(self.scale_tril, diff, upper=False)
        logdet = 2.0 * torch.log(torch.diagonal(self.scale_tril)).sum()
        return -0.5 * (d * LOG_2PI + logdet + sol.square().sum(0))

    def kl(self, mu, log_var, reverse=None):
        self.check_kernels(mu, "mu", finite=False)
        return kl_diag_vs_full(mu, log_var, self.loc, self.scale_tril)


__all__ = [
    "FittedGaussian",
    "IsotropicGaussian",
    "StandardNormal",
    "kl_diag_vs_full",
    "kl_diag_vs_isotropic",
]
