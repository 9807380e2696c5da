"""Tests of dwp.init.init_from_prior and the paper's convolutional VAE (dwp.convvae)."""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from dwp.convvae import PAPER_PARAMETERS, ConvVAE, conv_vae_parameters, elbo
from dwp.init import init_from_prior
from dwp.priors.base import KernelPrior
from dwp.runtime import DwpError


class IndexPrior(KernelPrior):
    """Sample i of a call is the constant kernel ``offset + i`` (recognisable draws)."""

    family = "index"

    def __init__(self, kernel_size: int, offset: float = 0.0) -> None:
        super().__init__(kernel_size)
        self.offset = offset

    def sample(self, n, kernel_size=None, generator=None):
        k = self._resolve_k(kernel_size)
        vals = self.offset + torch.arange(n, dtype=torch.float32)
        return vals[:, None, None].expand(n, k, k).clone()


class ShiftedGaussian(KernelPrior):
    """N(loc, scale^2) per entry, drawn with the given generator."""

    family = "shifted"

    def __init__(self, kernel_size: int, loc: float, scale: float) -> None:
        super().__init__(kernel_size)
        self.loc, self.scale = loc, scale

    def sample(self, n, kernel_size=None, generator=None):
        k = self._resolve_k(kernel_size)
        dev = generator.device if generator is not None else None
        return self.loc + self.scale * torch.randn(n, k, k, generator=generator, device=dev)


def small_net(dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(2, 3, 7),
            bn=nn.BatchNorm2d(3),
            conv2=nn.Conv2d(3, 4, 5, bias=True),
            up=nn.ConvTranspose2d(4, 6, 5, stride=2),
            conv3=nn.Conv2d(6, 2, 3),
            pool=nn.AdaptiveAvgPool2d(1),
            flat=nn.Flatten(),
            fc=nn.Linear(2, 5),
        )
    )
    return net.to(dtype)


def snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_changes_exactly_the_targeted_kernels():
    net = small_net()
    before = snapshot(net)
    priors = {7: IndexPrior(7, offset=1000.0), 5: IndexPrior(5, offset=-500.0)}
    report = init_from_prior(net, priors, source="dwp", generator=0)
    after = snapshot(net)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"conv1.weight", "conv2.weight", "up.weight"}
    assert report.initialised == ["conv1", "conv2", "up"]
    assert report.skipped == [("conv3", "no prior for 3x3 kernels")]
    for k in before:
        assert after[k].shape == before[k].shape and after[k].dtype == before[k].dtype
    # each kernel slot holds one draw, in order: conv1 has 3 x 2 slots, up (ConvT) 4 x 6 slots
    assert torch.equal(net.conv1.weight.reshape(-1, 7, 7)[:, 0, 0], 1000.0 + torch.arange(6.0))
    assert torch.equal(net.conv2.weight.reshape(-1, 5, 5)[:, 2, 3], -500.0 + torch.arange(12.0))
    assert net.up.weight.shape == (4, 6, 5, 5)
    assert torch.equal(net.up.weight.reshape(-1, 5, 5)[:, 4, 4], -500.0 + torch.arange(24.0))
    assert [layer.n_kernels for layer in report.layers] == [6, 12, 24]


def test_include_bias_zeroes_only_initialised_layers():
    net = small_net()
    before = snapshot(net)
    init_from_prior(net, {7: IndexPrior(7)}, generator=0, include_bias=True)
    assert torch.count_nonzero(net.conv1.bias) == 0
    assert torch.equal(net.conv2.bias, before["conv2.bias"])
    assert torch.equal(net.fc.bias, before["fc.bias"])


def test_deterministic_for_a_seed_and_statistics_of_the_prior():
    prior = ShiftedGaussian(5, loc=3.0, scale=0.5)
    a, b, c = small_net(), small_net(), small_net()
    init_from_prior(a, prior, generator=123)
    init_from_prior(b, prior, generator=torch.Generator().manual_seed(123))
    init_from_prior(c, prior, generator=124)
    assert torch.equal(a.conv2.weight, b.conv2.weight) and torch.equal(a.up.weight, b.up.weight)
    assert not torch.equal(a.conv2.weight, c.conv2.weight)
    # a bigger layer: the kernels' statistics are the prior's
    big = nn.Conv2d(64, 64, 5)
    init_from_prior(big, prior, generator=1)
    w = big.weight.detach()
    assert abs(w.mean().item() - 3.0) < 0.01
    assert abs(w.std().item() - 0.5) < 0.01


def test_global_rng_used_without_generator():
    prior = ShiftedGaussian(5, loc=0.0, scale=1.0)
    nets = []
    for _ in range(2):
        torch.manual_seed(7)
        net = nn.Conv2d(3, 3, 5)
        init_from_prior(net, prior)
        nets.append(net.weight.detach().clone())
    assert torch.equal(nets[0], nets[1])


def test_keeps_dtype_float64_and_device():
    net = small_net(torch.float64)
    init_from_prior(net, ShiftedGaussian(7, 0.0, 1.0), generator=0)
    assert net.conv1.weight.dtype == torch.float64
    if torch.cuda.is_available():
        gpu = small_net().cuda()
        cpu = small_net()
        init_from_prior(gpu, ShiftedGaussian(7, 0.0, 1.0), generator=5)
        init_from_prior(cpu, ShiftedGaussian(7, 0.0, 1.0), generator=5)
        assert gpu.conv1.weight.is_cuda
        assert torch.equal(gpu.conv1.weight.cpu(), cpu.conv1.weight)


