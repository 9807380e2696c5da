"""Many Bayesian nets trained together equal the same nets trained one by one."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from dwp.bayes import BayesConv2d, BayesLinear, sampling
from dwp.bnn import train_bnn, train_deterministic
from dwp.bnn_batched import (
    pad_per_net,
    run_deterministic_cells,
    run_deterministic_seeds,
    train_bnn_batched,
    train_deterministic_batched,
)
from dwp.priors.gaussian import StandardNormal
from dwp.runtime import DwpError

pytestmark = pytest.mark.usefixtures("one_thread")



def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    prior = StandardNormal()
    return nn.Sequential(
        BayesConv2d(1, 3, 3, prior=prior, log_sigma2_init=-4.0), nn.LeakyReLU(0.01),
        nn.MaxPool2d(2), nn.Flatten(), BayesLinear(3 * 3 * 3, 4, prior=prior), nn.Linear(4, 3),
    )


@pytest.mark.parametrize("kernel_subsample", [None, 5])
def test_batched_equals_alone_in_deterministic_mode(kernel_subsample):
    """Also with a subsampled KL: the batched trainer draws the same kernel subsets from the
    same generator as each single run (the 108 1x1 kernels of the linear layer are subsampled,
    the 3 conv kernels are computed exactly)."""
    torch.manual_seed(0)
    m, n = 3, 12
    x = torch.randn(m, n, 1, 8, 8)
    y = torch.randint(0, 3, (m, n))
    alone = [_net(s) for s in range(m)]
    together = [copy.deepcopy(a) for a in alone]
    start = copy.deepcopy(alone[0][0].weight_mu)
    assert not torch.equal(alone[0][0].weight_mu, alone[1][0].weight_mu)
    for i, net in enumerate(alone):
        with sampling(net, "mean"):
            train_bnn(net, x[i], y[i], steps=10, lr=3e-2, kernel_subsample=kernel_subsample)
    for net in together:
        net[0].mode = net[4].mode = "mean"
    train_bnn_batched(together, x, y, steps=10, lr=3e-2, kernel_subsample=kernel_subsample)
    assert (alone[0][0].weight_mu - start).abs().max() > 0.05  # training moved the weights
    for a, b in zip(alone, together, strict=True):
        for (ka, pa), (kb, pb) in zip(a.state_dict().items(), b.state_dict().items(),
                                      strict=True):
            assert ka == kb
            assert torch.allclose(pa, pb, atol=2e-5, rtol=1e-4), ka


def test_padded_nets_train_as_alone_on_their_own_sets():
    """Nets with training sets of 12, 7 and 9 examples, padded to 12 and trained together
    (mean mode), end as each trained alone, full batch, on its own set."""
    torch.manual_seed(0)
    sizes = (12, 7, 9)
    xs = [torch.randn(k, 1, 8, 8) for k in sizes]
    ys = [torch.randint(0, 3, (k,)) for k in sizes]
    x, y, mask = pad_per_net(xs, ys)
    assert x.shape == (3, 12, 1, 8, 8) and mask.sum(1).tolist() == [12.0, 7.0, 9.0]
    assert torch.equal(x[1, 7:], xs[1][:1].expand(5, 1, 8, 8))  # padding: copies, masked out
    alone = [_net(s) for s in range(3)]
    together = [copy.deepcopy(a) for a in alone]
    for net, xi, yi in zip(alone, xs, ys, strict=True):
        with sampling(net, "mean"):
            train_bnn(net, xi, yi, steps=10, lr=3e-2)
    for net in together:
        net[0].mode = net[4].mode = "mean"
    train_bnn_batched(together, x, y, steps=10, lr=3e-2, mask=mask)
    for a, b in zip(alone, together, strict=True):
        for (ka, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(),
                                     strict=True):
            assert torch.allclose(pa, pb, atol=2e-5, rtol=1e-4), ka
    with pytest.raises(DwpError, match="full batch only"):
        train_bnn_batched(together, x, y, steps=1, batch_size=4, mask=mask)
    assert pad_per_net(xs[:1], ys[:1])[2] is None  # equal sizes: nothing padded


def test_batched_sampling_mode_trains():
    torch.manual_seed(1)
    x, y = torch.randn(20, 1, 8, 8), torch.randint(0, 3, (20,))
    nets = [_net(s) for s in range(4)]
    first = train_bnn_batched(nets, x, y, steps=1, lr=1e-2)
    last = train_bnn_batched(nets, x, y, steps=30, lr=3e-2)
    assert all(math.isfinite(v) for v in last["loss"])
    assert sum(last["loss"]) < sum(first["loss"])
    assert not torch.equal(nets[0][0].weight_mu, nets[1][0].weight_mu)


def test_cuda_graph_flag_on_cpu_trains_eagerly_with_the_same_result():
    """CUDA graphs exist on CUDA only: on CPU the flag is a no-op (``cuda_graph`` False in the
    result) and training equals the plain call; so is ``capturable_adam``. The GPU check is
    benchmarks/bnn_graph_check.py."""
    torch.manual_seed(0)
    x, y = torch.randn(2, 12, 1, 8, 8), torch.randint(0, 3, (2, 12))
    plain = [_net(s) for s in range(2)]
    for net in plain:
        net[0].mode = net[4].mode = "mean"
    flagged = copy.deepcopy(plain)
    capturable = copy.deepcopy(plain)
    a = train_bnn_batched(plain, x, y, steps=6, lr=3e-2, record_losses=True)
    b = train_bnn_batched(flagged, x, y, steps=6, lr=3e-2, cuda_graph=True, record_losses=True)
    c = train_bnn_batched(capturable, x, y, steps=6, lr=3e-2, capturable_adam=True,
                          record_losses=True)
    assert a["cuda_graph"] is False and b["cuda_graph"] is False
    assert a["history"].shape == (6, 2)
    torch.testing.assert_close(a["history"], b["history"])
    torch.testing.assert_close(a["history"], c["history"])
    assert a["history"][-1].sum() < a["history"][0].sum()
    for p, q in zip(plain[1].parameters(), flagged[1].parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_non_finite_loss_is_reported():
    torch.manual_seed(0)
    x, y = torch.randn(12, 1, 8, 8), torch.randint(0, 3, (12,))
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(DwpError, match="non-finite"):
        train_bnn_batched([_net(0)], x, y, steps=3, lr=1e-2)


def _plain_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.LeakyReLU(0.01), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(27, 3))


def test_deterministic_batched_equals_alone_with_its_own_weight_decay():
    torch.manual_seed(0)
    m, n = 3, 12
    x, y = torch.randn(m, n, 1, 8, 8), torch.randint(0, 3, (m, n))
    decays = [0.0, 1e-1, 1.0]
    alone = [_plain_net(0) for _ in range(m)]  # same start: only the decay differs
    together = [copy.deepcopy(a) for a in alone]
    for i, net in enumerate(alone):
        train_deterministic(net, x[i], y[i], steps=15, weight_decay=decays[i], lr=3e-2)
    out = train_deterministic_batched(together, x, y, steps=15, weight_decay=decays, lr=3e-2)
    assert len(out["loss"]) == m and all(math.isfinite(v) for v in out["loss"])
    w = [a[0].weight for a in alone]
    assert (w[0] - w[2]).abs().max() > 1e-3  # the decay made a difference...
    for a, b in zip(alone, together, strict=True):  # ...and each batched net got its own
        for (ka, pa), (kb, pb) in zip(a.state_dict().items(), b.state_dict().items(),
                                      strict=True):
            assert ka == kb
            assert torch.allclose(pa, pb, atol=2e-5, rtol=1e-4), ka
    with pytest.raises(DwpError, match="one value per model"):
        train_deterministic_batched(together, x, y, steps=1, weight_decay=[0.0])
    with pytest.raises(DwpError, match="ordinary nets"):
        train_deterministic_batched([_net(0)], x[0], y[0], steps=1, weight_decay=[0.0])


@pytest.mark.parametrize("sizes", [(30, 30), (30, 20)])
def test_deterministic_seeds_together_match_single_runs(data_root, sizes):
    """The whole baseline (weight decay chosen on a split of the N images, then the final net)
    for two seeds at once gives the single runs' choices and results; also when the two
    training sets differ in size (padded, each net's loss over its own examples)."""
    from dwp.bnn import run_classification
    from dwp.data import load_dataset

    train = load_dataset("mnist", "train", data_root)
    test = load_dataset("mnist", "test", data_root)
    test = test.subset(torch.arange(300))
    kw = {"train_data": train, "test_data": test, "steps": 40, "widths": (4, 8),
          "weight_decay_grid": (0.0, 1e-2, 3.0)}
    if sizes[0] == sizes[1]:
        together = run_deterministic_seeds(sizes[0], [0, 1], **kw)
    else:
        together = run_deterministic_cells(list(zip(sizes, (0, 1), strict=True)), **kw)
        assert all(r["padded_to"] == sizes[0] for r in together)
    for rec, n in zip(together, sizes, strict=True):
        assert rec["n"] == n
        single = run_classification("deterministic", n, rec["seed"], **kw)
        assert rec["weight_decay"] == single["weight_decay"]
        for a, b in zip(rec["validation"], single["validation"], strict=True):
            assert a["weight_decay"] == b["weight_decay"]
            assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=1e-9)
            assert a["val_nll"] == pytest.approx(b["val_nll"], rel=1e-3)
        assert rec["accuracy"] == pytest.approx(single["accuracy"], abs=2 / 300)
        assert rec["nll"] == pytest.approx(single["nll"], rel=1e-3)
        assert rec["final_train_loss"] == pytest.approx(single["final_train_loss"], rel=1e-3)
        assert rec["batched"] == 6 and rec["method"] == "deterministic"
    assert {r["weight_decay"] for r in together} != {3.0}  # a choice, not the largest decay



