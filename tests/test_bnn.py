"""Training loops of the Bayesian CNN and its baseline, metrics, and the train-bnn command."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from dwp.bayes import bayesianize
from dwp.bnn import resolve_batch_size, stratified_holdout, train_bnn, train_deterministic
from dwp.metrics import accuracy, ece, ensemble, nll
from dwp.priors.gaussian import StandardNormal
from dwp.priorspec import canonical_method
from dwp.runtime import DwpError

pytestmark = pytest.mark.usefixtures("one_thread")



def test_metrics_known_values():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.8, 0.2]])
    labels = torch.tensor([0, 1, 1, 0])
    assert accuracy(probs, labels) == pytest.approx(0.75)
    assert nll(probs, labels) == pytest.approx(
        -(math.log(0.9) + math.log(0.4) + math.log(0.7) + math.log(0.8)) / 4)
    # 15 bins: confidences 0.9, 0.6, 0.7, 0.8 fall in 4 different bins
    # |1-.9| + |0-.6| + |1-.7| + |1-.8| over 4
    assert ece(probs, labels) == pytest.approx((0.1 + 0.6 + 0.3 + 0.2) / 4)
    # perfectly calibrated in one bin: 2 of 4 right at confidence 0.5 -> 0 (ties pick class 0)
    half = torch.full((4, 2), 0.5)
    assert ece(half, torch.tensor([0, 0, 1, 1])) == pytest.approx(0.0)
    assert torch.allclose(ensemble([probs, probs.flip(1)]), torch.full((4, 2), 0.5))
    with pytest.raises(DwpError):
        accuracy(probs, labels[:3])


def test_batch_size_and_method_names():
    assert resolve_batch_size(50, None) == 50
    assert resolve_batch_size(5000, None) == 256
    assert resolve_batch_size(50, 500) == 50
    assert canonical_method("sn") == "standard-normal"
    assert canonical_method("mvn") == "fitted-gaussian"
    with pytest.raises(DwpError, match="unknown prior"):
        canonical_method("gauss")


def test_stratified_holdout_keeps_every_class_in_both_parts():
    labels = torch.arange(10).repeat_interleave(5)
    tr, va = stratified_holdout(labels, 0.2, torch.Generator().manual_seed(0))
    assert len(va) == 10 and len(tr) == 40
    assert set(tr.tolist()).isdisjoint(va.tolist())
    assert labels[va].bincount().tolist() == [1] * 10


@pytest.fixture(scope="module")
def mnist50(data_root):
    from dwp.data import class_balanced_subset, load_dataset

    train = load_dataset("mnist", "train", data_root)
    idx = class_balanced_subset(train.labels, 50, seed=0)
    return train.images[idx], train.labels[idx]


def test_bnn_loss_is_finite_and_decreases_on_50_mnist_images(mnist50):
    from dwp.nets import FConvMNIST

    x, y = mnist50
    torch.manual_seed(0)
    net = FConvMNIST((8, 16))
    bayesianize(net, StandardNormal())
    hist = train_bnn(net, x, y, steps=200, log_every=50,
                     generator=torch.Generator().manual_seed(0))
    loss, data_nll = hist["loss"], hist["nll"]
    assert all(math.isfinite(v) for v in loss)
    assert loss[-1] < loss[0]
    assert data_nll[-1] < 0.5 * data_nll[0]  # it fits the 50 images
    assert hist["kl"][-1] < hist["kl"][0]  # sigma grows away from exp(-10)


def test_deterministic_training_fits(mnist50):
    from dwp.nets import FConvMNIST

    x, y = mnist50
    torch.manual_seed(0)
    net = FConvMNIST((8, 16))
    with torch.no_grad():
        before = nn.functional.cross_entropy(net(x), y).item()
    hist = train_deterministic(net, x, y, steps=100, weight_decay=1e-3)
    assert hist["loss"] < 0.5 * before


def test_train_bnn_command_writes_metrics(tmp_path, data_root):
    from dwp.cli import main

    out = tmp_path / "run"
    args = ["train-bnn", "--out", str(out), "--prior", "sn", "--n", "20", "--steps", "3",
            "--ensemble", "2", "--device", "cpu", "--data-root", str(data_root),
            "--test-examples", "500",
            "--no-progress"]
    assert main(args) == 0
    rec = json.loads((out / "metrics.json").read_text())
    assert rec["method"] == "standard-normal" and rec["n"] == 20 and rec["steps"] == 3
    for k in ("accuracy", "nll", "ece", "seconds", "device"):
        assert k in rec
    assert 0.0 <= rec["accuracy"] <= 1.0 and rec["test_examples"] == 500
    assert not (out / "checkpoints").exists()  # removed once metrics.json is written
    assert main(args) == 0  # rerun: done, nothing retrained
    assert main(["train-bnn", "--out", str(tmp_path / "b"), "--prior", "dwp",
                 "--data-root", str(data_root)]) == 2  # no --prior-dir
    bad = tmp_path / "c"
    assert main([*args[:1], "--out", str(bad), *args[3:], "--init", "prior-mean"]) == 2
    assert not bad.exists()  # sn has no decoder means: refused before anything is written
    assert main([*args[:1], "--out", str(bad), *args[3:], "--conv-impl", "fast"]) == 2
    assert not bad.exists()
    n_at = args.index("--n") + 1
    for n in ("25", "0", "70000"):  # not a multiple of 10 classes / too many per class
        assert main([*args[:1], "--out", str(bad), *args[3:n_at], n, *args[n_at + 1:]]) == 2
        assert not bad.exists()
    for flag, value in (("--ensemble", "0"), ("--lr", "-1"), ("--batch-size", "0"),
                        ("--test-examples", "0"), ("--kernel-subsample", "0"),
                        ("--precision", "fp16")):
        assert main([*args[:1], "--out", str(bad), *args[3:], flag, value]) == 2
        assert not bad.exists()
    assert rec["conv_impl"] == "mixed"  # recorded with the run


def test_summary_table_and_plot(tmp_path):
    from dwp.experiments.classification import plot_accuracy, summary_table

    rows = [{"method": "dwp", "n": 50, "seed": s, "accuracy": a} for s, a in [(0, .8), (1, .7)]]
    rows += [{"method": "standard-normal", "n": 50, "seed": 0, "accuracy": 0.6}]
    table = summary_table(rows)
    assert "| dwp | 0.750 ± 0.071 (2) (paper 0.800) |" in table
    assert "| standard-normal | 0.600 ± 0.000 (1) (paper 0.717) |" in table
    plot_accuracy(rows, tmp_path / "acc.png")
    assert (tmp_path / "acc.png").stat().st_size > 1000


def test_calibration_table_means_nll_and_ece_over_full_records():
    from dwp.experiments.classification import calibration_table

    rows = [{"method": "log-uniform", "n": 50, "seed": 0, "accuracy": .7, "nll": 1.0, "ece": .10},
            {"method": "log-uniform", "n": 50, "seed": 1, "accuracy": .7, "nll": 2.0, "ece": .30},
            {"method": "log-uniform", "n": 100, "seed": 0, "accuracy": .8},  # accuracy only
            {"method": "dwp", "n": 100, "seed": 0, "accuracy": .8, "nll": 0.5, "ece": .05}]
    lines = calibration_table(rows).splitlines()
    assert lines[0] == "| method (test NLL / ECE) | N=50 | N=100 |"
    # METHODS order: dwp before log-uniform; log-uniform's N = 100 row has no NLL, so '-'
    assert lines[2] == "| dwp | - | 0.500 / 0.050 (1) |"
    assert lines[3] == "| log-uniform | 1.500 / 0.200 (2) | - |"
    assert calibration_table(rows, methods=["log-uniform"]).splitlines()[2:] == [lines[3]]
    assert calibration_table([rows[2]]) == ""


def test_paired_table_pairs_by_seed():
    from dwp.experiments.classification import paired_differences, paired_table

    acc = {("dwp", 0): .80, ("dwp", 1): .70, ("dwp", 2): .75,
           ("log-uniform", 0): .78, ("log-uniform", 1): .71, ("log-uniform", 2): .70}
    rows = [{"method": m, "n": 50, "seed": s, "accuracy": a} for (m, s), a in acc.items()]
    rows.append({"method": "dwp", "n": 50, "seed": 0, "accuracy": 0.1})  # a rerun: first counts
    rows.append({"method": "standard-normal", "n": 100, "seed": 0, "accuracy": 0.9})  # no dwp
    # by hand: diffs +0.02, -0.01, +0.05; mean 0.02, sd 0.03, t = 0.02 / (0.03 / sqrt 3) = 1.15
    # (paired_differences' values and its one-seed case: tests/test_steps_table_script.py)
    assert paired_differences({0: .5}, {1: .4})["mean"] is None  # no shared seed
    table = paired_table(rows)
    assert "| dwp − log-uniform | +0.020 (t +1.2, ahead 2/3) |" in table
    assert "standard-normal" not in table and "deterministic" not in table  # no shared seed
    assert paired_table([r for r in rows if r["method"] != "log-uniform"]) == ""


def test_experiment_classification_resumes(tmp_path, data_root):
    from dwp.cli import main
    from dwp.runtime import read_jsonl

    base = ["experiment", "classification", "--out", str(tmp_path), "--sizes", "20",
            "--steps", "2", "--ensemble", "1", "--test-examples", "100", "--device", "cpu",
            "--data-root", str(data_root), "--no-progress", "--note", "test"]
    assert main([*base, "--methods", "sn", "--seeds", "0"]) == 0
    assert main([*base, "--methods", "sn,det", "--seeds", "0"]) == 0
    rows = read_jsonl(tmp_path / "results.jsonl")
    keys = sorted((r["method"], r["seed"]) for r in rows)
    assert keys == [("deterministic", 0), ("standard-normal", 0)]  # sn/0 was not repeated
    assert all(r["note"] == "test" and r["test_examples"] == 100 for r in rows)
    assert (tmp_path / "accuracy.png").exists()
    summary = (tmp_path / "summary.md").read_text()
    assert "| standard-normal | 0." in summary and "(test NLL / ECE)" in summary
    assert not (tmp_path / "checkpoints").exists()  # resume files and their folder removed
    fresh = [*base[:2], "--out", str(tmp_path / "new"), *base[4:]]
    sizes_at = fresh.index("--sizes") + 1
    fresh[sizes_at] = "20,25"  # 25 is no multiple of the 10 classes
    assert main([*fresh, "--methods", "sn", "--seeds", "0"]) == 2
    assert not (tmp_path / "new").exists()  # refused before the folder is made


@pytest.mark.parametrize(("freeze", "init"), [(False, None), (True, "prior-mean")])
def test_train_bnn_command_with_saved_vae_priors(tmp_path, data_root, freeze, init):
    from dwp.cli import main
    from dwp.priors import KernelVAE, save_prior

    torch.manual_seed(0)
    for name, k in (("conv1", 7), ("conv2", 5)):
        save_prior(KernelVAE(k), tmp_path / "prior" / name)
    out = tmp_path / "run"
    args = ["train-bnn", "--out", str(out), "--prior", "dwp", "--prior-dir",
            str(tmp_path / "prior"), "--n", "20", "--steps", "2", "--kernel-subsample", "16",
            "--ensemble", "2", "--test-examples", "200", "--device", "cpu",
            "--data-root", str(data_root), "--no-progress"]
    if freeze:
        args.append("--freeze-reverse")
    if init:
        args += ["--init", init]
    assert main(args) == 0
    rec = json.loads((out / "metrics.json").read_text())
    assert rec["method"] == "dwp" and rec["init"] == (init or "prior")
    assert rec["freeze_reverse"] is freeze
    assert [(r["layer"], r["prior"]) for r in rec["layers"]] == [
        ("features.conv1", "vae"), ("features.conv2", "vae")]
    assert math.isfinite(rec["final_kl"]) and 0.0 <= rec["accuracy"] <= 1.0


@pytest.mark.parametrize("freeze", [False, True])
def test_train_bnn_saves_model_that_reloads(tmp_path, data_root, freeze):
    from dwp.bayes import bayes_layers, sampling
    from dwp.bnn_io import load_bnn
    from dwp.cli import main
    from dwp.data import load_dataset
    from dwp.priors import KernelVAE, save_prior
    from dwp.priorspec import resolve_priors

    torch.manual_seed(0)
    for name, k in (("conv1", 7), ("conv2", 5)):
        save_prior(KernelVAE(k, hidden=8), tmp_path / "prior" / name)
    out = tmp_path / "run"
    args = ["train-bnn", "--out", str(out), "--prior", "dwp", "--prior-dir",
            str(tmp_path / "prior"), "--n", "20", "--steps", "3", "--kernel-subsample", "8",
            "--ensemble", "1", "--test-examples", "50", "--device", "cpu", "--lr", "1e-2",
            "--data-root", str(data_root), "--no-progress"]
    assert main([*args, "--freeze-reverse"] if freeze else args) == 0
    priors = resolve_priors("dwp", tmp_path / "prior")
    model, meta = load_bnn(out / "model.safetensors", priors)
    assert meta["method"] == "dwp" and json.loads(meta["widths"]) == [32, 128]
    layers = dict(bayes_layers(model))
    assert set(layers) == {"features.conv1", "features.conv2"}
    for name, layer in layers.items():
        # trained: means moved away from any fresh init, log-variances from their -10 start
        assert not torch.all(layer.log_sigma2 == -10.0)
        enc = priors[name.rsplit(".", 1)[-1]].encoder.state_dict()
        same = all(torch.equal(v, enc[k]) for k, v in layer.reverse.state_dict().items())
        assert same is freeze  # a trained reverse model was saved, a frozen one is the encoder
    x = load_dataset("mnist", "test", data_root).images[:8]
    again, _ = load_bnn(out / "model.safetensors", priors)
    with sampling(model, "mean"), sampling(again, "mean"):
        assert torch.equal(model(x), again(x))
    with pytest.raises(DwpError):
        load_bnn(out / "model.safetensors", None)
    with pytest.raises(DwpError):
        load_bnn(tmp_path / "missing.safetensors", priors)


def test_log_uniform_uses_truncated_alpha_posterior_and_reloads(tmp_path, data_root):
    from dwp.bayes import bayes_layers, sampling
    from dwp.bnn_io import load_bnn
    from dwp.cli import main
    from dwp.data import load_dataset
    from dwp.priorspec import resolve_priors

    out = tmp_path / "run"
    args = ["train-bnn", "--out", str(out), "--prior", "lu", "--n", "20", "--steps", "3",
            "--ensemble", "1", "--test-examples", "50", "--device", "cpu",
            "--data-root", str(data_root), "--no-progress"]
    assert main(args) == 0
    rec = json.loads((out / "metrics.json").read_text())
    assert rec["method"] == "log-uniform" and rec["posterior"] == "truncated-alpha"
    model, meta = load_bnn(out / "model.safetensors", resolve_priors("lu"))
    assert meta["posterior"] == "truncated-alpha"
    layers = dict(bayes_layers(model))
    assert all(lay.posterior == "truncated-alpha" for lay in layers.values())
    assert not torch.all(layers["features.conv1"].alpha_logit == -2.0)  # trained, then saved
    x = load_dataset("mnist", "test", data_root).images[:4]
    again, _ = load_bnn(out / "model.safetensors", resolve_priors("lu"))
    with sampling(model, "mean"), sampling(again, "mean"):
        assert torch.equal(model(x), again(x))
    assert main([*args[:-1], "--out", str(tmp_path / "g"), "--posterior", "gaussian",
                 "--no-progress"]) == 0
    assert json.loads((tmp_path / "g" / "metrics.json").read_text())["posterior"] == "gaussian"
    assert main([*args[:-1], "--out", str(tmp_path / "b"), "--posterior", "alpha"]) == 2


def test_experiment_classification_batches_seeds(tmp_path, data_root):
    """With --batch-seeds the seeds of a cell train together and are recorded apart."""
    from dwp.cli import main
    from dwp.runtime import read_jsonl

    base = ["experiment", "classification", "--out", str(tmp_path), "--sizes", "20",
            "--steps", "3", "--ensemble", "2", "--test-examples", "100", "--device", "cpu",
            "--data-root", str(data_root), "--no-progress"]
    assert main([*base, "--methods", "sn,lu,det", "--seeds", "0-2", "--batch-seeds",
                 "--cuda-graph"]) == 0  # no CUDA here: the flag falls back to eager steps
    # sizes 20 and 40 of a method in one training (padded to 40)
    mixed = [*base[:2], "--out", str(tmp_path / "mixed"), *base[4:]]
    mixed[mixed.index("--sizes") + 1] = "20,40"
    assert main([*mixed, "--methods", "sn,det", "--seeds", "3", "--batch-seeds",
                 "--batch-sizes-up-to", "40"]) == 0
    small = read_jsonl(tmp_path / "mixed" / "results.jsonl")
    assert sorted((r["method"], r["n"]) for r in small) == [
        ("deterministic", 20), ("deterministic", 40), ("standard-normal", 20),
        ("standard-normal", 40)]
    assert all(r["padded_to"] == 40 for r in small)
    assert {r["batched"] for r in small if r["method"] == "standard-normal"} == {2}
    assert {r["batched"] for r in small if r["method"] == "deterministic"} == {8}
    rows = read_jsonl(tmp_path / "results.jsonl")
    assert all(r["cuda_graph"] is False for r in rows)
    assert sorted((r["method"], r["seed"]) for r in rows) == [
        (m, s) for m in ("deterministic", "log-uniform", "standard-normal") for s in range(3)]
    det = [r for r in rows if r["method"] == "deterministic"]
    assert all(r["batched"] == 12 and r["weight_decay"] in (0.0, 1e-4, 1e-3, 1e-2)
               for r in det)  # 3 seeds x 4 decays trained together, then the 3 final nets
    rows = [r for r in rows if r["method"] != "deterministic"]
    assert all(r["batched"] == 3 for r in rows)
    lu = [r for r in rows if r["method"] == "log-uniform"]
    assert all(r["posterior"] == "truncated-alpha" for r in lu)
    assert len({r["accuracy"] for r in rows}) > 1  # distinct nets, not one result copied
    for r in rows:
        assert math.isfinite(r["final_kl"]) and math.isfinite(r["final_train_nll"])


def test_training_units_group_seeds_and_small_sizes():
    from dwp.commands.bnn import training_units

    todo = [(m, n, s) for n in (50, 100, 500) for m in ("sn", "det") for s in (0, 1)]
    alone = training_units(todo, batch_seeds=False, batch_sizes_up_to=200)
    assert alone == [(m, [(n, s)]) for m, n, s in todo]
    by_cell = training_units(todo, batch_seeds=True, batch_sizes_up_to=0)
    assert by_cell == [("sn", [(50, 0), (50, 1)]), ("det", [(50, 0), (50, 1)]),
                       ("sn", [(100, 0), (100, 1)]), ("det", [(100, 0), (100, 1)]),
                       ("sn", [(500, 0), (500, 1)]), ("det", [(500, 0), (500, 1)])]
    merged = training_units(todo, batch_seeds=True, batch_sizes_up_to=200)
    assert merged == [("sn", [(50, 0), (50, 1), (100, 0), (100, 1)]),
                      ("det", [(50, 0), (50, 1), (100, 0), (100, 1)]),
                      ("sn", [(500, 0), (500, 1)]), ("det", [(500, 0), (500, 1)])]
    with pytest.raises(DwpError, match="batch-sizes-up-to"):
        training_units(todo, True, -1)


def test_experiment_classification_records_precision(tmp_path, data_root):
    """--precision bf16 reaches every kind of run (batched Bayesian, batched deterministic,
    single) and is part of the folder's identity: the same folder refuses fp32 later."""
    from dwp.cli import main
    from dwp.runtime import read_jsonl

    base = ["experiment", "classification", "--out", str(tmp_path), "--sizes", "20",
            "--steps", "2", "--ensemble", "1", "--test-examples", "50", "--device", "cpu",
            "--data-root", str(data_root), "--no-progress", "--methods", "sn,det"]
    assert main([*base, "--seeds", "0,1", "--batch-seeds", "--precision", "bf16"]) == 0
    assert main([*base, "--seeds", "2", "--one-at-a-time", "--precision", "bf16"]) == 0
    rows = read_jsonl(tmp_path / "results.jsonl")
    assert len(rows) == 6 and all(r["precision"] == "bf16" for r in rows)
    assert all(math.isfinite(r["nll"]) for r in rows)
    assert main([*base, "--seeds", "3"]) == 2  # fp32 into a bf16 folder: refused
    assert len(read_jsonl(tmp_path / "results.jsonl")) == 6


