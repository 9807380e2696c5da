"""The interface every kernel prior implements (like ``torch.distributions``, for k x k kernels).

A prior is an ``nn.Module`` over single-channel kernels ``w`` of shape (N, k, k):

- ``sample(n, kernel_size=None, generator=None) -> (n, k, k)``;
- ``log_prob(w) -> (N,)``: the exact log-density where tractable; for implicit priors
  (``KernelVAE``) the evidence lower bound (see ``KernelVAE.iwae_log_prob`` for tighter ones);
- ``kl(mu, log_var, reverse=None) -> (N,)``: KL(q || p) of the factorised Gaussian posterior
  q(w) = N(mu, exp(log_var)) per kernel, in nats, summed over the k*k entries: closed form,
  the standard approximation (log-uniform), a Monte-Carlo estimate (fitted Gaussian uses its
  closed form), or, for implicit priors, a one-sample estimate of the auxiliary upper bound
  (paper Eq. 7) that uses the reverse model ``reverse`` = r(z | w);
- ``make_reverse() -> nn.Module | None``: a fresh trainable r(z | w) for implicit priors
  (a copy of the prior's encoder), ``None`` for explicit ones;
- ``config() -> dict``: the JSON-able constructor arguments (used by ``save``/``load``).

Priors are saved as a folder (``prior.json`` + ``prior.safetensors``) by ``dwp.priors.save_prior``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from dwp.runtime import DwpError


class KernelPrior(nn.Module):
    """Base class of all kernel priors. Subclasses set ``family`` and implement the methods."""

    family: ClassVar[str] = "base"
    #: True when ``kl`` needs no reverse model (closed form or fixed approximation).
    explicit: ClassVar[bool] = True

    def __init__(self, kernel_size: int | None = None) -> None:
        super().__init__()
        self.kernel_size = kernel_size

    # -- checks --------------------------------------------------------------------------
    def check_kernels(self, w: torch.Tensor, name: str = "kernels", finite: bool = True) -> None:
        """Raise ``DwpError`` unless ``w`` is (N, k, k) with this prior's k and finite values.

        ``finite=False`` skips the NaN/inf scan (a device sync on GPU); ``kl`` uses it, since its
        inputs are variational parameters rather than user data.
        """
        if w.ndim != 3 or w.shape[-1] != w.shape[-2]:
            raise DwpError(f"{name}: expected shape (N, k, k), got {tuple(w.shape)}")
        k = w.shape[-1]
        if self.kernel_size is not None and k != self.kernel_size:
            raise DwpError(
                f"{name}: this {self.family} prior is for {self.kernel_size}x{self.kernel_size} "
                f"kernels, got {k}x{k}; use a prior trained on {k}x{k} kernels"
            )
        if finite and not torch.isfinite(w).all():
            raise DwpError(f"{name}: kernels contain NaN or inf values")

    def _resolve_k(self, kernel_size: int | None) -> int:
        k = kernel_size if kernel_size is not None else self.kernel_size
        if k is None:
            raise DwpError(f"{self.family} prior has no fixed kernel size: pass kernel_size")
        if self.kernel_size is not None and k != self.kernel_size:
            raise DwpError(
                f"this {self.family} prior is for {self.kernel_size}x{self.kernel_size} kernels, "
                f"asked for {k}x{k}"
            )
        return k

    # -- interface -----------------------------------------------------------------------
    def sample(
        self, n: int, kernel_size: int | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw ``n`` kernels, shape (n, k, k)."""
        raise NotImplementedError

    def log_prob(self, w: torch.Tensor) -> torch.Tensor:
        """Log-density (or its lower bound) of kernels (N, k, k) -> (N,)."""
        raise NotImplementedError

    def kl(
        self, mu: torch.Tensor, log_var: torch.Tensor, reverse: nn.Module | None = None
    ) -> torch.Tensor:
        """KL(N(mu, exp(log_var)) || p) per kernel (or its upper bound), (N, k, k) -> (N,)."""
        raise NotImplementedError

    def make_reverse(self) -> nn.Module | None:
        """A trainable reverse model r(z | w) for implicit priors; ``None`` for explicit ones."""
        return None

    def config(self) -> dict[str, Any]:
        """JSON-able constructor arguments."""
        return {"kernel_size": self.kernel_size}


def gaussian_entropy(log_var: torch.Tensor) -> torch.Tensor:
    """Entropy of N(mu, exp(log_var)) summed over the last two dims: (N, k, k) -> (N,)."""
    import math

    return 0.5 * (log_var + 1.0 + math.log(2 * math.pi)).flatten(1).sum(1)