def _dwp_net(seed: int) -> nn.Module:
    """A net whose two 5x5 conv layers share one small (untrained) VAE prior, as the CIFAR
    nets' 5x5 layers do (the batched trainer must write such a shared module back once)."""
    from dwp.bayes import bayesianize
    from dwp.priors import KernelVAE

    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 3, 5), nn.LeakyReLU(0.01), nn.Conv2d(3, 4, 5),
                        nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    bayesianize(net, KernelVAE(5, hidden=4), init="prior", freeze_reverse=True)
    return net


def _autocast_seen(net: nn.Module) -> dict[str, set]:
    """Record whether CPU autocast is on when the second variational conv and the prior's
    decoder run."""
    seen: dict[str, set] = {"conv": set(), "prior": set()}
    net[2].register_forward_pre_hook(
        lambda m, a: seen["conv"].add(torch.is_autocast_enabled("cpu")))
    net[2].prior.decoder.register_forward_pre_hook(
        lambda m, a: seen["prior"].add(torch.is_autocast_enabled("cpu")))
    return seen


@pytest.mark.parametrize("batched", [False, True])
def test_bf16_autocasts_the_data_term_only(batched):
    """``precision="bf16"``: the net's forward pass runs under bfloat16 autocast, the auxiliary
    bound of the VAE prior does not; weights stay float32 and training ends close to the
    float32 run (bf16 rounds to 8 bits of mantissa)."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 12, 12), torch.randint(0, 3, (16,))
    runs = {}
    for precision in ("fp32", "bf16"):
        net = _dwp_net(0)
        seen = _autocast_seen(net)
        for layer in (net[0], net[2]):
            layer.mode = "mean"  # deterministic forward: the two runs differ by rounding only
        if batched:
            out = train_bnn_batched([net], x, y, steps=5, lr=1e-2, precision=precision,
                                    generator=torch.Generator().manual_seed(0))
        else:
            out = train_bnn(net, x, y, steps=5, lr=1e-2, precision=precision,
                            generator=torch.Generator().manual_seed(0))
        assert all(p.dtype == torch.float32 for p in net.parameters())
        runs[precision] = (net, seen, out)
    assert runs["fp32"][1] == {"conv": {False}, "prior": {False}}
    assert runs["bf16"][1] == {"conv": {True}, "prior": {False}}
    w0 = _dwp_net(0)[2].weight_mu
    w32, w16 = runs["fp32"][0][2].weight_mu, runs["bf16"][0][2].weight_mu
    assert not torch.equal(w32, w16)  # bf16 arithmetic really ran
    # Adam moves each weight by up to lr per step whatever the gradient's size, so compare
    # the typical disagreement with the typical move
    moved, apart = (w32 - w0).abs().mean(), (w16 - w32).abs().mean()
    assert moved > 0.01 and apart < 0.1 * moved, (moved, apart)


def test_bf16_deterministic_batched_matches_fp32_closely():
    torch.manual_seed(0)
    x, y = torch.randn(2, 16, 1, 8, 8), torch.randint(0, 3, (2, 16))

    def nets():
        torch.manual_seed(3)
        return [nn.Sequential(nn.Conv2d(1, 4, 3), nn.LeakyReLU(0.01), nn.Flatten(),
                              nn.Linear(4 * 6 * 6, 3)) for _ in range(2)]

    a, b = nets(), nets()
    ra = train_deterministic_batched(a, x, y, steps=10, weight_decay=[0.0, 1e-2], lr=1e-2)
    rb = train_deterministic_batched(b, x, y, steps=10, weight_decay=[0.0, 1e-2], lr=1e-2,
                                     precision="bf16")
    assert ra["loss"] != rb["loss"]
    assert ra["loss"] == pytest.approx(rb["loss"], abs=0.05)
    single32, single16 = nets()[0], nets()[0]
    for net, precision in ((single32, "fp32"), (single16, "bf16")):
        train_deterministic(net, x[0], y[0], steps=10, weight_decay=0.0, lr=1e-2,
                            precision=precision)
    assert not torch.equal(single32[0].weight, single16[0].weight)
    torch.testing.assert_close(single16[0].weight, single32[0].weight, atol=1e-2, rtol=0)
    torch.testing.assert_close(single32[0].weight, a[0][0].weight, atol=1e-5, rtol=1e-4)
    with pytest.raises(DwpError, match="precision must be one of fp32, tf32, bf16"):
        train_deterministic_batched(nets(), x, y, steps=1, weight_decay=[0.0, 0.0],
                                    precision="fp16")