def test_seed_batched_runs_match_single_runs_in_distribution(data_root):
    """Seeds trained together reach the single-run training fit on the same data subsets."""
    from dwp.bnn import run_classification
    from dwp.bnn_batched import run_classification_seeds
    from dwp.data import load_dataset

    train = load_dataset("mnist", "train", data_root)
    test = load_dataset("mnist", "test", data_root).subset(torch.arange(300))
    kw = {"train_data": train, "test_data": test, "steps": 100, "priors": StandardNormal(),
          "ensemble": 2, "lr": 3e-3}
    together = run_classification_seeds("sn", 30, [0, 1], **kw)
    alone = [run_classification("sn", 30, s, **kw) for s in (0, 1)]
    for a, b in zip(alone, together, strict=True):
        assert a["seed"] == b["seed"] and a["init"] == b["init"] == "xavier"
        assert b["final_train_nll"] < 0.5 and a["final_train_nll"] < 0.5  # both fit the 30 images
        assert abs(a["accuracy"] - b["accuracy"]) < 0.1


def test_seed_batched_dwp_runs_with_subsampled_bound(data_root):
    """The deep weight prior (auxiliary bound, trained reverse models) trains under vmap."""
    from dwp.bnn_batched import run_classification_seeds
    from dwp.data import load_dataset
    from dwp.priors import KernelVAE

    torch.manual_seed(0)
    priors = {"conv1": KernelVAE(7, hidden=8), "conv2": KernelVAE(5, hidden=8)}
    train = load_dataset("mnist", "train", data_root)
    test = load_dataset("mnist", "test", data_root).subset(torch.arange(50))
    recs = run_classification_seeds("dwp", 20, [0, 1], train_data=train, test_data=test,
                                    steps=3, priors=priors, kernel_subsample=8, ensemble=1,
                                    lr=1e-2)
    assert [r["seed"] for r in recs] == [0, 1] and all(r["batched"] == 2 for r in recs)
    assert all(r["init"] == "prior" and math.isfinite(r["final_kl"]) for r in recs)


