"""Fitting priors to kernel sets, and scoring them on held-out kernels.

``train_kernel_vae`` follows the paper (Appendix H.1): Adam, learning rate 1e-3 decayed
linearly to 0 (per step), 300 epochs, batch 128, loss = -mean ELBO. The whole kernel set lives on
the device; each epoch draws a random permutation and slices index batches from it (no
DataLoader).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from dwp.kernelsets import as_kernels
from dwp.precision import flush_denormals
from dwp.priors.base import KernelPrior
from dwp.priors.gaussian import FittedGaussian, IsotropicGaussian
from dwp.priors.vae import KernelVAE
from dwp.runtime import DwpError, progress

VAE_DEFAULTS: dict[str, Any] = {"epochs": 300, "batch_size": 128, "lr": 1e-3}
#: ``dwp train-prior`` warns when more than ``SAMPLE_TAIL_WARN`` of a prior's samples have a
#: norm above ``SAMPLE_TAIL_FACTOR`` times the 99th-percentile norm of its training kernels (a
#: prior that matches its data, even a Gaussian fitted to light-tailed kernels, gives ~0).
SAMPLE_TAIL_FACTOR = 2.0
SAMPLE_TAIL_WARN = 0.01


def train_kernel_vae(
    kernels: torch.Tensor,
    *,
    epochs: int = 300,
    batch_size: int = 128,
    lr: float = 1e-3,
    z_dim: int | None = None,
    hidden: int | None = None,
    arch: str = "auto",
    device: torch.device | str = "cpu",
    seed: int = 0,
    show_progress: bool = True,
    desc: str = "vae",
    train_k: int = 1,
    max_log_var: float | None = None,
) -> tuple[KernelVAE, list[dict[str, float]]]:
    """Train a ``KernelVAE`` on kernels (N, k, k); return it (eval mode) and per-epoch history.

    The objective is the one-sample ELBO (``train_k=1``, the paper) or the ``train_k``-sample
    importance-weighted bound (Burda et al. 2015), tighter and usually a better density model.
    The history holds ``{"epoch", "train_elbo", "lr"}`` per epoch, ``train_elbo`` being the
    mean training bound per kernel over that epoch's batches (nats; the ELBO when train_k=1).
    Initialisation and batching are seeded by ``seed`` without touching the global RNG.
    ``max_log_var``: the decoder log-variance cap of :class:`KernelVAE` (``None``: none).
    """
    if epochs < 1 or batch_size < 1 or train_k < 1 or not lr > 0:
        raise DwpError(
            "train_kernel_vae: epochs, batch_size and train_k must be >= 1 and lr > 0"
        )
    device = torch.device(device)
    w = as_kernels(kernels).to(device)
    n, k = w.shape[0], w.shape[-1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = KernelVAE(k, z_dim=z_dim, hidden=hidden, arch=arch, max_log_var=max_log_var)
    vae = vae.to(device).train()
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    opt = torch.optim.Adam(vae.parameters(), lr=lr, fused=device.type == "cuda")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.0, 1.0 - step / total))
    history: list[dict[str, float]] = []
    bar = progress(range(epochs), desc=desc, enabled=show_progress, unit="epoch")
    with flush_denormals(device):
        for epoch in bar:
            perm = torch.randperm(n, generator=gen, device=device)
            acc = torch.zeros((), device=device)
            lr_now = opt.param_groups[0]["lr"]
            for start in range(0, n, batch_size):
                batch = w[perm[start : start + batch_size]]
                if train_k == 1:
                    elbo = vae.elbo(batch, generator=gen)
                else:
                    elbo = vae.iwae_bound(batch, train_k, generator=gen)
                loss = -elbo.mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                acc += elbo.detach().sum()
            mean_elbo = float(acc) / n
            if not math.isfinite(mean_elbo):
                raise DwpError(
                    f"{desc}: training diverged (ELBO {mean_elbo}) at epoch {epoch + 1}; "
                    "try a smaller --lr"
                )
            history.append({"epoch": epoch + 1, "train_elbo": mean_elbo, "lr": lr_now})
            bar.set_postfix(elbo=f"{mean_elbo:.2f}")
    return vae.eval(), history


def data_log_var(kernels: torch.Tensor) -> float:
    """Log of the kernels' per-entry variance, averaged over the k x k positions: (N, k, k) ->
    float. The decoder-variance cap of ``dwp train-prior --decoder-var-cap data``."""
    w = as_kernels(kernels, "kernels").double()
    if w.shape[0] < 2:
        raise DwpError("a data variance needs at least 2 kernels")
    return math.log(float(w.var(dim=0).mean()))


def fit_prior(family: str, kernels: torch.Tensor, **vae_kwargs: Any) -> tuple[KernelPrior, list]:
    """Fit a prior of ``family`` to kernels (N, k, k); returns (prior, history).

    ``vae`` trains with ``train_kernel_vae(**vae_kwargs)``; ``mvn`` / ``iso`` are closed-form;
    ``sn`` and ``loguniform`` have nothing to fit (they only record the kernel size).
    """
    from dwp.priors import LogUniform, StandardNormal, get_family

    get_family(family)
    w = as_kernels(kernels)
    k = w.shape[-1]
    if family == "vae":
        return train_kernel_vae(w, **vae_kwargs)
    if family == "mvn":
        return FittedGaussian.fit(w), []
    if family == "iso":
        return IsotropicGaussian.fit(w), []
    if family == "sn":
        return StandardNormal(kernel_size=k), []
    if family == "loguniform":
        return LogUniform(kernel_size=k), []
    raise DwpError(f"family {family!r} cannot be fitted by dwp train-prior")


# A latent dimension is active when the encoder mean varies across kernels by more than this
# (variance; Burda et al. 2016, "Importance Weighted Autoencoders", Section 5.2).
ACTIVE_LATENT_THRESHOLD = 0.01


@torch.no_grad()
def _mean_in_batches(fn, w: torch.Tensor, batch: int = 8192) -> float:
    return float(torch.cat([fn(w[i : i + batch]) for i in range(0, w.shape[0], batch)]).mean())


@torch.no_grad()
def sample_norm_check(
    prior: KernelPrior,
    kernels: torch.Tensor,
    n_samples: int = 10_000,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """Compare the norms of kernels drawn from ``prior`` with those of ``kernels`` (N, k, k).

    Returns ``data_norm`` and ``sample_norm`` ({"p50", "p90", "p99"} of the Frobenius norms),
    ``samples_above_data_p99``, the fraction of the ``n_samples`` draws whose norm exceeds the
    data's 99th percentile (about 0.01 for a prior whose samples look like the data), and
    ``samples_above_2x_data_p99``, the fraction beyond ``SAMPLE_TAIL_FACTOR`` (2) times it (about
    0). More means samples too large -- e.g. from a VAE decoder whose variance grows in regions
    of z where the encoder put no training kernel, which ``p(z) = N(0, I)`` still visits.
    Initialising from prior samples (``init_from_prior``, ``train-bnn --init prior``) then
    draws some kernels many times larger than any the source nets learned. Draws with a
    non-finite norm count as too large.
    """
    kernels = as_kernels(kernels, "kernels")
    q = torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64)
    names = ("p50", "p90", "p99")
    data = kernels.flatten(1).double().norm(dim=1).cpu()
    draws = prior.sample(n_samples, int(kernels.shape[-1]), generator=generator)
    drawn = draws.flatten(1).double().norm(dim=1).cpu()
    drawn = drawn.nan_to_num(math.inf)
    data_q, drawn_q = torch.quantile(data, q), torch.quantile(drawn, q)
    return {
        "data_norm": dict(zip(names, data_q.tolist(), strict=True)),
        "sample_norm": dict(zip(names, drawn_q.tolist(), strict=True)),
        "samples_above_data_p99": float((drawn > data_q[2]).double().mean()),
        "samples_above_2x_data_p99": float((drawn > SAMPLE_TAIL_FACTOR * data_q[2]).double()
                                           .mean()),
        "n_samples": int(n_samples),
    }


@torch.no_grad()
def evaluate_prior(
    prior: KernelPrior,
    train: torch.Tensor,
    test: torch.Tensor | None,
    *,
    iwae_ks: tuple[int, ...] = (1, 100, 1000),
    iwae_max_kernels: int | None = 2000,
    seed: int = 0,
    device: torch.device | str = "cpu",
    chunk: int = 1 << 16,
) -> dict[str, Any]:
    """Scores of one layer's prior, in nats per kernel (summed over the k*k entries).

    Returns ``train_elbo`` / ``test_elbo`` (for explicit priors: the exact mean log-density),
    ``test_iwae`` {str(K): mean IWAE estimate} (VAE only; on at most ``iwae_max_kernels``
    randomly chosen test kernels, ``iwae_kernels`` of them), and the baselines'
    ``test_loglik`` {"fitted_gaussian", "isotropic_gaussian"} fitted on ``train`` (over the whole
    test set, and as ``test_loglik_iwae_subset`` over the IWAE subset), plus counts. For a VAE
    also ``latent_activity`` (variance of the encoder mean over the train kernels, per latent
    dimension), ``latent_dims`` and ``active_latent_dims`` (activity > 0.01; 0 means the VAE
    ignores z: posterior collapse). For proper priors also ``sample_norms``: the norms of
    10,000 prior samples against those of the train kernels (:func:`sample_norm_check`; its own
    generator, so the other scores do not depend on it).
    The log-uniform prior is improper: its scores are reported as ``None``.
    """
    device = torch.device(device)
    prior = prior.to(device).eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    train = as_kernels(train, "train kernels").to(device)
    test = None if test is None else as_kernels(test, "test kernels").to(device)
    is_vae = isinstance(prior, KernelVAE)
    proper = prior.family != "loguniform"

    def score(w: torch.Tensor) -> float | None:
        if not proper:
            return None
        if is_vae:
            return _mean_in_batches(lambda x: prior.elbo(x, generator=gen), w)
        return _mean_in_batches(prior.log_prob, w)

    out: dict[str, Any] = {
        "family": prior.family,
        "kernel_size": int(train.shape[-1]),
        "n_train": int(train.shape[0]),
        "n_test": None if test is None else int(test.shape[0]),
        "train_elbo": score(train),
        "test_elbo": None,
        "test_iwae": None,
        "test_loglik": None,
    }
    if is_vae:
        activity = prior.latent_activity(train)
        out["latent_dims"] = int(activity.numel())
        out["active_latent_dims"] = int((activity > ACTIVE_LATENT_THRESHOLD).sum())
        out["latent_activity"] = [float(a) for a in activity]
    if proper:
        sample_gen = torch.Generator(device=device).manual_seed(seed + 1)
        out["sample_norms"] = sample_norm_check(prior, train, generator=sample_gen)
    if test is None:
        return out
    prior.check_kernels(test, "test kernels")
    out["test_elbo"] = score(test)
    fg = FittedGaussian.fit(train.cpu()).to(device)
    iso = IsotropicGaussian.fit(train.cpu()).to(device)
    out["test_loglik"] = {
        "fitted_gaussian": _mean_in_batches(fg.log_prob, test),
        "isotropic_gaussian": _mean_in_batches(iso.log_prob, test),
    }
    if is_vae:
        sub = test
        if iwae_max_kernels is not None and test.shape[0] > iwae_max_kernels:
            idx = torch.randperm(test.shape[0], generator=gen, device=device)[:iwae_max_kernels]
            sub = test[idx]
        out["iwae_kernels"] = int(sub.shape[0])
        out["test_iwae"] = {
            str(kk): float(prior.iwae_log_prob(sub, k=kk, chunk=chunk, generator=gen).mean())
            for kk in iwae_ks
        }
        out["test_loglik_iwae_subset"] = {
            "fitted_gaussian": float(fg.log_prob(sub).mean()),
            "isotropic_gaussian": float(iso.log_prob(sub).mean()),
            "vae_elbo": float(prior.elbo(sub, generator=gen).mean()),
        }
    return out
