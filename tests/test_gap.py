"""The ELBO / auxiliary-bound gap (paper Appendix B) on linear-Gaussian VAE priors, where
p(w), p(z | w) and the gap are known in closed form."""

from __future__ import annotations

import json
import math

import pytest
import torch
from linear_vae import exact_log_prob as exact_log_p
from linear_vae import set_exact_posterior

from dwp.experiments.gap import GapConfig, PriorReverse, importance_bounds, model_gap
from dwp.priors.vae import KernelVAE
from dwp.runtime import DwpError

pytestmark = pytest.mark.usefixtures("one_thread")


def exact_linear_vae(k: int, z_dim: int, seed: int, noise: float = 0.3) -> KernelVAE:
    """A linear-Gaussian VAE whose encoder is the exact posterior p(z | w).

    Decoder p(w|z) = N(Az + b, noise I) with orthogonal columns of A, so that
    p(z|w) = N(S A^T (w - b) / noise, S) with diagonal S = (I + A^T A / noise)^-1.
    """
    g = torch.Generator().manual_seed(seed)
    vae = KernelVAE(k, z_dim=z_dim, arch="linear")
    d = k * k
    q, _ = torch.linalg.qr(torch.randn(d, z_dim, generator=g))
    a = q * torch.linspace(2.0, 0.8, z_dim)
    b = 0.1 * torch.randn(d, generator=g)
    return set_exact_posterior(vae, a, b, torch.full((d,), noise)).requires_grad_(False)


def kl_prior_to_posterior(vae: KernelVAE, w: torch.Tensor) -> torch.Tensor:
    """KL(p(z) || p(z | w)) per kernel: the exact gap of the bound with r(z|w) = p(z)."""
    m, lv = vae.encoder(w)
    v = lv.exp()
    return 0.5 * ((1.0 + m.square()) / v - 1.0 + lv).sum(1).double()


def test_iwae_matches_exact_log_density_and_gaps():
    vae = exact_linear_vae(3, 2, seed=0)
    w = vae.sample(6, generator=torch.Generator().manual_seed(1)) * 1.5  # some atypical ones
    truth = exact_log_p(vae, w)
    g = torch.Generator().manual_seed(2)
    # exact posterior as r: every importance weight equals p(w), so both bounds are exact
    iwae, aux = importance_bounds(vae, w, vae.encoder, k=64, generator=g)
    assert torch.allclose(iwae, truth, atol=1e-3) and torch.allclose(aux, truth, atol=1e-3)
    # an imperfect proposal (posterior mean shifted, variance doubled): a looser aux bound,
    # but IWAE at large K (chunked) converges to the exact log-density
    class Broad(torch.nn.Module):
        def forward(self, x):
            m, lv = vae.encoder(x)
            return m + 0.3 * lv.exp().sqrt(), lv + math.log(2.0)

    iwae_b, aux_b = importance_bounds(vae, w, Broad(), k=20000, chunk=5000, generator=g)
    assert torch.allclose(iwae_b, truth, atol=0.01)
    assert (aux_b < truth - 0.05).all()
    # r = p(z): the aux bound misses log p(w) by exactly KL(p(z) || p(z|w)) > 0
    iwae_p, aux_p = importance_bounds(vae, w, PriorReverse(2), k=20000, chunk=5000,
                                      generator=g)
    kl = kl_prior_to_posterior(vae, w)
    assert kl.min() > 0.5
    assert torch.allclose(truth - aux_p, kl, rtol=0.05, atol=0.05)
    # a small K is a lower bound (in expectation) that is looser than a large K
    small = torch.stack([importance_bounds(vae, w, PriorReverse(2), k=2, generator=g)[0]
                         for _ in range(200)]).mean(0)
    assert (small < truth - 0.05).all()
    assert (iwae_p >= aux_p).all()


def test_importance_bounds_rejects_bad_k():
    vae = exact_linear_vae(3, 2, seed=0)
    with pytest.raises(DwpError):
        importance_bounds(vae, torch.zeros(2, 3, 3), vae.encoder, k=0)


