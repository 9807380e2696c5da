"""The kernel VAE (deep weight prior): architectures, IWAE, auxiliary KL bound, training, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from linear_vae import exact_log_prob, set_exact_posterior

from dwp.cli import main
from dwp.priors import KernelVAE, load_prior
from dwp.priors.fit import evaluate_prior, sample_norm_check, train_kernel_vae
from dwp.priors.gaussian import kl_diag_vs_full
from dwp.priors.vae import linear_gaussian_marginal, parameter_count
from dwp.runtime import DwpError


def _edges(n: int, k: int, seed: int = 0) -> torch.Tensor:
    """Structured kernels: oriented soft edges of random amplitude under a Gaussian window."""
    g = torch.Generator().manual_seed(seed)
    th = torch.rand(n, generator=g) * math.pi
    c = torch.linspace(-1, 1, k)
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    proj = xx * torch.cos(th)[:, None, None] + yy * torch.sin(th)[:, None, None]
    amp = 0.2 * (1 + torch.rand(n, 1, 1, generator=g))
    w = amp * torch.tanh(3 * proj) * torch.exp(-(xx**2 + yy**2))
    return w + 0.02 * torch.randn(n, k, k, generator=g)


@pytest.mark.parametrize(
    "k,z,enc,dec", [(7, 2, 56_004, 56_674), (5, 4, 260_040, 304_194)]
)
def test_paper_architectures_have_the_papers_parameter_counts(k, z, enc, dec):
    vae = KernelVAE(k)
    assert vae.arch == "paper" and vae.z_dim == z
    assert parameter_count(vae.encoder) == enc
    assert parameter_count(vae.decoder) == dec


@pytest.mark.parametrize("k", [3, 4, 6, 9])
def test_generic_architecture_any_kernel_size(k):
    vae = KernelVAE(k)
    assert vae.arch == "generic"
    w = _edges(6, k)
    mu_z, lv_z = vae.encode(w)
    assert mu_z.shape == lv_z.shape == (6, vae.z_dim)
    mu_w, lv_w = vae.decode(mu_z)
    assert mu_w.shape == lv_w.shape == (6, k, k)
    assert torch.isfinite(vae.elbo(w)).all()
    assert vae.sample(5).shape == (5, k, k)
    with pytest.raises(DwpError, match="3x3 or more"):
        KernelVAE(2)
    with pytest.raises(DwpError, match="5x5 and 7x7"):
        KernelVAE(k, arch="paper")


def _linear_vae(k=3, z=2, seed=0):
    """A linear-Gaussian VAE whose exact posterior p(z|w) is diagonal, and that posterior.

    Decoder p(w|z) = N(Az + b, D) with A = D^1/2 Q diag(c), Q orthonormal columns, so
    A^T D^-1 A = diag(c^2) and p(z|w) = N(S A^T D^-1 (w - b), S), S = diag(1 / (1 + c^2)).
    The encoder is set to that posterior exactly.
    """
    g = torch.Generator().manual_seed(seed)
    d = k * k
    vae = KernelVAE(k, z_dim=z, arch="linear")
    s2 = 0.05 + 0.1 * torch.rand(d, generator=g)
    q, _ = torch.linalg.qr(torch.randn(d, z, generator=g))
    c = torch.tensor([2.0, 0.7])[:z]
    a = torch.sqrt(s2)[:, None] * q * c
    b = 0.3 * torch.randn(d, generator=g)
    return set_exact_posterior(vae, a, b, s2)


def _perturbed_encoder(vae):
    enc = vae.make_reverse()
    with torch.no_grad():
        enc.linear.bias.add_(0.6)
        enc.log_var.add_(0.7)
    return enc


def _exact_log_prob(vae, w):
    return exact_log_prob(vae, w).float()


def test_linear_gaussian_iwae_approaches_closed_form_log_density():
    vae = _linear_vae()
    w = vae.sample(40, generator=torch.Generator().manual_seed(1)).detach()
    exact = _exact_log_prob(vae, w)
    gen = torch.Generator().manual_seed(2)
    # with r = the exact posterior every importance weight equals p(w): exact even at K = 1
    assert torch.allclose(vae.iwae_log_prob(w, k=1, generator=gen), exact, atol=1e-4)
    # with a wrong r the ELBO-like K=1 estimate is low, and large K closes the gap
    vae.encoder = _perturbed_encoder(vae)
    iw1 = vae.iwae_log_prob(w, k=1, generator=gen)
    iw_big = vae.iwae_log_prob(w, k=20_000, chunk=50_000, generator=gen)
    assert float((exact - iw1).mean()) > 0.3
    assert float((exact - iw_big).abs().mean()) < 0.02
    assert float((exact - iw_big).mean()) > -0.005  # a lower bound in expectation


def test_decoder_variance_cap_bounds_the_variance_and_keeps_the_density_exact():
    # the capped decoder log-variance c - softplus(c - v) stays below c and ~v far below it
    vae = KernelVAE(5, max_log_var=-4.0)
    z = torch.randn(2000, vae.z_dim) * 6  # far into the tails of p(z)
    with torch.no_grad():
        vae.decoder.fc_var.bias.add_(10.0)  # an uncapped decoder would give log-variance ~10
        _, capped = vae.decode(z)
        _, raw = vae.decoder(z)
    assert float(capped.max()) < -4.0 < float(raw.min())
    low = torch.tensor([-12.0])
    torch.testing.assert_close(-4.0 - torch.nn.functional.softplus(-4.0 - low), low, atol=1e-3,
                               rtol=0)
    # a linear-Gaussian VAE with a cap: set the raw log-variance v so that the capped one is the
    # wanted noise variance; with the exact posterior the K = 1 IWAE is exact, so the cap
    # enters log p(w|z) and the closed-form marginal the same way
    ref = _linear_vae()
    cap = -1.5
    capped_vae = KernelVAE(3, z_dim=2, arch="linear", max_log_var=cap)
    capped_vae.load_state_dict(ref.state_dict())
    noise = torch.exp(ref.decoder.log_var.detach())
    with torch.no_grad():
        capped_vae.decoder.log_var.copy_(cap - torch.log(torch.expm1(cap - torch.log(noise))))
    _, lv = capped_vae.decode(torch.zeros(1, 2))
    torch.testing.assert_close(lv.flatten().exp(), noise, rtol=1e-4, atol=1e-7)
    w = capped_vae.sample(30, generator=torch.Generator().manual_seed(4)).detach()
    exact = _exact_log_prob(capped_vae, w)
    torch.testing.assert_close(exact, _exact_log_prob(ref, w))
    iw1 = capped_vae.iwae_log_prob(w, k=1, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(iw1, exact, atol=1e-4)


def test_decoder_variance_cap_is_saved_and_old_configs_load_uncapped(tmp_path):
    from dwp.priors import save_prior

    save_prior(KernelVAE(7, max_log_var=-6.5), tmp_path / "capped", {})
    save_prior(KernelVAE(7), tmp_path / "plain", {})
    assert load_prior(tmp_path / "capped").max_log_var == -6.5
    plain_meta = json.loads((tmp_path / "plain" / "prior.json").read_text())
    assert "max_log_var" not in plain_meta["config"]  # priors saved before the cap still match
    assert load_prior(tmp_path / "plain").max_log_var is None
    with pytest.raises(DwpError, match="max_log_var"):
        KernelVAE(7, max_log_var=math.inf)


def test_decoder_variance_floor_bounds_the_variance_from_below():
    # the floored log-variance f + softplus(v - f) stays above f and ~v far above it
    vae = KernelVAE(5, min_log_var=-9.0)
    z = torch.randn(500, vae.z_dim)
    with torch.no_grad():
        vae.decoder.fc_var.bias.sub_(30.0)  # an unfloored decoder would give ~ -30
        _, floored = vae.decode(z)
        _, raw = vae.decoder(z)
    assert float(raw.max()) < -20.0 and float(floored.min()) >= -9.0
    assert float(floored.max()) < -9.0 + 1e-3
    high = torch.tensor([-2.0])
    torch.testing.assert_close(-9.0 + torch.nn.functional.softplus(high + 9.0), high, atol=1e-3,
                               rtol=0)
    # linear-Gaussian VAE: the floor adds exactly e^(f + softplus(v - f)) - e^v to the noise
    # variance of the closed-form marginal
    ref = _linear_vae()
    f = float(ref.decoder.log_var.detach().mean())
    floored_vae = KernelVAE(3, z_dim=2, arch="linear", min_log_var=f)
    floored_vae.load_state_dict(ref.state_dict())
    v = ref.decoder.log_var.detach().flatten()
    _, cov_ref = linear_gaussian_marginal(ref)
    _, cov = linear_gaussian_marginal(floored_vae)
    added = torch.exp(f + torch.nn.functional.softplus(v - f)) - torch.exp(v)
    torch.testing.assert_close(torch.diagonal(cov - cov_ref).detach(), added, rtol=1e-4,
                               atol=1e-7)
    assert bool((added > 0).all())
    with pytest.raises(DwpError, match="below max_log_var"):
        KernelVAE(5, max_log_var=-9.0, min_log_var=-8.0)
    with pytest.raises(DwpError, match="min_log_var"):
        KernelVAE(5, min_log_var=math.nan)


def test_decoder_variance_floor_is_saved(tmp_path):
    from dwp.priors import save_prior

    save_prior(KernelVAE(5, min_log_var=-9.5, max_log_var=-4.0), tmp_path / "floored", {})
    loaded = load_prior(tmp_path / "floored")
    assert (loaded.min_log_var, loaded.max_log_var) == (-9.5, -4.0)
    assert loaded.config()["min_log_var"] == -9.5
    save_prior(KernelVAE(5), tmp_path / "plain", {})
    plain = json.loads((tmp_path / "plain" / "prior.json").read_text())
    assert "min_log_var" not in plain["config"]


def test_train_prior_decoder_var_cap_data_uses_the_kernels_variance(tmp_path, capsys):
    from dwp.priors.fit import data_log_var

    kernels = _edges(200, 7, seed=2)
    np.save(tmp_path / "k7.npy", kernels.numpy())
    rc = main(["train-prior", str(tmp_path / "k7.npy"), "--out", str(tmp_path / "p"),
               "--epochs", "2", "--iwae-k", "1", "--decoder-var-cap", "data", "--no-progress"])
    assert rc in (0, None)
    prior = load_prior(tmp_path / "p" / "k7")
    by_hand = math.log(float(kernels.double().var(dim=0).mean()))
    assert prior.max_log_var == pytest.approx(by_hand, rel=1e-6)
    assert data_log_var(kernels) == pytest.approx(by_hand, rel=1e-9)
    with torch.no_grad():
        _, lv = prior.decode(torch.randn(500, prior.z_dim) * 5)
    assert float(lv.max()) < by_hand
    for bad, msg in (("-1", "positive number"), ("lots", "positive number")):
        rc = main(["train-prior", str(tmp_path / "k7.npy"), "--out", str(tmp_path / "bad"),
                   "--decoder-var-cap", bad, "--no-progress"])
        assert rc == 2 and msg in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()
    rc = main(["train-prior", str(tmp_path / "k7.npy"), "--family", "mvn", "--out",
               str(tmp_path / "bad"), "--decoder-var-cap", "data", "--no-progress"])
    assert rc == 2 and "for --family vae" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_auxiliary_kl_bound_is_above_exact_kl_and_tight_for_exact_posterior():
    vae = _linear_vae()
    vae.requires_grad_(False)
    loc, cov = linear_gaussian_marginal(vae)
    mu = vae.sample(1, generator=torch.Generator().manual_seed(3)) + 0.1
    log_var = torch.full_like(mu, -3.0)
    exact = float(kl_diag_vs_full(mu, log_var, loc, torch.linalg.cholesky(cov)))
    m = 40_000
    mus, lvs = mu.expand(m, 3, 3), log_var.expand(m, 3, 3)
    torch.manual_seed(0)
    tight = vae.kl(mus, lvs).double()  # the prior's own encoder = the exact posterior
    loose = vae.kl(mus, lvs, reverse=_perturbed_encoder(vae)).detach().double()
    se_t, se_l = float(tight.std()) / math.sqrt(m), float(loose.std()) / math.sqrt(m)
    assert abs(float(tight.mean()) - exact) < 4 * se_t, (float(tight.mean()), exact, se_t)
    # the bound holds and a poor reverse model makes it strictly looser
    assert float(loose.mean()) - exact > 10 * se_l, (float(loose.mean()), exact, se_l)


def test_kl_gradients_reach_posterior_and_reverse_model_only():
    vae = _linear_vae()
    vae.requires_grad_(False)
    rev = vae.make_reverse()
    mu = torch.zeros(4, 3, 3, requires_grad=True)
    log_var = torch.full((4, 3, 3), -2.0, requires_grad=True)
    vae.kl(mu, log_var, reverse=rev).sum().backward()
    assert mu.grad is not None and log_var.grad is not None
    assert all(p.grad is not None for p in rev.parameters())
    assert all(p.grad is None for p in vae.parameters())


@pytest.fixture(scope="module")
def trained_vae():
    train = _edges(600, 7)
    vae, history = train_kernel_vae(train, epochs=12, show_progress=False, seed=0)
    return vae, history


def test_training_improves_elbo_and_lr_decays_to_zero(trained_vae):
    _, history = trained_vae
    assert len(history) == 12
    assert history[-1]["train_elbo"] > history[0]["train_elbo"] + 20
    assert history[0]["lr"] == pytest.approx(1e-3)
    assert history[-1]["lr"] < 1e-3 / 12 + 1e-9


def test_iwae_is_above_elbo_and_nondecreasing_in_k(trained_vae):
    vae, _ = trained_vae
    test = _edges(400, 7, seed=5)
    gen = torch.Generator().manual_seed(0)
    elbo = vae.elbo(test, generator=gen).detach().double()
    iw = {kk: vae.iwae_log_prob(test, k=kk, chunk=4096, generator=gen).double()
          for kk in (1, 10, 100)}

    def gap(a, b):  # mean difference and its standard error over kernels
        d = a - b
        return float(d.mean()), float(d.std()) / math.sqrt(len(d))

    m, se = gap(iw[1], elbo)  # the same estimator: equal in expectation
    assert abs(m) < 4 * se + 1e-3
    for lo, hi in [(1, 10), (10, 100)]:
        m, se = gap(iw[hi], iw[lo])
        assert m > -3 * se, (lo, hi, m, se)
    m, se = gap(iw[100], elbo)
    assert m > 3 * se, (m, se)


def test_iwae_bound_is_differentiable_and_matches_the_estimator(trained_vae):
    vae, _ = trained_vae
    test = _edges(400, 7, seed=6)
    # K = 1 is the ELBO with its latent KL sampled: equal to vae.elbo in expectation
    a = vae.iwae_bound(test, 1, generator=torch.Generator().manual_seed(3)).detach().double()
    b = vae.elbo(test, generator=torch.Generator().manual_seed(3)).detach().double()
    d = a - b
    assert abs(float(d.mean())) < 4 * float(d.std()) / math.sqrt(len(d))
    test = test[:64]
    # the training bound and the no-grad estimator agree for the same draws
    c = vae.iwae_bound(test, 20, generator=torch.Generator().manual_seed(4))
    d = vae.iwae_log_prob(test, k=20, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(c.detach(), d, rtol=1e-5, atol=1e-4)
    c.sum().backward()
    grads = [q.grad for q in vae.decoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    vae.zero_grad(set_to_none=True)
    with pytest.raises(DwpError, match="k >= 1"):
        vae.iwae_bound(test, 0)


def test_iwae_training_runs_and_is_recorded_by_the_cli(tmp_path, capsys):
    train = _edges(256, 7, seed=7)
    vae, history = train_kernel_vae(train, epochs=4, train_k=4, show_progress=False)
    assert len(history) == 4 and all(math.isfinite(h["train_elbo"]) for h in history)
    assert history[-1]["train_elbo"] > history[0]["train_elbo"]
    with pytest.raises(DwpError, match="train_k"):
        train_kernel_vae(train, epochs=1, train_k=0, show_progress=False)
    np.save(tmp_path / "k7.npy", train.numpy())
    rc = main(["train-prior", str(tmp_path / "k7.npy"), "--out", str(tmp_path / "p"),
               "--epochs", "2", "--train-k", "3", "--iwae-k", "1,10", "--no-progress"])
    assert rc in (0, None)
    meta = json.loads((tmp_path / "p" / "k7" / "prior.json").read_text())
    assert meta["training"]["train_k"] == 3


def test_evaluate_prior_reports_metrics_on_one_scale(trained_vae):
    vae, _ = trained_vae
    train, test = _edges(300, 7, seed=1), _edges(200, 7, seed=2)
    m = evaluate_prior(vae, train, test, iwae_ks=(1, 10), iwae_max_kernels=50)
    assert m["iwae_kernels"] == 50 and set(m["test_iwae"]) == {"1", "10"}
    assert set(m["test_loglik"]) == {"fitted_gaussian", "isotropic_gaussian"}
    assert m["test_loglik"]["fitted_gaussian"] > m["test_loglik"]["isotropic_gaussian"]
    assert all(np.isfinite(v) for v in m["test_iwae"].values())


def test_cli_train_and_sample_prior(tmp_path, capsys):
    train, test = _edges(300, 5), _edges(100, 5, seed=3)
    np.save(tmp_path / "conv2.npy", train.numpy()[:, None])
    np.save(tmp_path / "test.npy", test.numpy())
    out = tmp_path / "prior"
    args = ["train-prior", str(tmp_path / "conv2.npy"), "--test", str(tmp_path / "test.npy"),
            "--out", str(out), "--epochs", "2", "--iwae-k", "1,5", "--no-progress"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    layer = metrics["conv2"]
    assert set(layer["test_iwae"]) == {"1", "5"} and layer["n_test"] == 100
    for key in ("train_elbo", "test_elbo", "test_loglik"):
        assert layer[key] is not None
    prior = load_prior(out / "conv2")
    assert isinstance(prior, KernelVAE) and prior.kernel_size == 5
    assert main(args) == 0  # resumes: the finished layer is skipped
    assert "skipping" in capsys.readouterr().out
    png = tmp_path / "s.png"
    assert main(["sample-prior", str(out), "--n", "16", "--out", str(png)]) == 0
    assert png.stat().st_size > 1000
    assert main(["train-prior", str(tmp_path / "conv2.npy"), "--family", "mvn",
                 "--out", str(tmp_path / "mvn"), "--test", str(tmp_path / "test.npy")]) == 0
    mvn = json.loads((tmp_path / "mvn" / "metrics.json").read_text())["conv2"]
    assert mvn["test_elbo"] == pytest.approx(mvn["test_loglik"]["fitted_gaussian"])


def test_cli_rejects_bad_kernels_without_leaving_a_prior(tmp_path, capsys):
    bad = _edges(50, 5).numpy()
    bad[3, 2, 2] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    assert main(["train-prior", str(tmp_path / "bad.npy"), "--out", str(tmp_path / "p"),
                 "--no-progress"]) == 2
    assert "NaN or inf" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()  # checked before the run folder is made
    np.save(tmp_path / "k5.npy", _edges(50, 5).numpy())
    np.save(tmp_path / "k7.npy", _edges(50, 7).numpy())
    assert main(["train-prior", str(tmp_path / "k5.npy"), "--test", str(tmp_path / "k7.npy"),
                 "--out", str(tmp_path / "q"), "--family", "mvn"]) == 2
    assert "7x7" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("flag,value", [("--epochs", "0"), ("--batch-size", "0"),
                                        ("--train-k", "0"), ("--lr", "0"), ("--z-dim", "0"),
                                        ("--hidden", "0"), ("--max-train-kernels", "-1")])
def test_cli_rejects_bad_training_options_before_creating_the_run(tmp_path, capsys, flag, value):
    np.save(tmp_path / "k7.npy", _edges(50, 7).numpy())
    assert main(["train-prior", str(tmp_path / "k7.npy"), "--out", str(tmp_path / "p"),
                 flag, value, "--no-progress"]) == 2
    assert flag in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_latent_activity_matches_the_linear_encoders_closed_form():
    torch.manual_seed(3)
    vae = KernelVAE(3, z_dim=2, arch="linear")
    w = torch.randn(4000, 3, 3) * torch.linspace(0.1, 1.0, 9).reshape(3, 3)
    x = w.flatten(1).double()
    cov = (x - x.mean(0)).T @ (x - x.mean(0)) / x.shape[0]
    a = vae.encoder.linear.weight.detach().double()
    expected = torch.diagonal(a @ cov @ a.T)  # Var(A w + c) per latent dimension
    torch.testing.assert_close(vae.latent_activity(w).double(), expected, rtol=1e-4, atol=1e-7)


def test_evaluate_prior_counts_active_latent_dims_and_flags_collapse():
    torch.manual_seed(4)
    vae = KernelVAE(3, z_dim=2, arch="linear")
    train, test = torch.randn(500, 3, 3), torch.randn(100, 3, 3)
    with torch.no_grad():
        vae.encoder.linear.weight[1].mul_(1e-3)  # dimension 1 barely depends on w
    m = evaluate_prior(vae, train, test, iwae_ks=(1,))
    assert m["latent_dims"] == 2 and m["active_latent_dims"] == 1
    assert m["latent_activity"][0] > 0.01 > m["latent_activity"][1]
    with torch.no_grad():
        vae.encoder.linear.weight.zero_()  # the code ignores the kernel: posterior collapse
    assert evaluate_prior(vae, train, test, iwae_ks=(1,))["active_latent_dims"] == 0


def test_cli_warns_when_the_trained_vae_ignores_its_latent_code(tmp_path, capsys, monkeypatch):
    import dwp.commands.priors as priors_cmd

    real = priors_cmd.evaluate_prior

    def collapsed(prior, *args, **kwargs):
        with torch.no_grad():
            prior.encoder.fc_mu.weight.zero_()  # the encoder mean no longer depends on w
        return real(prior, *args, **kwargs)

    monkeypatch.setattr(priors_cmd, "evaluate_prior", collapsed)
    np.save(tmp_path / "k7.npy", _edges(128, 7, seed=8).numpy())
    rc = main(["train-prior", str(tmp_path / "k7.npy"), "--out", str(tmp_path / "p"),
               "--epochs", "1", "--iwae-k", "1", "--no-progress"])
    assert rc in (0, None)
    out = capsys.readouterr()
    assert "active z 0/2" in out.out
    assert "posterior collapse" in out.err
    assert "training kernels for" not in out.err  # 128 kernels of 49 entries: enough
    metrics = json.loads((tmp_path / "p" / "k7" / "metrics.json").read_text())
    assert metrics["active_latent_dims"] == 0 and metrics["latent_dims"] == 2


def test_sample_norm_check_tells_a_matching_prior_from_a_too_broad_one():
    from dwp.priors import FittedGaussian, StandardNormal

    torch.manual_seed(5)
    data = torch.randn(20_000, 3, 3) * 0.1
    gen = torch.Generator().manual_seed(0)
    fitted = sample_norm_check(FittedGaussian.fit(data), data, generator=gen)
    # same distribution: ~1% of 10,000 draws beyond the data's p99 (binomial sd 0.1%)
    assert 0.006 < fitted["samples_above_data_p99"] < 0.015
    assert fitted["samples_above_2x_data_p99"] == 0.0
    assert fitted["sample_norm"]["p50"] == pytest.approx(fitted["data_norm"]["p50"], rel=0.03)
    broad = sample_norm_check(StandardNormal(), data, generator=gen)  # 10x the data's scale
    assert broad["samples_above_data_p99"] == 1.0
    assert broad["samples_above_2x_data_p99"] > 0.99  # P(chi2_9 < (2 x 4.65 / 10)^2) = 4e-4
    assert broad["sample_norm"]["p50"] > 8 * broad["data_norm"]["p50"]
    assert broad["n_samples"] == 10_000


def test_train_prior_warns_when_prior_samples_are_far_larger_than_the_kernels(
    tmp_path, capsys, monkeypatch
):
    import dwp.commands.priors as priors_cmd

    real = priors_cmd.evaluate_prior

    def broad_decoder(prior, *args, **kwargs):
        with torch.no_grad():
            prior.decoder.fc_var.bias.add_(8.0)  # decoder variance ~e^8 times larger
        return real(prior, *args, **kwargs)

    np.save(tmp_path / "k7.npy", _edges(128, 7, seed=8).numpy())
    args = ["train-prior", str(tmp_path / "k7.npy"), "--epochs", "1", "--iwae-k", "1",
            "--no-progress"]
    assert main([*args, "--family", "mvn", "--out", str(tmp_path / "ok")]) in (0, None)
    out = capsys.readouterr()
    assert "samples > train p99" in out.out
    assert "more than twice as large as 99% of its training" not in out.err
    monkeypatch.setattr(priors_cmd, "evaluate_prior", broad_decoder)
    assert main([*args, "--out", str(tmp_path / "broad")]) in (0, None)
    assert "more than twice as large as 99% of its training" in capsys.readouterr().err
    metrics = json.loads((tmp_path / "broad" / "k7" / "metrics.json").read_text())
    assert metrics["sample_norms"]["samples_above_2x_data_p99"] > 0.5


def test_train_prior_warns_about_too_few_kernels(tmp_path, capsys):
    np.save(tmp_path / "k7.npy", _edges(30, 7, seed=3).numpy())
    rc = main(["train-prior", str(tmp_path / "k7.npy"), "--family", "mvn", "--out",
               str(tmp_path / "p"), "--no-progress"])
    assert rc in (0, None)
    assert "30 training kernels for 49-dimensional kernels" in capsys.readouterr().err


def test_train_bnn_priors_warn_about_a_collapsed_vae(tmp_path, capsys):
    from dwp.priorspec import collapsed_vae_layers, resolve_priors

    np.save(tmp_path / "conv1.npy", _edges(64, 7, seed=9).numpy())
    rc = main(["train-prior", str(tmp_path / "conv1.npy"), "--out", str(tmp_path / "p"),
               "--epochs", "1", "--iwae-k", "1", "--no-progress"])
    assert rc in (0, None)
    metrics_file = tmp_path / "p" / "conv1" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    assert metrics["latent_dims"] == 2
    if metrics["active_latent_dims"] == 0:  # a 1-epoch VAE may already be collapsed
        metrics["active_latent_dims"] = 2
        metrics_file.write_text(json.dumps(metrics))
    assert collapsed_vae_layers(tmp_path / "p") == []
    metrics["active_latent_dims"] = 0
    metrics_file.write_text(json.dumps(metrics))
    assert collapsed_vae_layers(tmp_path / "p") == ["conv1"]
    with pytest.warns(UserWarning, match="conv1 uses none of its latent dimensions"):
        resolve_priors("dwp", str(tmp_path / "p"))


def test_train_bnn_warns_when_prior_samples_are_oversized(tmp_path, capsys):
    from dwp.commands.bnn import _warn_oversized_samples
    from dwp.priorspec import oversized_sample_layers

    kernels = tmp_path / "kernels"
    kernels.mkdir()
    for name, k in (("conv1", 7), ("conv2", 5)):
        np.save(kernels / f"{name}.npy", _edges(64, k, seed=1).numpy())
    rc = main(["train-prior", str(kernels), "--out", str(tmp_path / "p"), "--epochs", "1",
               "--iwae-k", "1", "--no-progress"])
    assert rc in (0, None)
    for name, frac in (("conv1", 0.12), ("conv2", 0.004)):
        metrics_file = tmp_path / "p" / name / "metrics.json"
        metrics = json.loads(metrics_file.read_text())
        metrics["sample_norms"]["samples_above_2x_data_p99"] = frac
        metrics_file.write_text(json.dumps(metrics))
    capsys.readouterr()
    assert oversized_sample_layers(tmp_path / "p", 0.01) == [("conv1", 0.12)]
    _warn_oversized_samples("dwp", tmp_path / "p", None)  # dwp's default init: prior samples
    assert "conv1 (12%)" in capsys.readouterr().err
    _warn_oversized_samples("dwp", tmp_path / "p", "prior-mean")
    _warn_oversized_samples("log-uniform", tmp_path / "p", None)  # Xavier init
    assert capsys.readouterr().err == ""