def test_per_layer_prior_spec_parses_and_rejects_bad_specs():
    from dwp.priorspec import canonical_spec, parse_prior_spec

    assert parse_prior_spec("dwp") is None
    assert parse_prior_spec("conv1=dwp, conv2=lu") == {"conv1": "dwp", "conv2": "log-uniform"}
    assert canonical_spec("conv2=sn,conv1=vae") == "conv2=standard-normal,conv1=dwp"
    assert canonical_spec("sn") == "standard-normal"
    for bad in ("conv1=dwp,conv2", "conv1=dwp,conv1=sn", "conv1=det", "conv1=gauss", "=dwp"):
        with pytest.raises(DwpError):
            parse_prior_spec(bad)


def _fconv():
    """A builder of a narrow FConvMNIST (widths 4, 6) on CPU."""
    from dwp.bnn import fconv_factory

    return fconv_factory((4, 6), 1, 10, torch.device("cpu"))


def test_per_layer_spec_with_one_method_builds_the_plain_methods_model():
    from dwp.bayes import bayes_layers
    from dwp.bnn import build_bayes_model
    from dwp.priorspec import resolve_priors

    make = _fconv()
    plain, s1, _ = build_bayes_model("standard-normal", 3, make, resolve_priors("sn"),
                                     device=torch.device("cpu"))
    spec = "conv1=standard-normal,conv2=standard-normal"
    layered, s2, _ = build_bayes_model(spec, 3, make, resolve_priors(spec),
                                       device=torch.device("cpu"))
    for (n1, a), (n2, b) in zip(bayes_layers(plain), bayes_layers(layered), strict=True):
        assert n1 == n2 and torch.equal(a.weight_mu, b.weight_mu)
    assert [(r["layer"], r["prior"]) for r in s1["layers"]] == [
        (r["layer"], r["prior"]) for r in s2["layers"]]
    assert s2["init"] == {"conv1": "xavier", "conv2": "xavier"}