def test_filters_come_from_the_kernel_set(tmp_path):
    # kernel i is the constant i: every slot must hold one of them, all used about equally often
    kernels = torch.arange(10.0)[:, None, None].expand(10, 5, 5).contiguous()
    net = nn.Conv2d(40, 50, 5)
    report = init_from_prior(net, kernels, source="filters", generator=3)
    w = net.weight.detach().reshape(-1, 5, 5)
    assert torch.equal(w, w[:, :1, :1].expand_as(w))
    counts = torch.bincount(w[:, 0, 0].long(), minlength=10)
    assert counts.sum() == 2000 and counts.min() > 150  # expected 200 each
    assert report.layers[0].prior.startswith("kernel set")
    # a .npy file (N, 1, k, k) and a folder of kernel files work the same
    np.save(tmp_path / "conv2.npy", kernels[:, None].numpy())
    other = nn.Conv2d(40, 50, 5)
    init_from_prior(other, tmp_path / "conv2.npy", source="filters", generator=3)
    assert torch.equal(other.weight, net.weight)
    third = nn.Sequential(OrderedDict(conv2=nn.Conv2d(40, 50, 5)))
    init_from_prior(third, tmp_path, source="filters", generator=3)
    assert torch.equal(third.conv2.weight, net.weight)


def test_xavier_has_glorot_std():
    net = nn.Sequential(nn.Conv2d(32, 64, 5), nn.ConvTranspose2d(64, 16, 5), nn.Linear(3, 3))
    lin = net[2].weight.detach().clone()
    init_from_prior(net, source="xavier", generator=0)
    w = net[0].weight.detach()
    expected = math.sqrt(2.0 / (32 * 25 + 64 * 25))
    assert abs(w.std().item() / expected - 1) < 0.02 and abs(w.mean().item()) < 0.002
    # ConvTranspose2d weight (in=64, out=16, k, k): torch's fans are dim1*25 and dim0*25
    wt = net[1].weight.detach()
    assert abs(wt.std().item() / math.sqrt(2.0 / (16 * 25 + 64 * 25)) - 1) < 0.03
    assert torch.equal(net[2].weight, lin)


def test_name_match_and_explicit_mapping():
    net = small_net()
    by_name = {"conv1": IndexPrior(7, 100.0), "spare7": IndexPrior(7, 200.0)}
    init_from_prior(net, by_name, generator=0)
    assert net.conv1.weight.flatten()[0].item() == 100.0
    net = small_net()
    before = snapshot(net)
    report = init_from_prior(
        net, {"a": IndexPrior(5, 10.0), "b": IndexPrior(5, 20.0)}, mapping={"up": "b"}, generator=0
    )
    assert report.initialised == ["up"]
    assert net.up.weight.flatten()[0].item() == 20.0
    assert torch.equal(net.conv2.weight, before["conv2.weight"])
    init_from_prior(net, mapping={5: IndexPrior(5, 30.0)}, generator=0)
    assert net.conv2.weight.flatten()[0].item() == 30.0


def test_errors_are_clear():
    net = small_net()
    with pytest.raises(DwpError, match="kernel size matches no layer"):
        init_from_prior(net, mapping={"conv1": IndexPrior(5)})
    with pytest.raises(DwpError, match="no such conv layer"):
        init_from_prior(net, mapping={9: IndexPrior(9)})
    with pytest.raises(DwpError, match="not a Conv2d"):
        init_from_prior(net, mapping={"fc": IndexPrior(5)})
    with pytest.raises(DwpError, match="several priors"):
        init_from_prior(net, [IndexPrior(5), IndexPrior(5, 1.0)])
    with pytest.raises(DwpError, match="unknown init source"):
        init_from_prior(net, IndexPrior(5), source="kaiming")
    with pytest.raises(DwpError, match="no such prior"):
        init_from_prior(net, {"a": IndexPrior(5)}, mapping={"conv2": "b"})
    with pytest.raises(DwpError, match="not a KernelPrior"):
        init_from_prior(net, torch.zeros(3, 5, 5), source="dwp")


def test_conv_vae_parameters_and_shapes():
    vae = ConvVAE()
    n = sum(p.numel() for p in vae.parameters())
    assert n == conv_vae_parameters(vae.z_dim) == 1_642_909
    assert abs(n - PAPER_PARAMETERS) / PAPER_PARAMETERS < 1e-3
    x = (torch.rand(4, 1, 28, 28) > 0.5).float()
    logits, mu, logvar = vae(x)
    assert logits.shape == (4, 1, 28, 28) and mu.shape == logvar.shape == (4, vae.z_dim)
    assert vae.sample(3).shape == (3, 1, 28, 28)
    # the conv VAE's kernels are initialisable: 7x7 and 5x5 priors reach all five conv layers
    report = init_from_prior(vae, {7: IndexPrior(7), 5: IndexPrior(5)}, generator=0)
    assert len(report.layers) == 5 and not report.skipped


def test_elbo_matches_torch_distributions():
    torch.manual_seed(0)
    logits = torch.randn(3, 1, 28, 28)
    x = (torch.rand(3, 1, 28, 28) > 0.5).float()
    mu, logvar = torch.randn(3, 6), torch.randn(3, 6)
    bern = torch.distributions.Bernoulli(logits=logits).log_prob(x).flatten(1).sum(1)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(6), torch.ones(6))
    kl = torch.distributions.kl_divergence(q, p).sum(1)
    assert torch.allclose(elbo(logits, mu, logvar, x), bern - kl, atol=1e-4)