def _bayes_net(seed: int = 0):
    from dwp.bayes import bayesianize
    from dwp.nets import FConvMNIST

    torch.manual_seed(seed)
    net = FConvMNIST((3, 4))
    priors = {"conv1": exact_linear_vae(7, 2, seed=1), "conv2": exact_linear_vae(5, 3, seed=2)}
    bayesianize(net, priors, init="prior", log_sigma2_init=-25.0,
                generator=torch.Generator().manual_seed(3))
    return net, priors


def test_model_gap_is_zero_with_exact_posterior_and_kl_with_prior_reverse():
    net, priors = _bayes_net()
    cfg = GapConfig(k=2000, max_kernels=6, seed=0)
    res = model_gap(net, cfg)
    assert list(res) == ["features.conv1", "features.conv2"]
    for name, r in res.items():
        vae = priors[name.rsplit(".", 1)[-1]]
        n_all = {"features.conv1": 3, "features.conv2": 12}[name]
        assert r["kernels"] == n_all and r["evaluated"] == min(6, n_all)
        # the layers' reverse models are copies of the exact posterior: no gap
        assert abs(r["gap_trained_r"]["per_kernel"]) < 1e-3
        # r = p(z): gap = E_q KL(p(z) || p(z|w)); q is nearly a point mass (log s^2 = -10)
        layer = net.get_submodule(name)
        mu = layer.kernels()[0].detach()
        sel = torch.randperm(n_all, generator=torch.Generator().manual_seed(r["seed"]))
        sel = sel[: r["evaluated"]].sort().values
        want = kl_prior_to_posterior(vae, mu[sel]).mean().item()
        assert r["gap_prior_r"]["per_kernel"] == pytest.approx(want, rel=0.05, abs=0.05)
        assert r["gap_prior_r"]["per_kernel"] > 0.5
        assert r["gap_prior_r"]["sum"] == pytest.approx(r["gap_prior_r"]["per_kernel"] * n_all)
        assert r["log_p_iwae"]["per_kernel"] == pytest.approx(
            exact_log_p(vae, mu[sel]).mean().item(), abs=0.02)


def test_experiment_gap_command_writes_table_and_resumes(tmp_path):
    from dwp.bnn_io import save_bnn
    from dwp.cli import main
    from dwp.priors import save_prior

    net, priors = _bayes_net()
    for name, p in priors.items():
        save_prior(p, tmp_path / "prior" / name)
    run = tmp_path / "bnn"
    save_bnn(net, run / "model.safetensors", method="dwp", widths=(3, 4), in_channels=1,
             num_classes=10)
    (run / "config.json").write_text(json.dumps({"config": {"prior_dir": str(tmp_path / "prior")}}))
    args = ["experiment", "gap", "--model", str(run), "--out", str(tmp_path / "gap"), "--k",
            "500", "--max-kernels", "4", "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    rec = json.loads((tmp_path / "gap" / "gap.json").read_text())
    assert [r["layer"] for r in rec["layers"]] == ["features.conv1", "features.conv2"]
    assert rec["total"]["gap_prior_r"]["sum"] > 1.0
    assert abs(rec["total"]["gap_trained_r"]["sum"]) < 0.05
    table = (tmp_path / "gap" / "gap.md").read_text()
    assert "| features.conv2 | 4 / 12 |" in table and "| total |" in table
    lines = (tmp_path / "gap" / "layers.jsonl").read_text().splitlines()
    assert main(args) == 0  # resumed: nothing recomputed
    assert (tmp_path / "gap" / "layers.jsonl").read_text().splitlines() == lines
    bad = ["experiment", "gap", "--model", str(run), "--out", str(tmp_path / "g1"), "--k", "0"]
    assert main(bad) == 2
    assert main(["experiment", "gap", "--model", str(tmp_path / "nothing"), "--out",
                 str(tmp_path / "g2")]) == 2