def test_per_layer_spec_mixes_priors_posteriors_and_leaves_unnamed_layers_alone():
    from dwp.bayes import bayes_layers
    from dwp.bnn import build_bayes_model
    from dwp.priors import LogUniform
    from dwp.priorspec import resolve_priors

    make = _fconv()
    model, settings, _ = build_bayes_model("conv2=lu,conv1=sn", 0, make,
                                           resolve_priors("conv2=lu,conv1=sn"),
                                           device=torch.device("cpu"))
    layers = dict(bayes_layers(model))
    assert layers["features.conv1"].posterior == "gaussian"
    assert layers["features.conv2"].posterior == "truncated-alpha"
    assert isinstance(layers["features.conv2"].prior, LogUniform)
    assert [r["prior"] for r in settings["layers"]] == ["sn", "loguniform"]
    only2, settings, _ = build_bayes_model("conv2=sn", 0, make, resolve_priors("conv2=sn"),
                                           device=torch.device("cpu"))
    assert set(dict(bayes_layers(only2))) == {"features.conv2"}
    assert type(only2.features.conv1) is nn.Conv2d
    assert [r["bayesian"] for r in settings["layers"]] == [False, True]
    with pytest.raises(DwpError, match="conv3"):
        build_bayes_model("conv3=sn", 0, make, resolve_priors("conv3=sn"),
                          device=torch.device("cpu"))


