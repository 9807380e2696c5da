"""Explicit kernel priors (Gaussian families, log-uniform), the prior folder format, and errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from dwp.priors import (
    FAMILIES,
    FittedGaussian,
    IsotropicGaussian,
    KernelVAE,
    LogUniform,
    StandardNormal,
    load_prior,
    load_prior_dir,
    save_prior,
)
from dwp.priors.loguniform import kl_loguniform_approx
from dwp.runtime import DwpError


def _kernels(n: int, k: int, seed: int = 0) -> torch.Tensor:
    """Correlated kernels: a random linear mix of white noise, plus a mean offset."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k * k, k * k, generator=g) / k
    return (torch.randn(n, k * k, generator=g) @ mix + 0.3).reshape(n, k, k)


def _mc_kl(prior, mu, log_var, n=200_000, seed=1):
    """Monte-Carlo KL(q || p) for one kernel: mean and standard error of log q - log p."""
    g = torch.Generator().manual_seed(seed)
    std = torch.exp(0.5 * log_var)
    w = mu + std * torch.randn(n, *mu.shape[1:], generator=g, dtype=mu.dtype)
    log_q = (-0.5 * (math.log(2 * math.pi) + log_var + ((w - mu) / std) ** 2)).flatten(1).sum(1)
    d = (log_q - prior.log_prob(w)).double()
    return float(d.mean()), float(d.std() / math.sqrt(n))


def test_fitted_gaussian_equals_numpy_closed_form():
    w = _kernels(500, 3)
    prior = FittedGaussian.fit(w)
    x = w.reshape(500, 9).double().numpy()
    np.testing.assert_allclose(prior.loc.numpy(), x.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        prior.covariance_matrix.numpy(), np.cov(x, rowvar=False, bias=True), rtol=1e-5, atol=1e-6
    )
    assert float(prior.jitter) == 0.0
    ref = stats.multivariate_normal(x.mean(0), np.cov(x, rowvar=False, bias=True)).logpdf(x[:20])
    np.testing.assert_allclose(prior.log_prob(w[:20]).numpy(), ref, rtol=1e-4)


def test_fitted_gaussian_kl_matches_monte_carlo():
    prior = FittedGaussian.fit(_kernels(400, 3))
    mu = 0.2 * torch.randn(1, 3, 3, generator=torch.Generator().manual_seed(3)) + 0.3
    log_var = torch.full((1, 3, 3), -2.0)
    exact = float(prior.kl(mu, log_var))
    mc, se = _mc_kl(prior, mu, log_var)
    assert abs(exact - mc) < 4 * se + 1e-3, (exact, mc, se)


def test_fitted_gaussian_singular_covariance_gets_documented_jitter():
    w = _kernels(5, 3)  # 5 kernels in 9 dimensions: rank-deficient covariance
    prior = FittedGaussian.fit(w)
    assert float(prior.jitter) > 0
    lp = prior.log_prob(w)
    assert torch.isfinite(lp).all()
    assert torch.allclose(prior.scale_tril @ prior.scale_tril.T, prior.covariance_matrix, atol=1e-5)


def test_isotropic_gaussian_fit_and_log_prob():
    w = _kernels(300, 5)
    prior = IsotropicGaussian.fit(w)
    x = w.double().numpy()
    np.testing.assert_allclose(prior.loc.numpy(), x.mean(0), rtol=1e-5, atol=1e-6)
    var = ((x - x.mean(0)) ** 2).mean()
    assert math.isclose(math.exp(float(prior.log_var)), var, rel_tol=1e-5)
    ref = stats.norm(x.mean(0), math.sqrt(var)).logpdf(x[:10]).reshape(10, -1).sum(1)
    np.testing.assert_allclose(prior.log_prob(w[:10]).numpy(), ref, rtol=1e-5)
    mu, log_var = w[:1] * 0.5, torch.full((1, 5, 5), -3.0)
    mc, se = _mc_kl(prior, mu, log_var)
    assert abs(float(prior.kl(mu, log_var)) - mc) < 4 * se + 1e-3


@pytest.mark.parametrize("sigma", [1.0, 0.3])
def test_standard_normal_kl_closed_form_vs_monte_carlo(sigma):
    prior = StandardNormal(sigma)
    mu = torch.tensor([[[0.5, -1.0], [0.2, 0.0]]])
    log_var = torch.tensor([[[-1.0, -2.0], [0.5, -4.0]]])
    mc, se = _mc_kl(prior, mu, log_var)
    assert abs(float(prior.kl(mu, log_var)) - mc) < 4 * se + 1e-3
    w = torch.randn(4, 6, 6)  # any kernel size
    ref = stats.norm(0, sigma).logpdf(w.numpy()).reshape(4, -1).sum(1)
    np.testing.assert_allclose(prior.log_prob(w).numpy(), ref, rtol=1e-5)
    assert prior.sample(7, kernel_size=5).shape == (7, 5, 5)


