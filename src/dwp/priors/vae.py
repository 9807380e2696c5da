"""The deep weight prior: a variational auto-encoder over k x k kernels.

p(w) = ∫ p(w | z) p(z) dz with p(z) = N(0, I), a Gaussian decoder
p(w | z) = N(mu(z), diag(sigma^2(z))) (per-pixel mean and variance) and a Gaussian encoder
r(z | w) = N(m(w), diag(s^2(w))). Variances are ``softplus`` of a network output, as in the
paper's code; the modules return log-variances, computed stably.

Architectures (``arch``), ELU after every hidden layer:

- ``"paper"`` (the default for k = 7 and k = 5): Appendix F / H.1 exactly.
  7x7, hidden h = 32, z = 2: encoder Conv(1,h,3) Conv(h,2h,3) Conv(2h,2h,3) -> 1x1 heads
  Conv(2h,z,1) (56,004 parameters); decoder ConvT(z,2h,3) ConvT(2h,2h,3) ConvT(2h,h,3) -> heads
  Conv(h,1,1) (56,674). 5x5, hidden h = 64, z = 4: encoder Conv(1,h,3,pad 1) Conv(h,h,3,pad 1)
  Conv(h,2h,3) Conv(2h,2h,3) -> heads Conv(2h,z,1) (260,040); decoder Conv(z,2h,1) ConvT(2h,2h,3)
  ConvT(2h,2h,3) Conv(2h,h,1) -> heads Conv(h,1,1) (304,194).
- ``"generic"`` (the default for any other k >= 3; hidden h = 64, z = 4 unless given):
  with n = (k - 1) // 2 and s = k - 2n (1 for odd k, 2 for even k),
  encoder Conv(1,h,3,pad 1), n x Conv(h,h,3) (k -> s), heads Conv(h,z,s);
  decoder ConvT(z,h,s) (1 -> s), n x ConvT(h,h,3) (s -> k), Conv(h,h,1), heads Conv(h,1,1).
- ``"linear"``: r(z|w) = N(Ew + c, diag(e^t)) and p(w|z) = N(Az + b, diag(e^u)) — probabilistic
  PCA, whose marginal N(b, AA^T + diag(e^u)) is known in closed form (used to test the
  estimators; see ``linear_gaussian_marginal``).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dwp.priors.base import KernelPrior, gaussian_entropy
from dwp.runtime import DwpError

LOG_2PI = math.log(2 * math.pi)
PAPER_DEFAULTS = {7: {"z_dim": 2, "hidden": 32}, 5: {"z_dim": 4, "hidden": 64}}
GENERIC_DEFAULTS = {"z_dim": 4, "hidden": 64}
ARCHS = ("auto", "paper", "generic", "linear")


def log_softplus(x: torch.Tensor) -> torch.Tensor:
    """log(softplus(x)) without underflow (for x < -20 it equals x to float precision)."""
    return torch.where(x < -20, x, torch.log(F.softplus(x.clamp_min(-20))))


def gaussian_log_pdf(x: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """log N(x | mu, diag e^log_var) summed over all but the first dim: (N, ...) -> (N,)."""
    t = -0.5 * (LOG_2PI + log_var + (x - mu).square() * torch.exp(-log_var))
    return t.flatten(1).sum(1)


def kl_std_normal(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag e^log_var) || N(0, I)) per row: (N, z) -> (N,)."""
    return 0.5 * (torch.exp(log_var) + mu.square() - 1.0 - log_var).flatten(1).sum(1)


def _elu_stack(layers: list[nn.Module]) -> nn.Sequential:
    out: list[nn.Module] = []
    for layer in layers:
        out += [layer, nn.ELU()]
    return nn.Sequential(*out)