def test_train_bnn_command_with_per_layer_priors_saves_and_reloads(tmp_path, data_root):
    from dwp.bayes import bayes_layers, sampling
    from dwp.bnn_io import load_bnn
    from dwp.cli import main
    from dwp.data import load_dataset
    from dwp.priors import KernelVAE, save_prior
    from dwp.priorspec import resolve_priors

    torch.manual_seed(0)
    save_prior(KernelVAE(7, hidden=8), tmp_path / "prior" / "conv1")
    out = tmp_path / "run"
    spec = "conv1=dwp,conv2=lu"
    args = ["train-bnn", "--out", str(out), "--prior", spec, "--prior-dir",
            str(tmp_path / "prior"), "--n", "20", "--steps", "3", "--kernel-subsample", "8",
            "--ensemble", "1", "--test-examples", "50", "--device", "cpu", "--lr", "1e-2",
            "--data-root", str(data_root), "--no-progress", "--freeze-reverse"]
    assert main(args) == 0
    rec = json.loads((out / "metrics.json").read_text())
    assert rec["method"] == "conv1=dwp,conv2=log-uniform"
    assert rec["init"] == {"conv1": "prior", "conv2": "xavier"}
    assert rec["posterior"] == {"conv1": "gaussian", "conv2": "truncated-alpha"}
    assert [r["prior"] for r in rec["layers"]] == ["vae", "loguniform"]
    priors = resolve_priors(rec["method"], tmp_path / "prior")
    model, meta = load_bnn(out / "model.safetensors", priors)
    layers = dict(bayes_layers(model))
    assert layers["features.conv2"].posterior == "truncated-alpha"
    x = load_dataset("mnist", "test", data_root).images[:4]
    again, _ = load_bnn(out / "model.safetensors", priors)
    with sampling(model, "mean"), sampling(again, "mean"):
        assert torch.equal(model(x), again(x))
    # conv2 has no VAE in the folder: a clear error, no run folder left behind
    bad = tmp_path / "bad"
    assert main([*args[:2], str(bad), "--prior", "conv1=lu,conv2=dwp", *args[6:]]) == 2
    assert not bad.exists()
    # prior samples cannot be drawn from the log-uniform layer
    assert main([*args[:2], str(bad), "--prior", spec, *args[4:], "--init", "prior"]) == 2


