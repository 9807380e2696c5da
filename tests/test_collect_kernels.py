"""dwp collect-kernels: per-layer kernel sets, split by net, pruning, seeded cap, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dwp.batched import BatchedModel
from dwp.cli import main
from dwp.kernels import cap_indices, collect_kernels, flatten_kernels, split_nets
from dwp.kernelsets import as_kernels, find_layers, load_kernel_file
from dwp.nets import FConvMNIST, xavier_init_
from dwp.runtime import DwpError
from dwp.sourcenets import save_nets

N_NETS, W1, W2 = 6, 4, 5


def _factory():
    return xavier_init_(FConvMNIST((W1, W2)))


@pytest.fixture()
def run(tmp_path):
    """A finished source run folder of 6 tiny nets; net 2's conv1 kernel 0 is zeroed."""
    model = BatchedModel(_factory, list(range(N_NETS)))
    with torch.no_grad():
        model.params["features.conv1.weight"][2, 0] = 0.0
        model.params["features.conv2.weight"][:, :, 0] *= 1e-4  # in-channel 0: tiny kernels
    meta = {"arch": "fconv", "widths": [W1, W2], "in_channels": 1, "num_classes": 10,
            "seeds": model.seeds, "dataset": "notmnist", "mean_heldout_acc": 0.5}
    out = tmp_path / "run"
    out.mkdir()
    save_nets(out, model, meta)
    return out, model


def test_layers_split_by_net_and_prune(run, tmp_path):
    folder, model = run
    summary = collect_kernels(folder, tmp_path / "k", threshold=1e-3, cap=None, test_fraction=0.34)
    assert set(summary) == {"conv1", "conv2"}
    layers = find_layers(tmp_path / "k")
    assert set(layers) == {"conv1", "conv2"}
    for name in ("conv1", "conv2"):
        assert (tmp_path / "k" / f"{name}.png").stat().st_size > 1000
        meta = json.loads((tmp_path / "k" / f"{name}.json").read_text())
        t = load_file(str(tmp_path / "k" / f"{name}.safetensors"))
        k = 7 if name == "conv1" else 5
        assert t["train"].shape[1:] == (k, k) and t["test"].shape[1:] == (k, k)
        train_nets, test_nets = set(t["train_net"].tolist()), set(t["test_net"].tolist())
        assert not train_nets & test_nets
        assert train_nets | test_nets == set(range(N_NETS))
        assert set(meta["train"]["nets"]) == train_nets and len(meta["test"]["nets"]) == 2
        # every saved kernel is the real weight of the net it is attributed to, norm >= threshold
        w = model.params[f"features.{name}.weight"].detach()
        flat = {i: w[i].reshape(-1, k, k) for i in range(N_NETS)}
        for split in ("train", "test"):
            for kern, net in zip(t[split][:50], t[f"{split}_net"][:50], strict=True):
                assert (flat[int(net)] - kern).abs().flatten(1).amax(1).min() == 0
            assert (t[split].flatten(1).norm(dim=1) >= 1e-3).all()
    c1 = json.loads((tmp_path / "k" / "conv1.json").read_text())
    assert c1["count_total"] == N_NETS * W1 and c1["count_pruned"] == 1
    assert c1["kernel_size"] == [7, 7] and c1["threshold"] == 1e-3
    c2 = json.loads((tmp_path / "k" / "conv2.json").read_text())
    assert c2["count_total"] == N_NETS * W1 * W2 and c2["count_pruned"] == N_NETS * W2
    assert c2["train"]["count_after_pruning"] + c2["test"]["count_after_pruning"] == (
        N_NETS * W2 * (W1 - 1)
    )
    loaded = load_kernel_file(layers["conv2"])
    assert loaded["train"].shape[0] == c2["train"]["count_saved"]


def test_cap_subsamples_deterministically(run, tmp_path):
    folder, _ = run
    a = collect_kernels(folder, tmp_path / "a", cap=20, threshold=0.0, seed=3)
    collect_kernels(folder, tmp_path / "b", cap=20, threshold=0.0, seed=3)
    collect_kernels(folder, tmp_path / "c", cap=20, threshold=0.0, seed=4)
    ta = load_file(str(tmp_path / "a" / "conv2.safetensors"))
    tb = load_file(str(tmp_path / "b" / "conv2.safetensors"))
    tc = load_file(str(tmp_path / "c" / "conv2.safetensors"))
    assert ta["train"].shape[0] == 20 and a["conv2"]["train"]["count_saved"] == 20
    assert torch.equal(ta["train"], tb["train"]) and torch.equal(ta["train_net"], tb["train_net"])
    assert not torch.equal(ta["train"], tc["train"])
    idx = cap_indices(1000, 100, seed=1)
    assert torch.equal(idx, cap_indices(1000, 100, seed=1)) and idx.unique().numel() == 100
    assert torch.equal(cap_indices(50, 100, seed=1), torch.arange(50))