def _kl_loguniform_reference(alpha: float) -> float:
    """KL(N(mu, alpha mu^2) || p ∝ 1/|w|) by numerical integration.

    KL = -0.5 log alpha + E log|1 + sqrt(alpha) eps| + C (independent of mu). The improper
    prior's constant C is fixed, as in Molchanov et al. (2017), so that KL -> 0 as
    alpha -> inf, where E log|1 + sqrt(alpha) eps| - 0.5 log alpha -> E log|eps|
    = -(gamma + log 2) / 2; hence C = (gamma + log 2) / 2.
    """
    s = math.sqrt(alpha)

    def f(e):
        return stats.norm.pdf(e) * math.log(abs(1 + s * e))

    c = -1 / s  # integrable log singularity: split the integral there
    e_log = integrate.quad(f, -np.inf, c, limit=200)[0] + integrate.quad(f, c, np.inf, limit=200)[0]
    return e_log - 0.5 * math.log(alpha) + (np.euler_gamma + math.log(2)) / 2


@pytest.mark.parametrize("alpha", [0.01, 0.1, 1.0, 10.0, 100.0])
def test_loguniform_kl_approximation_matches_numerical_integral(alpha):
    ref = _kl_loguniform_reference(alpha)
    assert abs(float(kl_loguniform_approx(torch.tensor(math.log(alpha)))) - ref) < 0.01
    # through the prior's interface: 2x2 kernel, all entries with the same alpha, various mu
    mu = torch.tensor([[[0.1, -2.0], [0.7, 3.0]]])
    log_var = torch.log(alpha * mu.square())
    assert abs(float(LogUniform().kl(mu, log_var)) - 4 * ref) < 0.04


def test_loguniform_sample_raises_and_log_prob_is_unnormalised():
    prior = LogUniform()
    with pytest.raises(DwpError, match="improper"):
        prior.sample(3, kernel_size=3)
    w = torch.tensor([[[1.0, -2.0], [0.5, 4.0]]])
    assert math.isclose(float(prior.log_prob(w)), -math.log(1 * 2 * 0.5 * 4), rel_tol=1e-6)


def _all_priors(k: int):
    w = _kernels(200, k)
    return [StandardNormal(0.5), LogUniform(), IsotropicGaussian.fit(w), FittedGaussian.fit(w),
            KernelVAE(k)]


def test_registry_covers_all_families():
    assert set(FAMILIES) == {"sn", "loguniform", "iso", "mvn", "vae"}


@pytest.mark.parametrize("idx", range(5))
def test_save_load_gives_identical_scores(tmp_path, idx):
    prior = _all_priors(5)[idx]
    w = _kernels(20, 5, seed=7)
    mu, log_var = w, torch.full_like(w, -3.0)
    save_prior(prior, tmp_path / "p", {"training": {"epochs": 1}})
    loaded = load_prior(tmp_path / "p")
    assert type(loaded) is type(prior) and loaded.config() == prior.config()
    for a, b in zip(prior.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    if isinstance(prior, KernelVAE):
        g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
        assert torch.equal(prior.elbo(w, generator=g1), loaded.elbo(w, generator=g2))
    else:
        assert torch.equal(prior.log_prob(w), loaded.log_prob(w))
    torch.manual_seed(0)
    kl1 = prior.kl(mu, log_var)
    torch.manual_seed(0)
    assert torch.equal(kl1, loaded.kl(mu, log_var))
    meta = json.loads((tmp_path / "p" / "prior.json").read_text())
    assert meta["family"] == prior.family and meta["training"] == {"epochs": 1}
    assert len(meta["sha256"]) == 64 and "dwp_version" in meta


def test_load_rejects_tampered_file_and_reads_layer_folders(tmp_path):
    w = _kernels(100, 3)
    save_prior(FittedGaussian.fit(w), tmp_path / "net" / "conv1")
    save_prior(StandardNormal(), tmp_path / "net" / "conv2")
    priors = load_prior_dir(tmp_path / "net")
    assert list(priors) == ["conv1", "conv2"] and isinstance(priors["conv1"], FittedGaussian)
    st = tmp_path / "net" / "conv1" / "prior.safetensors"
    blob = bytearray(st.read_bytes())
    blob[-1] ^= 1
    st.write_bytes(bytes(blob))
    with pytest.raises(DwpError, match="checksum"):
        load_prior(tmp_path / "net" / "conv1")
    with pytest.raises(DwpError, match="no prior.json"):
        load_prior(tmp_path / "nothing")


@pytest.mark.parametrize("idx", [2, 3, 4])
def test_prior_of_one_kernel_size_rejects_another(idx):
    prior = _all_priors(5)[idx]
    w = _kernels(4, 7)
    with pytest.raises(DwpError, match="5x5"):
        prior.log_prob(w)
    with pytest.raises(DwpError, match="5x5"):
        prior.kl(w, torch.zeros_like(w))
    with pytest.raises(DwpError, match="5x5"):
        prior.sample(3, kernel_size=7)


@pytest.mark.parametrize("idx", range(5))
def test_nan_and_inf_kernels_rejected(idx):
    prior = _all_priors(3)[idx]
    w = _kernels(4, 3)
    w[1, 0, 0] = float("nan")
    with pytest.raises(DwpError, match="NaN or inf"):
        prior.log_prob(w)
    w[1, 0, 0] = float("inf")
    with pytest.raises(DwpError, match="NaN or inf"):
        prior.log_prob(w)


def test_fit_rejects_nan_kernels():
    w = _kernels(50, 3)
    w[3, 1, 1] = float("nan")
    with pytest.raises(DwpError, match="NaN or inf"):
        FittedGaussian.fit(w)
    with pytest.raises(DwpError, match="NaN or inf"):
        IsotropicGaussian.fit(w)