@pytest.mark.parametrize("batch_size", [None, 16])
def test_interrupted_bnn_training_resumes_to_the_uninterrupted_result(
        tmp_path, mnist50, monkeypatch, batch_size):
    """Kill a run mid-way (after a checkpoint); rerunning it ends bit for bit where a run
    that was never stopped ends: parameters, Adam state, batch order and random draws."""
    import dwp.bnn as bnn_mod
    from dwp.nets import FConvMNIST

    x, y = mnist50

    def fresh() -> nn.Module:
        torch.manual_seed(0)
        net = FConvMNIST((4, 8))
        bayesianize(net, StandardNormal())
        return net

    kw = {"steps": 12, "batch_size": batch_size, "kernel_subsample": 8, "log_every": 1}
    whole = fresh()
    ref = train_bnn(whole, x, y, generator=torch.Generator().manual_seed(3), **kw)

    ckpt = tmp_path / "ck.pt"
    real_loss, calls = bnn_mod.elbo_loss, {"n": 0}

    def dying_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:  # step 6: the last checkpoint was written after step 4
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(bnn_mod, "elbo_loss", dying_loss)
    with pytest.raises(KeyboardInterrupt):
        train_bnn(fresh(), x, y, generator=torch.Generator().manual_seed(3),
                  checkpoint=ckpt, checkpoint_every=4, **kw)
    monkeypatch.setattr(bnn_mod, "elbo_loss", real_loss)
    assert torch.load(ckpt, weights_only=True)["step"] == 4

    torch.manual_seed(123)  # the resumed run must not depend on the state it starts in
    resumed = fresh()
    with torch.no_grad():  # nor on the parameters it was built with
        for p in resumed.parameters():
            p.add_(1.0)
    hist = train_bnn(resumed, x, y, generator=torch.Generator().manual_seed(99),
                     checkpoint=ckpt, checkpoint_every=4, **kw)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    assert hist["loss"] == ref["loss"] and hist["step"] == list(range(12))
    assert hist["resumed_from"] == 4 and ref["resumed_from"] == 0
    assert torch.load(ckpt, weights_only=True)["step"] == 12  # the finished state is kept