def test_split_nets_never_shares_a_net():
    for n in (2, 3, 10, 100):
        train, test = split_nets(n, 0.1, seed=0)
        assert not set(train) & set(test) and sorted(train + test) == list(range(n))
        assert len(test) == max(1, round(0.1 * n))
    assert split_nets(1, 0.1, 0) == ([0], [])
    assert split_nets(10, 0.1, 0) != split_nets(10, 0.1, 1)


def test_flatten_kernels_layout():
    w = torch.arange(2 * 3 * 4 * 5 * 5, dtype=torch.float32).reshape(2, 3, 4, 5, 5)
    k, nets = flatten_kernels(w)
    assert k.shape == (24, 5, 5) and torch.equal(k[13], w[1, 0, 1])
    assert nets.tolist() == [0] * 12 + [1] * 12
    with pytest.raises(DwpError, match="shape"):
        flatten_kernels(w[0])


def test_bad_inputs_give_clear_errors(tmp_path, run, capsys):
    with pytest.raises(DwpError, match="does not exist"):
        collect_kernels(tmp_path / "nope", tmp_path / "k")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    (partial / "checkpoint.safetensors").write_bytes(b"")
    with pytest.raises(DwpError, match="incomplete.*rerun"):
        collect_kernels(partial, tmp_path / "k")
    assert not (tmp_path / "k").exists()
    folder, _ = run
    with pytest.raises(DwpError, match="unknown layers"):
        collect_kernels(folder, tmp_path / "k2", layers=["conv9"])
    with pytest.raises(DwpError, match="lower --threshold"):
        collect_kernels(folder, tmp_path / "k3", threshold=1e6)
    assert not (tmp_path / "k3").exists()  # no half-written kernel set
    with pytest.raises(DwpError, match="shape"):
        as_kernels(np.zeros((10, 5)))
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((4, 2, 5, 5), dtype=np.float32))
    with pytest.raises(DwpError, match="shape"):
        load_kernel_file(bad)
    assert main(["collect-kernels", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_out_must_be_new_empty_or_a_kernel_set(run, tmp_path, capsys):
    folder, _ = run
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(DwpError, match="not kernel sets.*choose a new --out"):
        collect_kernels(folder, folder)  # into the source run itself
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written
    k = tmp_path / "k"
    collect_kernels(folder, k, threshold=0.0)
    collect_kernels(folder, k, threshold=0.0, cap=5)  # rewriting a kernel set is fine
    assert load_kernel_file(k / "conv2.safetensors")["train"].shape[0] == 5
    (k / "notes.txt").write_text("mine")
    (k / "other.json").write_text('{"kind": "something else"}')
    with pytest.raises(DwpError, match=r"\(notes.txt, other.json\)"):
        collect_kernels(folder, k, threshold=0.0)
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["collect-kernels", str(folder), "--out", str(afile)]) == 2
    assert "is a file" in capsys.readouterr().err
    empty = tmp_path / "empty"
    (empty / ".hidden").mkdir(parents=True)  # hidden entries do not count
    assert set(collect_kernels(folder, empty, threshold=0.0)) == {"conv1", "conv2"}


def test_cli_collect_kernels(run, tmp_path, capsys):
    folder, _ = run
    code = main(["collect-kernels", str(folder), "--out", str(tmp_path / "k"), "--cap", "7",
                 "--layer", "conv2", "--threshold", "0"])
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == [
        "conv2.json", "conv2.png", "conv2.safetensors"]
    assert load_kernel_file(tmp_path / "k" / "conv2.safetensors")["train"].shape == (7, 5, 5)
    assert "conv2 5x5" in capsys.readouterr().out


def test_roughness_and_principal_variance_on_known_kernels():
    from dwp.kernels import principal_variance, roughness

    g = torch.Generator().manual_seed(0)
    noise = torch.randn(20000, 5, 5, generator=g)
    assert roughness(noise) == pytest.approx(3.2, rel=0.02)  # 4 (k - 1) / k
    assert roughness(torch.ones(3, 7, 7)) == 0.0
    ramp = torch.arange(5.0).expand(5, 5)  # one unit step per column: 20 / sum of squares
    assert roughness(ramp[None]) == pytest.approx(20 / ramp.square().sum().item())
    pv = principal_variance(noise)
    assert pv["top4"] == pytest.approx(4 / 25, abs=0.02) and pv["top8"] > pv["top4"]
    # kernels spanned by two fixed patterns: all variance in the top 2 directions
    basis = torch.randn(2, 25, generator=g)
    low_rank = (torch.randn(500, 2, generator=g) @ basis).reshape(500, 5, 5)
    assert principal_variance(low_rank, ranks=(2,))["top2"] == pytest.approx(1.0)