class ConvEncoder(nn.Module):
    """r(z | w): kernels (N, k, k) -> (mean (N, z), log-variance (N, z))."""

    def __init__(self, features: nn.Sequential, channels: int, z_dim: int, head: int = 1):
        super().__init__()
        self.features = features
        self.fc_mu = nn.Conv2d(channels, z_dim, head)
        self.fc_var = nn.Conv2d(channels, z_dim, head)

    def forward(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(w.unsqueeze(1))
        return self.fc_mu(h).flatten(1), log_softplus(self.fc_var(h)).flatten(1)


class ConvDecoder(nn.Module):
    """p(w | z): latents (N, z) -> (mean (N, k, k), log-variance (N, k, k))."""

    def __init__(self, features: nn.Sequential, channels: int):
        super().__init__()
        self.decoder = features
        self.fc_mu = nn.Conv2d(channels, 1, 1)
        self.fc_var = nn.Conv2d(channels, 1, 1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.decoder(z[:, :, None, None])
        return self.fc_mu(h)[:, 0], log_softplus(self.fc_var(h))[:, 0]


class LinearGaussianEncoder(nn.Module):
    """r(z | w) = N(E vec(w) + c, diag(e^t)): (N, k, k) -> ((N, z), (N, z))."""

    def __init__(self, kernel_size: int, z_dim: int):
        super().__init__()
        self.linear = nn.Linear(kernel_size * kernel_size, z_dim)
        self.log_var = nn.Parameter(torch.zeros(z_dim))

    def forward(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu = self.linear(w.flatten(1))
        return mu, self.log_var.expand_as(mu)


class LinearGaussianDecoder(nn.Module):
    """p(w | z) = N(A z + b, diag(e^u)): (N, z) -> ((N, k, k), (N, k, k))."""

    def __init__(self, kernel_size: int, z_dim: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.linear = nn.Linear(z_dim, kernel_size * kernel_size)
        self.log_var = nn.Parameter(torch.zeros(kernel_size * kernel_size))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.kernel_size
        mu = self.linear(z).reshape(-1, k, k)
        return mu, self.log_var.reshape(k, k).expand_as(mu)


def build_networks(
    kernel_size: int, z_dim: int, hidden: int, arch: str
) -> tuple[nn.Module, nn.Module]:
    """The (encoder, decoder) pair of an architecture (see the module docstring)."""
    k, h, z = kernel_size, hidden, z_dim
    if arch == "linear":
        return LinearGaussianEncoder(k, z), LinearGaussianDecoder(k, z)
    if arch == "paper" and k == 7:
        enc = _elu_stack([nn.Conv2d(1, h, 3), nn.Conv2d(h, 2 * h, 3), nn.Conv2d(2 * h, 2 * h, 3)])
        dec = _elu_stack(
            [nn.ConvTranspose2d(z, 2 * h, 3), nn.ConvTranspose2d(2 * h, 2 * h, 3),
             nn.ConvTranspose2d(2 * h, h, 3)]
        )
        return ConvEncoder(enc, 2 * h, z), ConvDecoder(dec, h)
    if arch == "paper" and k == 5:
        enc = _elu_stack(
            [nn.Conv2d(1, h, 3, padding=1), nn.Conv2d(h, h, 3, padding=1),
             nn.Conv2d(h, 2 * h, 3), nn.Conv2d(2 * h, 2 * h, 3)]
        )
        dec = _elu_stack(
            [nn.Conv2d(z, 2 * h, 1), nn.ConvTranspose2d(2 * h, 2 * h, 3),
             nn.ConvTranspose2d(2 * h, 2 * h, 3), nn.Conv2d(2 * h, h, 1)]
        )
        return ConvEncoder(enc, 2 * h, z), ConvDecoder(dec, h)
    if arch == "paper":
        raise DwpError(f"the paper's VAE exists for 5x5 and 7x7 kernels only, not {k}x{k}: "
                       "use arch 'generic'")
    if arch != "generic":
        raise DwpError(f"unknown VAE architecture {arch!r}; choose one of {ARCHS}")
    if k < 3:
        raise DwpError(f"the generic VAE needs kernels of size 3x3 or more, got {k}x{k}")
    n = (k - 1) // 2
    s = k - 2 * n
    enc = _elu_stack([nn.Conv2d(1, h, 3, padding=1)] + [nn.Conv2d(h, h, 3) for _ in range(n)])
    dec = _elu_stack(
        [nn.ConvTranspose2d(z, h, s)] + [nn.ConvTranspose2d(h, h, 3) for _ in range(n)]
        + [nn.Conv2d(h, h, 1)]
    )
    return ConvEncoder(enc, h, z, head=s), ConvDecoder(dec, h)


class KernelVAE(KernelPrior):
    """The deep weight prior over k x k kernels (see the module docstring for architectures).

    Parameters
    ----------
    kernel_size:
        k.
    z_dim, hidden:
        Latent size and hidden width; ``None`` takes the architecture's default.
    arch:
        ``"auto"`` (paper for k in {5, 7}, else generic), ``"paper"``, ``"generic"``, ``"linear"``.
    max_log_var:
        Optional cap on the decoder's log-variance per entry (see ``decode``); ``None`` (the
        paper): no cap. ``dwp train-prior --decoder-var-cap data`` sets it to the log of the
        training kernels' per-entry variance, so p(w | z) is never broader than the data.
    min_log_var:
        Optional floor on the decoder's log-variance per entry (see ``decode``); ``None`` (the
        paper): no floor. A floor bounds how sharply p(w | z) peaks, and with it how hard the
        prior term pulls a kernel towards the decoder mean (not in the paper; see
        ``benchmarks/decoder_var_prior.py``).
    """

    family = "vae"
    explicit = False

    def __init__(
        self,
        kernel_size: int,
        z_dim: int | None = None,
        hidden: int | None = None,
        arch: str = "auto",
        max_log_var: float | None = None,
        min_log_var: float | None = None,
    ) -> None:
        super().__init__(kernel_size)
        if arch not in ARCHS:
            raise DwpError(f"unknown VAE architecture {arch!r}; choose one of {ARCHS}")
        if arch == "auto":
            arch = "paper" if kernel_size in PAPER_DEFAULTS else "generic"
        defaults = PAPER_DEFAULTS.get(kernel_size, GENERIC_DEFAULTS)
        if arch != "paper":
            defaults = GENERIC_DEFAULTS
        self.z_dim = int(z_dim if z_dim is not None else defaults["z_dim"])
        self.hidden = int(hidden if hidden is not None else defaults["hidden"])
        self.arch = arch
        for name, value in (("max_log_var", max_log_var), ("min_log_var", min_log_var)):
            if value is not None and not math.isfinite(value):
                raise DwpError(f"{name} must be a finite number or None, got {value}")
        if max_log_var is not None and min_log_var is not None and min_log_var >= max_log_var:
            raise DwpError(f"min_log_var ({min_log_var}) must be below max_log_var "
                           f"({max_log_var}): the decoder variance floor is above its cap")
        self.max_log_var = None if max_log_var is None else float(max_log_var)
        self.min_log_var = None if min_log_var is None else float(min_log_var)
        self.encoder, self.decoder = build_networks(kernel_size, self.z_dim, self.hidden, arch)

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "kernel_size": self.kernel_size,
            "z_dim": self.z_dim,
            "hidden": self.hidden,
            "arch": self.arch,
        }
        if self.max_log_var is not None:  # absent = uncapped (and priors saved before the cap)
            cfg["max_log_var"] = self.max_log_var
        if self.min_log_var is not None:  # absent = no floor
            cfg["min_log_var"] = self.min_log_var
        return cfg

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- the two networks -----------------------------------------------------------------
    def encode(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """r(z | w): kernels (N, k, k) -> mean (N, z), log-variance (N, z)."""
        return self.encoder(w)

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """p(w | z): latents (N, z) -> mean (N, k, k), log-variance (N, k, k).

        With ``max_log_var`` set, the log-variance is ``c - softplus(c - v)`` of the decoder's
        output v: smooth, below the cap c everywhere and ~v well below it. Without a cap the
        decoder variance can grow without bound in regions of z that no training kernel was
        encoded to, which p(z) still samples (see ``dwp.priors.fit.sample_norm_check``).
        With ``min_log_var`` = f set, the log-variance is first ``f + softplus(v - f)``: above
        the floor f everywhere and ~v well above it.
        """
        mu, log_var = self.decoder(z)
        if self.min_log_var is not None:
            log_var = self.min_log_var + F.softplus(log_var - self.min_log_var)
        if self.max_log_var is not None:
            log_var = self.max_log_var - F.softplus(self.max_log_var - log_var)
        return mu, log_var

    @torch.no_grad()
    def latent_activity(self, w: torch.Tensor, batch: int = 8192) -> torch.Tensor:
        """Variance over kernels of the encoder mean, per latent dimension: (z_dim,).

        w: kernels (N, k, k). A dimension whose value is below 0.01 is *inactive* (Burda et
        al. 2016): the code carries no information about the kernel there. A VAE with no
        active dimension ignores z, so its density is one diagonal Gaussian (posterior
        collapse).
        """
        means = torch.cat([self.encode(w[i : i + batch])[0] for i in range(0, w.shape[0], batch)])
        return means.var(dim=0, unbiased=False)

    # -- scores ------------------------------------------------------------------------------
    def elbo(self, w: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One-sample evidence lower bound per kernel, (N, k, k) -> (N,) nats (differentiable)."""
        self.check_kernels(w)
        mu_z, lv_z = self.encoder(w)
        eps = torch.randn(mu_z.shape, generator=generator, device=mu_z.device, dtype=mu_z.dtype)
        z = mu_z + torch.exp(0.5 * lv_z) * eps
        mu_w, lv_w = self.decode(z)
        return gaussian_log_pdf(w, mu_w, lv_w) - kl_std_normal(mu_z, lv_z)

    def log_prob(self, w: torch.Tensor) -> torch.Tensor:
        """The ELBO (a stochastic lower bound of log p(w)); see ``iwae_log_prob``."""
        return self.elbo(w)

    def _log_weights(
        self, w: torch.Tensor, mu_z: torch.Tensor, lv_z: torch.Tensor, eps: torch.Tensor
    ) -> torch.Tensor:
        """Importance log-weights log p(w|z) + log p(z) - log r(z|w), (m, N).

        ``w`` (N, k, k); ``mu_z``, ``lv_z`` (N, z) from the encoder; ``eps`` (m, N, z) standard
        normal draws, z = mu_z + e^(lv_z / 2) eps.
        """
        m = eps.shape[0]
        z = mu_z + torch.exp(0.5 * lv_z) * eps
        mu_w, lv_w = self.decode(z.reshape(-1, self.z_dim))
        log_pw = gaussian_log_pdf(
            w.expand(m, *w.shape).reshape(-1, *w.shape[1:]), mu_w, lv_w
        ).reshape(m, -1)
        log_pz = (-0.5 * (LOG_2PI + z.square())).sum(-1)
        log_r = (-0.5 * (LOG_2PI + lv_z + eps.square())).sum(-1)
        return log_pw + log_pz - log_r

    def iwae_bound(
        self, w: torch.Tensor, k: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Differentiable K-sample importance-weighted bound per kernel, (N, k, k) -> (N,) nats.

        log (1/K) sum_j p(w|z_j) p(z_j) / r(z_j|w), z_j ~ r(z|w) reparameterised (Burda et al.
        2015). K = 1 is a one-sample ELBO; the bound tightens towards log p(w) as K grows.
        Used as the training objective by ``train_kernel_vae(train_k=K)``.
        """
        self.check_kernels(w)
        if k < 1:
            raise DwpError(f"IWAE needs k >= 1 samples, got {k}")
        mu_z, lv_z = self.encoder(w)
        eps = torch.randn((k, *mu_z.shape), generator=generator, device=mu_z.device,
                          dtype=mu_z.dtype)
        return torch.logsumexp(self._log_weights(w, mu_z, lv_z, eps), dim=0) - math.log(k)

    @torch.no_grad()
    def iwae_log_prob(
        self,
        w: torch.Tensor,
        k: int = 1000,
        chunk: int = 1 << 16,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Importance-weighted estimate of log p(w) with ``k`` samples of r(z|w): (N,k,k) -> (N,).

        log (1/K) sum_j p(w|z_j) p(z_j) / r(z_j|w), a lower bound in expectation that tightens
        as K grows (Burda et al. 2015). At most ``chunk`` decoder evaluations are held in
        memory at once. Not differentiable (runs under ``no_grad``).
        """
        self.check_kernels(w)
        if k < 1:
            raise DwpError(f"IWAE needs k >= 1 samples, got {k}")
        n = w.shape[0]
        nb = max(1, min(n, chunk // k))
        kb = max(1, min(k, chunk // nb))
        out = []
        for i in range(0, n, nb):
            wb = w[i : i + nb]
            mu_z, lv_z = self.encoder(wb)
            parts = []
            for j in range(0, k, kb):
                m = min(kb, k - j)
                eps = torch.randn(
                    (m, *mu_z.shape), generator=generator, device=mu_z.device, dtype=mu_z.dtype
                )
                parts.append(torch.logsumexp(self._log_weights(wb, mu_z, lv_z, eps), dim=0))
            out.append(torch.logsumexp(torch.stack(parts), dim=0) - math.log(k))
        return torch.cat(out)

    # -- sampling ---------------------------------------------------------------------------
    def sample(
        self,
        n: int,
        kernel_size: int | None = None,
        generator: torch.Generator | None = None,
        *,
        noise: bool = True,
    ) -> torch.Tensor:
        """Kernels (n, k, k) from p(w): z ~ N(0, I), w ~ p(w|z) (``noise=False``: the mean)."""
        self._resolve_k(kernel_size)
        dev = self.device
        z = torch.randn(n, self.z_dim, generator=generator, device=dev)
        mu_w, lv_w = self.decode(z)
        if not noise:
            return mu_w
        return mu_w + torch.exp(0.5 * lv_w) * torch.randn(
            mu_w.shape, generator=generator, device=dev
        )

    # -- variational inference ----------------------------------------------------------
    def make_reverse(self) -> nn.Module:
        """A trainable copy of the encoder, to be used as r(z | w) in ``kl``."""
        rev = copy.deepcopy(self.encoder)
        rev.requires_grad_(True)
        return rev.train()

    def kl(
        self, mu: torch.Tensor, log_var: torch.Tensor, reverse: nn.Module | None = None
    ) -> torch.Tensor:
        """One-sample estimate of the auxiliary upper bound of KL(q || p) (paper Eq. 7): (N,).

        w ~ q = N(mu, e^log_var) and z ~ r(z|w) are reparameterised, and
        bound = -H(q) + KL(r(z|w) || N(0, I)) - log p(w | z), with H(q) and the latent KL in
        closed form. Its expectation is >= KL(q || p), with equality when r(z|w) = p(z|w).
        ``reverse`` is r (default: the prior's own encoder). Gradients reach mu, log_var and
        ``reverse``; freeze the prior (``requires_grad_(False)``) to keep the decoder fixed.
        """
        self.check_kernels(mu, "mu", finite=False)
        enc = self.encoder if reverse is None else reverse
        w = mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)
        mu_z, lv_z = enc(w)
        z = mu_z + torch.exp(0.5 * lv_z) * torch.randn_like(mu_z)
        mu_w, lv_w = self.decode(z)
        return -gaussian_entropy(log_var) + kl_std_normal(mu_z, lv_z) - gaussian_log_pdf(
            w, mu_w, lv_w
        )


def linear_gaussian_marginal(vae: KernelVAE) -> tuple[torch.Tensor, torch.Tensor]:
    """(loc (d,), covariance (d, d)) of p(w) = N(b, AA^T + diag(e^u)) for ``arch="linear"``."""
    if vae.arch != "linear":
        raise DwpError("linear_gaussian_marginal needs a KernelVAE with arch='linear'")
    dec = vae.decoder
    a = dec.linear.weight
    _, log_var = vae.decode(torch.zeros(1, vae.z_dim, device=a.device))  # capped, if capped
    return dec.linear.bias, a @ a.T + torch.diag(torch.exp(log_var.flatten()))


def parameter_count(module: nn.Module) -> int:
    """Number of scalar parameters of a module."""
    return sum(p.numel() for p in module.parameters())