def test_checkpoint_of_another_run_is_refused(tmp_path, mnist50):
    from dwp.nets import FConvMNIST

    x, y = mnist50
    ckpt = tmp_path / "ck.pt"
    torch.manual_seed(0)
    net = FConvMNIST((4, 8))
    bayesianize(net, StandardNormal())
    train_bnn(net, x, y, steps=2, checkpoint=ckpt, checkpoint_every=1)
    with pytest.raises(DwpError, match="2-step run, not 3"):
        train_bnn(net, x, y, steps=3, checkpoint=ckpt)
    other = FConvMNIST((4, 6))
    bayesianize(other, StandardNormal())
    with pytest.raises(DwpError, match="another model"):
        train_bnn(other, x, y, steps=2, checkpoint=ckpt)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(DwpError, match="delete it"):
        train_bnn(net, x, y, steps=2, checkpoint=ckpt)


@pytest.mark.parametrize("kill_at", [10, 16])  # batch 10: 2nd weight-decay candidate; 16: final
def test_killed_deterministic_run_resumes_to_the_uninterrupted_record(
        tmp_path, data_root, monkeypatch, kill_at):
    import dwp.bnn as bnn_mod
    from dwp.data import load_dataset

    train = load_dataset("mnist", "train", data_root)
    test = load_dataset("mnist", "test", data_root).subset(torch.arange(300))
    kw = {"train_data": train, "test_data": test, "steps": 6, "widths": (4, 8),
          "weight_decay_grid": (0.0, 1e-2), "checkpoint_every": 2}
    ref = bnn_mod.run_classification("deterministic", 20, 0, checkpoint_dir=tmp_path / "a", **kw)
    assert not ref.get("resumed")

    real_call, calls = bnn_mod._BatchSampler.__call__, {"n": 0}

    def dying_call(self):
        calls["n"] += 1
        if calls["n"] == kill_at:
            raise KeyboardInterrupt
        return real_call(self)

    monkeypatch.setattr(bnn_mod._BatchSampler, "__call__", dying_call)
    with pytest.raises(KeyboardInterrupt):
        bnn_mod.run_classification("deterministic", 20, 0, checkpoint_dir=tmp_path / "b", **kw)
    monkeypatch.setattr(bnn_mod._BatchSampler, "__call__", real_call)
    left = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert left == (["wd-1.pt", "wd-scores.jsonl"] if kill_at == 10
                    else ["train.pt", "wd-scores.jsonl"])
    torch.manual_seed(7)  # the global RNG state must not matter
    rec = bnn_mod.run_classification("deterministic", 20, 0, checkpoint_dir=tmp_path / "b", **kw)
    assert rec["resumed"] is True
    for k in ("weight_decay", "validation", "final_train_loss", "accuracy", "nll", "ece"):
        assert rec[k] == ref[k], k
