"""A source series split across runs (--first-net) and its kernel sets merged (merge-kernels)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from dwp.batched import BatchedModel
from dwp.cli import main
from dwp.kernelmerge import merge_kernel_sets, proportional_quota
from dwp.kernels import collect_kernels
from dwp.nets import FConvMNIST, xavier_init_
from dwp.runtime import DwpError, mix_seed
from dwp.sourcenets import SourceConfig, save_nets, train_source_nets

W1, W2 = 4, 5
CONFIG = {"dataset": "notmnist", "arch": "fconv", "widths": [W1, W2], "epochs": 3, "l2": 1e-3,
          "seed": 0, "device": "cpu"}


def _factory():
    return xavier_init_(FConvMNIST((W1, W2)))


def _save_run(folder, first, count, config=None):
    """A finished source run holding nets ``first .. first + count - 1`` of the series."""
    index = list(range(first, first + count))
    model = BatchedModel(_factory, [mix_seed(0, i) for i in index])
    cfg = {**CONFIG, **(config or {}), "nets": count}
    if first:
        cfg["first_net"] = first
    meta = {"arch": "fconv", "widths": [W1, W2], "in_channels": 1, "num_classes": 10,
            "seeds": model.seeds, "dataset": "notmnist", "mean_heldout_acc": 0.5 + first / 100,
            "net_index": index, "first_net": first, "config": cfg}
    folder.mkdir()
    save_nets(folder, model, meta)
    return model


@pytest.fixture()
def halves(tmp_path):
    """Kernel sets of nets 0-4 and 5-9 of one series, and the 10 nets' conv weights by id."""
    weights = {}
    for name, first in (("a", 0), ("b", 5)):
        model = _save_run(tmp_path / f"run-{name}", first, 5)
        collect_kernels(tmp_path / f"run-{name}", tmp_path / f"k-{name}", threshold=0.0,
                        cap=None, test_fraction=0.2)
        for layer in ("conv1", "conv2"):
            w = model.params[f"features.{layer}.weight"].detach()
            for j in range(5):
                weights[(layer, first + j)] = w[j].reshape(-1, *w.shape[-2:])
    return tmp_path / "k-a", tmp_path / "k-b", weights


def test_proportional_quota():
    assert proportional_quota([10, 20], [10, 20], 100) == [10, 20]  # all fit
    assert proportional_quota([100, 300], [100, 300], 40) == [10, 30]
    q = proportional_quota([50, 50, 50], [1, 1, 1], 100)
    assert sum(q) == 100 and max(q) - min(q) <= 1
    # a part capped below its share gives what it has; the rest goes to the others
    assert proportional_quota([5, 1000], [500, 500], 100) == [5, 95]
    for avail, weights, cap in (([7, 3, 9], [70, 30, 90], 11), ([0, 4, 4], [0, 1, 3], 5)):
        q = proportional_quota(avail, weights, cap)
        assert sum(q) == min(cap, sum(avail)) and all(x <= a for x, a in zip(q, avail, strict=True))


def test_first_net_trains_the_same_nets_as_the_whole_series(tmp_path, data_root):
    def cfg(**kw):
        return SourceConfig(dataset="notmnist", widths=[3, 4], epochs=2, batch_size=50,
                            train_examples=100, data_root=str(data_root), device="cpu",
                            progress=False, chunk_size="1", **kw)

    train_source_nets(cfg(nets=3), tmp_path / "whole")
    meta = train_source_nets(cfg(nets=2, first_net=1), tmp_path / "tail")
    whole = load_file(str(tmp_path / "whole" / "nets.safetensors"))
    tail = load_file(str(tmp_path / "tail" / "nets.safetensors"))
    for key in whole:
        torch.testing.assert_close(tail[key], whole[key][1:], rtol=0, atol=1e-6, msg=key)
    assert meta["net_index"] == [1, 2] and meta["first_net"] == 1
    assert json.loads((tmp_path / "tail" / "config.json").read_text())["config"]["first_net"] == 1
    assert "first_net" not in cfg(nets=3).resolved().record()  # older run folders still resume
    with pytest.raises(DwpError, match="first-net"):
        cfg(nets=2, first_net=-1).resolved()
    # the kernel set names nets by their index in the series
    collect_kernels(tmp_path / "tail", tmp_path / "k", threshold=0.0, test_fraction=0.5)
    t = load_file(str(tmp_path / "k" / "conv1.safetensors"))
    assert set(t["train_net"].tolist()) | set(t["test_net"].tolist()) == {1, 2}


