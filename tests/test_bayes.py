"""Variational layers, KL / auxiliary bound, ELBO scaling, conversion and sampling modes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dwp.bayes import (
    BayesConv2d,
    BayesLinear,
    bayesianize,
    elbo_loss,
    kl,
    predict,
    sampling,
)
from dwp.priors.base import KernelPrior
from dwp.priors.gaussian import StandardNormal
from dwp.priors.loguniform import LogUniform
from dwp.runtime import DwpError

LOG_2PI = math.log(2 * math.pi)

pytestmark = pytest.mark.usefixtures("one_thread")



# -- a small implicit prior whose marginal is known in closed form ------------------------
class LinearGaussianPrior(KernelPrior):
    """p(z) = N(0, I_d), p(w | z) = N(A z, s^2 I): an implicit prior with p(w) = N(0, AA^T + s^2 I).

    ``kl`` is the one-sample auxiliary bound of paper Algorithm 1 (Eq. 7 integrand):
    log q(w) + log r(z|w) - log p(z) - log p(w|z), w ~ q, z ~ r(z|w), both reparameterised.
    """

    family = "lingauss-test"
    explicit = False

    def __init__(self, k: int, d: int, s: float, seed: int = 0) -> None:
        super().__init__(k)
        g = torch.Generator().manual_seed(seed)
        self.A = nn.Parameter(torch.randn(k * k, d, generator=g) * 0.5)
        self.s = s
        self.d = d

    def marginal(self) -> torch.distributions.MultivariateNormal:
        cov = self.A @ self.A.T + self.s**2 * torch.eye(self.A.shape[0])
        return torch.distributions.MultivariateNormal(torch.zeros(self.A.shape[0]), cov)

    def exact_reverse(self) -> nn.Module:
        """The exact posterior p(z | w) = N(S A^T w / s^2, S), S = (I + A^T A / s^2)^-1."""
        a = self.A.detach()
        cov = torch.linalg.inv(torch.eye(self.d) + a.T @ a / self.s**2)
        r = Reverse(a.shape[0], self.d)
        with torch.no_grad():
            r.mean.weight.copy_(cov @ a.T / self.s**2)
            r.mean.bias.zero_()
            r.log_var.copy_(torch.log(torch.diagonal(cov)))  # diagonal only: exact if d == 1
        return r

    def make_reverse(self) -> nn.Module:
        return Reverse(self.A.shape[0], self.d)  # r(z|w) = N(0, I) = p(z) at the start

    def kl(self, mu, log_var, reverse=None):
        n = mu.shape[0]
        m, lv = mu.reshape(n, -1), log_var.reshape(n, -1)
        w = m + torch.exp(0.5 * lv) * torch.randn_like(m)
        log_q = (-0.5 * (LOG_2PI + lv + (w - m) ** 2 / lv.exp())).sum(1)
        z_mu, z_lv = reverse(w)
        z = z_mu + torch.exp(0.5 * z_lv) * torch.randn_like(z_mu)
        log_r = (-0.5 * (LOG_2PI + z_lv + (z - z_mu) ** 2 / z_lv.exp())).sum(1)
        log_pz = (-0.5 * (LOG_2PI + z**2)).sum(1)
        w_mu = z @ self.A.T
        log_pw = (-0.5 * (LOG_2PI + 2 * math.log(self.s) + (w - w_mu) ** 2 / self.s**2)).sum(1)
        return log_q + log_r - log_pz - log_pw


class Reverse(nn.Module):
    def __init__(self, dim_w: int, d: int) -> None:
        super().__init__()
        self.mean = nn.Linear(dim_w, d)
        nn.init.zeros_(self.mean.weight)
        nn.init.zeros_(self.mean.bias)
        self.log_var = nn.Parameter(torch.zeros(d))

    def forward(self, w):
        return self.mean(w), self.log_var.expand(w.shape[0], -1)


def _exact_kl_full(layer: BayesConv2d, prior: LinearGaussianPrior) -> float:
    mu, lv = layer.kernels()
    n = mu.shape[0]
    q = torch.distributions.MultivariateNormal(
        mu.reshape(n, -1), torch.diag_embed(lv.reshape(n, -1).exp())
    )
    return torch.distributions.kl_divergence(q, prior.marginal()).sum().item()


# -- LRT moments ----------------------------------------------------------------------------
@pytest.mark.parametrize("posterior", ["gaussian", "truncated-alpha"])
@pytest.mark.parametrize("kind", ["conv", "conv-unfold", "conv-1ch", "linear"])
def test_lrt_moments_match_weight_sampling(kind, posterior):
    """Every convolution path (``F.conv2d``; im2col for all layers; the default im2col for a
    one-channel layer) and the linear layer draw pre-activations with the exact moments."""
    torch.manual_seed(0)
    opts = {"log_sigma2_init": -1.0, "posterior": posterior, "alpha_logit_init": 0.5}
    if kind.startswith("conv"):
        c = 1 if kind == "conv-1ch" else 2
        impl = "unfold" if kind == "conv-unfold" else "auto"
        layer = BayesConv2d(c, 3, (3, 2), stride=2, padding=1, conv_impl=impl, **opts)
        assert layer._unfold == (kind != "conv")
        x = torch.randn(1, c, 6, 5)
    else:
        layer = BayesLinear(6, 4, **opts)
        x = torch.randn(1, 6)
    with torch.no_grad():
        noisy = layer.log_sigma2 if posterior == "gaussian" else layer.alpha_logit
        noisy.add_(torch.randn_like(noisy) * 0.5)
        layer.bias.normal_()
    # the variance each parameterisation means, computed independently of the layer's code
    if posterior == "gaussian":
        var_w = layer.log_sigma2.detach().exp()
    else:
        a = layer.alpha_logit.detach()
        var_w = layer.weight_mu.detach() ** 2 / (1 + torch.exp(-a))
    assert torch.allclose(layer.weight_var().detach(), var_w, rtol=1e-6)
    s = 20000
    with torch.no_grad():
        with sampling(layer, "sample"):
            ws = torch.stack([layer(x)[0] for _ in range(s)])  # weight samples
        with sampling(layer, "lrt"):
            lrt = layer(x.expand(s, *x.shape[1:]))  # independent LRT draws per row
        mu, b = layer.weight_mu.detach(), layer.bias.detach()
        if kind == "linear":
            exact_mean, exact_var = F.linear(x, mu, b)[0], F.linear(x * x, var_w)[0]
        else:
            exact_mean = F.conv2d(x, mu, b, stride=2, padding=1)[0]
            exact_var = F.conv2d(x * x, var_w, stride=2, padding=1)[0]
        with sampling(layer, "mean"):
            assert torch.allclose(layer(x)[0], exact_mean, atol=1e-5)
    for draws in (ws, lrt):
        se = (exact_var / s).sqrt()
        assert ((draws.mean(0) - exact_mean).abs() < 5 * se + 1e-6).all()
        # sample variance of a Gaussian has relative sd sqrt(2/(s-1)) ~ 1%
        assert torch.allclose(draws.var(0), exact_var, rtol=0.06, atol=1e-6)


@pytest.mark.parametrize("mode", ["mean", "sample", "lrt"])
def test_conv_impls_give_the_same_outputs_and_gradients(mode):
    """im2col and ``F.conv2d`` paths agree (float64) in value and in every parameter gradient,
    for a one-channel layer (im2col by default) and a multi-channel one (forced). From one
    generator state both draw the same weight sample or the same LRT noise, so switching the
    implementation changes a training run by float rounding only."""
    for c, impl in ((1, "mixed"), (3, "unfold")):
        torch.manual_seed(1)
        layer = BayesConv2d(c, 4, 3, stride=(1, 2), padding=(2, 1), dilation=(2, 1),
                            log_sigma2_init=-3.0).double()
        x = torch.rand(5, c, 9, 8, dtype=torch.double)
        out, grads = {}, {}
        for which in ("native", impl):
            layer.set_conv_impl(which)
            layer.zero_grad()
            torch.manual_seed(2)  # the same weight sample / LRT noise for both paths
            with sampling(layer, mode):
                y = layer(x)
            (y * torch.linspace(-1, 1, y.numel(), dtype=torch.double).view_as(y)).sum().backward()
            out[which] = y.detach()
            ps = (layer.weight_mu, layer.bias) + ((layer.log_sigma2,) if mode == "lrt" else ())
            grads[which] = [p.grad.clone() for p in ps]
        assert out[impl].shape == out["native"].shape
        assert torch.allclose(out[impl], out["native"], atol=1e-12)
        for a, b in zip(grads[impl], grads["native"], strict=True):
            assert torch.allclose(a, b, atol=1e-10)
    with pytest.raises(DwpError, match="unknown conv_impl"):
        layer.set_conv_impl("fast")


def test_truncated_alpha_posterior_keeps_alpha_below_one_under_log_uniform():
    """The paper's log-uniform baseline: sigma^2 = sigmoid(a) mu^2, so log alpha < 0 always.

    The layer's log-uniform KL must equal the Molchanov approximation at log alpha =
    log sigmoid(a) (whatever mu is), and minimising it alone must drive alpha towards 1,
    never beyond, while a free-variance layer's alpha runs off (the collapse it prevents).
    """
    from dwp.priors.loguniform import kl_loguniform_approx

    torch.manual_seed(0)
    layer = BayesConv2d(2, 3, 3, prior=LogUniform(), posterior="truncated-alpha")
    assert layer.alpha_logit.eq(-2.0).all() and not hasattr(layer, "log_sigma2")
    with torch.no_grad():
        layer.alpha_logit.normal_(0.0, 2.0)
    la = F.logsigmoid(layer.alpha_logit.detach())
    assert torch.allclose(layer.kl(), kl_loguniform_approx(la).sum(), rtol=1e-5)
    free = BayesConv2d(2, 3, 3, prior=LogUniform(), log_sigma2_init=-4.0)
    for lay in (layer, free):
        opt = torch.optim.Adam(lay.parameters(), lr=0.1)
        for _ in range(300):
            opt.zero_grad()
            lay.kl().backward()
            opt.step()
    mu, lv = layer.kernels()
    log_alpha = (lv - torch.log(mu.square() + 1e-16)).detach()
    assert log_alpha.max() < 0 and log_alpha.mean() > -0.5  # pushed up to alpha ~ 1, not past
    mu, lv = free.kernels()
    assert (lv - torch.log(mu.square() + 1e-16)).detach().mean() > 3  # free alpha runs off


# -- KL terms -------------------------------------------------------------------------------
def test_standard_normal_kl_closed_form_equals_monte_carlo_through_layer():
    torch.manual_seed(1)
    layer = BayesConv2d(2, 3, 3, prior=StandardNormal(), log_sigma2_init=-2.0)
    with torch.no_grad():
        layer.log_sigma2.add_(torch.rand_like(layer.log_sigma2))
    closed = layer.kl().item()
    mu, ls2 = layer.weight_mu.detach(), layer.log_sigma2.detach()
    q = torch.distributions.Normal(mu, (0.5 * ls2).exp())
    p = torch.distributions.Normal(0.0, 1.0)
    s = 20000
    w = q.sample((s,))
    per_draw = (q.log_prob(w) - p.log_prob(w)).flatten(1).sum(1)
    mc, se = per_draw.mean().item(), per_draw.std().item() / math.sqrt(s)
    assert abs(closed - mc) < 4 * se
    assert se < 0.02 * abs(closed)  # the test has power


def test_kernel_subsample_is_unbiased():
    torch.manual_seed(2)
    model = nn.Sequential(
        BayesConv2d(4, 8, 3, prior=StandardNormal()), BayesConv2d(8, 4, 3, prior=LogUniform())
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    full = kl(model).item()
    g = torch.Generator().manual_seed(0)
    draws = torch.tensor([kl(model, kernel_subsample=5, generator=g).item() for _ in range(3000)])
    se = draws.std().item() / math.sqrt(len(draws))
    assert draws.std() > 0  # it is really subsampling
    assert abs(draws.mean().item() - full) < 4 * se
    # m >= n kernels: exact
    assert kl(model, kernel_subsample=10_000).item() == pytest.approx(full, rel=1e-6)


def test_auxiliary_bound_through_layer_is_exact_with_exact_reverse_and_above_otherwise():
    torch.manual_seed(3)
    prior = LinearGaussianPrior(k=2, d=1, s=0.3)
    layer = BayesConv2d(2, 3, 2, prior=prior, log_sigma2_init=-3.0)
    with torch.no_grad():
        layer.weight_mu.normal_(0, 0.5)
    exact = _exact_kl_full(layer, prior)

    def mc(n=4000):
        with torch.no_grad():
            v = torch.tensor([layer.kl().item() for _ in range(n)])
        return v.mean().item(), v.std().item() / math.sqrt(n)

    loose, se_loose = mc()  # r(z|w) = p(z)
    assert loose > exact + 4 * se_loose
    layer.reverse = prior.exact_reverse()  # d = 1: the diagonal Gaussian is the exact posterior
    tight, se_tight = mc()
    assert abs(tight - exact) < 4 * se_tight + 1e-4
    assert se_tight < se_loose  # exact r removes the z-noise: log q(w) - log p(w) per draw


def test_reverse_model_is_trained_jointly_or_frozen_and_prior_is_frozen():
    torch.manual_seed(4)
    prior = LinearGaussianPrior(k=2, d=1, s=0.3)
    for freeze in (False, True):
        layer = BayesConv2d(2, 3, 2, prior=prior, freeze_reverse=freeze)
        assert layer.reverse is not None
        kl(layer).backward()
        assert layer.weight_mu.grad is not None and layer.log_sigma2.grad is not None
        assert prior.A.grad is None and not prior.A.requires_grad
        grads = [p.grad for p in layer.reverse.parameters()]
        assert all(g is None for g in grads) if freeze else all(g is not None for g in grads)
    # two layers with one prior get separate reverse models
    a, b = BayesConv2d(1, 1, 2, prior=prior), BayesConv2d(1, 1, 2, prior=prior)
    assert a.reverse is not b.reverse


def test_training_the_reverse_model_tightens_the_bound():
    torch.manual_seed(5)
    prior = LinearGaussianPrior(k=2, d=1, s=0.3)
    layer = BayesConv2d(2, 3, 2, prior=prior, log_sigma2_init=-3.0)
    with torch.no_grad():
        layer.weight_mu.normal_(0, 0.5)
    exact = _exact_kl_full(layer, prior)
    with torch.no_grad():
        before = torch.tensor([layer.kl().item() for _ in range(2000)]).mean().item()
    assert before - exact > 10  # r = p(z) at the start: a loose bound
    opt = torch.optim.Adam(layer.reverse.parameters(), lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        (sum(layer.kl() for _ in range(4)) / 4).backward()
        opt.step()
    with torch.no_grad():
        after = torch.tensor([layer.kl().item() for _ in range(2000)]).mean().item()
    assert -0.5 < after - exact < 0.5  # trained r ~ the exact posterior: the bound is tight


# -- ELBO scaling ---------------------------------------------------------------------------
def test_elbo_objective_does_not_depend_on_batch_size():
    torch.manual_seed(6)
    n = 60
    x, y = torch.randn(n, 5), torch.randint(0, 3, (n,))
    model = nn.Sequential(BayesLinear(5, 3, prior=StandardNormal()))
    with torch.no_grad():
        kl_term = kl(model)
        with sampling(model, "mean"):
            full = elbo_loss(model(x), y, kl_term, n).item()
            for b in (1, 4, 15, 60):
                perm = torch.randperm(n)
                per_batch = [
                    elbo_loss(model(x[perm[i : i + b]]), y[perm[i : i + b]], kl_term, n).item()
                    for i in range(0, n, b)
                ]
                # a uniform random batch is one block of a random partition: same expectation
                assert sum(per_batch) / len(per_batch) == pytest.approx(full, rel=1e-5)
    # and the data term is the full-data sum of NLLs (not a mean)
    with torch.no_grad(), sampling(model, "mean"):
        logits = model(x)
    assert elbo_loss(logits, y, 0.0, n).item() == pytest.approx(
        F.cross_entropy(logits, y, reduction="sum").item(), rel=1e-6
    )


# -- conversion, modes, prediction ----------------------------------------------------------
def test_bayesianize_copies_geometry_and_reports():
    torch.manual_seed(7)
    model = nn.Sequential()
    model.add_module("a", nn.Conv2d(3, 4, (3, 5), stride=2, padding=(1, 2), dilation=(1, 2)))
    model.add_module("b", nn.Conv2d(4, 4, 3, groups=2, bias=False, padding=1,
                                    padding_mode="reflect"))
    model.add_module("c", nn.Conv2d(4, 2, 1))
    x = torch.randn(2, 3, 9, 11)
    ref = model(x)
    report = bayesianize(model, {"a": StandardNormal(), 3: LogUniform()}, init="copy")
    assert isinstance(model.a, BayesConv2d) and isinstance(model.b, BayesConv2d)
    assert type(model.c) is nn.Conv2d
    assert [(r["layer"], r["prior"], r["matched_by"]) for r in report] == [
        ("a", "sn", "a"), ("b", "loguniform", 3), ("c", None, None)]
    with sampling(model, "mean"):
        assert torch.allclose(model(x), ref, atol=1e-5)
    assert model.a.log_sigma2.eq(-10).all()
    with pytest.raises(DwpError, match="match no Conv2d"):
        bayesianize(nn.Sequential(nn.Conv2d(1, 1, 3)), {"conv9": StandardNormal()})


def test_bayesianize_again_leaves_earlier_layers_and_their_priors_alone():
    from dwp.priors.vae import KernelVAE

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 7), nn.Conv2d(2, 3, 5))
    bayesianize(model, {"0": KernelVAE(7, hidden=8)}, init="prior")
    vae_convs = [m for m in model[0].prior.modules() if isinstance(m, nn.Conv2d)]
    assert {m.kernel_size for m in vae_convs} >= {(3, 3)}  # the 7x7 VAE holds 3x3 convs
    # a 3x3 key must not reach into the prior's VAE: the model itself has no 3x3 conv
    with pytest.raises(DwpError, match="match no Conv2d"):
        bayesianize(model, {3: StandardNormal()})
    report = bayesianize(model, {"1": StandardNormal()}, posterior="truncated-alpha")
    assert [(r["layer"], r["prior"]) for r in report] == [("1", "sn")]  # no VAE internals
    assert model[0].posterior == "gaussian" and model[1].posterior == "truncated-alpha"
    assert all(type(m) is nn.Conv2d for m in vae_convs)
    assert [m for m in model[0].prior.modules() if isinstance(m, nn.Conv2d)] == vae_convs


def test_bayesianize_fconv_keeps_classifier_deterministic_and_inits_from_prior():
    from dwp.nets import FConvMNIST

    net = FConvMNIST((4, 6))
    g = torch.Generator().manual_seed(0)
    report = bayesianize(net, {7: StandardNormal(0.01), 5: StandardNormal(0.01)}, init="prior",
                         generator=g, log_sigma2_init=-8)
    assert [r["layer"] for r in report if r["bayesian"]] == ["features.conv1", "features.conv2"]
    assert type(net.classifier) is nn.Linear
    assert net.features.conv2.weight_mu.std().item() == pytest.approx(0.01, rel=0.2)
    assert net.features.conv1.log_sigma2.eq(-8).all()
    assert net(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_bayesianize_prior_mean_init_uses_noise_free_decoder_means():
    from dwp.priors.vae import KernelVAE

    torch.manual_seed(3)
    vae = KernelVAE(kernel_size=3, z_dim=2, arch="generic")
    model = nn.Sequential(nn.Conv2d(2, 3, 3))
    bayesianize(model, vae, init="prior-mean", generator=torch.Generator().manual_seed(5))
    z = torch.randn(6, 2, generator=torch.Generator().manual_seed(5))
    mean, _ = vae.decoder(z)
    assert torch.allclose(model[0].weight_mu.reshape(6, 3, 3), mean, atol=1e-6)
    noisy = nn.Sequential(nn.Conv2d(2, 3, 3))  # untrained decoder: log-variance ~ 0, sd ~ 1
    bayesianize(noisy, vae, init="prior", generator=torch.Generator().manual_seed(5))
    assert not torch.allclose(noisy[0].weight_mu.reshape(6, 3, 3), mean, atol=1e-3)
    with pytest.raises(DwpError, match="latent-variable priors.*sn"):
        bayesianize(nn.Sequential(nn.Conv2d(1, 1, 3)), StandardNormal(), init="prior-mean")


def test_sampling_modes_and_restore():
    torch.manual_seed(8)
    model = nn.Sequential(BayesConv2d(1, 2, 3, log_sigma2_init=-1.0), nn.Flatten())
    x = torch.randn(4, 1, 5, 5)
    assert model[0].mode == "lrt"
    with sampling(model, "mean"):
        assert torch.equal(model(x), model(x))
    with sampling(model, "fixed"):
        a, b = model(x), model(x)
        assert torch.equal(a, b)
        with sampling(model, "sample"):
            assert not torch.equal(model(x), model(x))
        assert torch.equal(model(x), a)  # restored with the same held sample
    assert model[0].mode == "lrt" and model[0]._fixed_weight is None
    assert not torch.equal(model(x), model(x))
    with pytest.raises(DwpError, match="unknown sampling mode"):
        with sampling(model, "bogus"):
            pass


def test_predict_averages_probabilities():
    torch.manual_seed(9)
    model = nn.Sequential(BayesLinear(5, 3, log_sigma2_init=0.0))
    x = torch.randn(7, 5)
    p = predict(model, x, samples=50, batch_size=3)
    assert p.shape == (7, 3)
    assert torch.allclose(p.sum(1), torch.ones(7), atol=1e-5)
    with sampling(model, "mean"):
        p_mean = F.softmax(model(x), -1)
    assert torch.allclose(predict(model, x, mode="mean"), p_mean)
    # averaging over samples: the ensemble is less confident than typical single draws
    assert not torch.allclose(p, p_mean, atol=1e-3)
    assert model.training


@pytest.mark.parametrize("on_device", [False, True])
def test_draw_kernel_indices_is_a_subset_without_replacement(on_device):
    """Both ways of drawing (CPU generator; the device's generator, which CUDA graphs record)
    give m distinct in-range indices for layers with more than m kernels, none otherwise."""
    from dwp.bayes import draw_kernel_indices

    torch.manual_seed(0)
    prior = StandardNormal()
    net = torch.nn.Sequential(BayesConv2d(2, 3, 3, prior=prior), BayesConv2d(3, 1, 3, prior=prior))
    kw = {"device": torch.device("cpu")} if on_device else {"generator": torch.Generator()}
    ind = draw_kernel_indices(net, 4, **kw)
    assert set(ind) == {"0"}  # 6 kernels > 4; the second layer has only 3
    idx = ind["0"]
    assert idx.shape == (4,) and idx.dtype == torch.long
    assert len(set(idx.tolist())) == 4 and 0 <= idx.min() and idx.max() < 6