def test_merge_keeps_every_kernel_once_with_its_net(halves, tmp_path):
    a, b, weights = halves
    summary = merge_kernel_sets([a, b], tmp_path / "m", cap=None)
    for layer in ("conv1", "conv2"):
        t = load_file(str(tmp_path / "m" / f"{layer}.safetensors"))
        rec = json.loads((tmp_path / "m" / f"{layer}.json").read_text())
        assert rec == json.loads(json.dumps(summary[layer]))
        train, test = set(t["train_net"].tolist()), set(t["test_net"].tolist())
        assert not train & test and train | test == set(range(10))
        assert set(rec["train"]["nets"]) == train and len(rec["test"]["nets"]) == 2
        per_net = W1 if layer == "conv1" else W1 * W2
        assert rec["count_total"] == 10 * per_net and rec["source_nets"] == 10
        assert t["train"].shape[0] + t["test"].shape[0] == 10 * per_net
        for split in ("train", "test"):  # each kernel is a kernel of the net it names
            for kern, net in zip(t[split], t[f"{split}_net"], strict=True):
                assert (weights[(layer, int(net))] - kern).abs().flatten(1).amax(1).min() == 0
        assert rec["source_mean_heldout_acc"] == pytest.approx((0.5 * 5 + 0.55 * 5) / 10)
        assert len(rec["parts"]) == 2 and rec["norms_saved"]["max"] > 0
        assert (tmp_path / "m" / f"{layer}.png").stat().st_size > 1000


def test_merge_cap_is_proportional_and_seeded(halves, tmp_path):
    a, b, _ = halves
    one = merge_kernel_sets([a, b], tmp_path / "m1", cap=40, seed=1)
    merge_kernel_sets([a, b], tmp_path / "m2", cap=40, seed=1)
    merge_kernel_sets([a, b], tmp_path / "m3", cap=40, seed=2)
    t1, t2, t3 = (load_file(str(tmp_path / m / "conv2.safetensors")) for m in ("m1", "m2", "m3"))
    assert t1["train"].shape[0] == 40 and one["conv2"]["train"]["saved_per_part"] == [20, 20]
    assert torch.equal(t1["train"], t2["train"]) and torch.equal(t1["test_net"], t2["test_net"])
    assert not torch.equal(t1["train"], t3["train"])
    assert one["conv1"]["train"]["count_saved"] == 32  # 2 x 4 nets x 4 kernels: under the cap


def test_merge_refuses_what_is_not_one_series(halves, tmp_path, capsys):
    a, b, _ = halves
    with pytest.raises(DwpError, match="share source nets.*first-net"):
        merge_kernel_sets([a, a], tmp_path / "m")
    with pytest.raises(DwpError, match="at least two"):
        merge_kernel_sets([a], tmp_path / "m")
    with pytest.raises(DwpError, match="is one of the kernel sets"):
        merge_kernel_sets([a, b], a)
    _save_run(tmp_path / "run-c", 10, 2, config={"l2": 1e-2})
    collect_kernels(tmp_path / "run-c", tmp_path / "k-c", threshold=0.0)
    with pytest.raises(DwpError, match=r"different settings \(l2\)"):
        merge_kernel_sets([a, tmp_path / "k-c"], tmp_path / "m")
    _save_run(tmp_path / "run-d", 10, 2)
    collect_kernels(tmp_path / "run-d", tmp_path / "k-d", threshold=0.5)
    with pytest.raises(DwpError, match="differ in threshold"):
        merge_kernel_sets([a, tmp_path / "k-d"], tmp_path / "m")
    (tmp_path / "k-e").mkdir()
    (tmp_path / "k-e" / "conv1.safetensors").write_bytes((a / "conv1.safetensors").read_bytes())
    with pytest.raises(DwpError, match="no kernel-set metadata"):
        merge_kernel_sets([a, tmp_path / "k-e"], tmp_path / "m")
    assert not (tmp_path / "m").exists()  # nothing written on refusal
    with pytest.raises(DwpError, match="not kernel sets"):
        merge_kernel_sets([a, b], tmp_path / "run-c")  # a source run folder
    assert main(["merge-kernels", str(a), str(a), "--out", str(tmp_path / "m")]) == 2
    assert "share source nets" in capsys.readouterr().err
    assert main(["merge-kernels", str(a), str(b), "--out", str(tmp_path / "m"), "--cap", "0"]) == 0
    assert "10 nets" in capsys.readouterr().out
