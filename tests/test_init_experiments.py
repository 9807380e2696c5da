"""End-to-end checks of ``dwp experiment features`` / ``convergence`` on tiny configurations."""

from __future__ import annotations

import json

import numpy as np
import torch

from dwp.cli import main
from dwp.runtime import read_jsonl


def _kernel_dir(tmp_path):
    folder = tmp_path / "kernels"
    folder.mkdir()
    gen = np.random.default_rng(0)
    for name, k in (("features.conv1", 7), ("features.conv2", 5)):
        np.save(folder / f"{name}.npy", (0.1 * gen.standard_normal((200, k, k))).astype("f4"))
    return folder


def test_features_runs_and_resumes(tmp_path, data_root):
    out = tmp_path / "feat"
    args = ["experiment", "features", "--methods", "filters,xavier", "--kernels",
            str(_kernel_dir(tmp_path)), "--seeds", "2", "--train-examples", "200",
            "--test-examples", "100", "--epochs", "1", "--out", str(out), "--device", "cpu",
            "--data-root", str(data_root), "--no-progress"]
    assert main(args) == 0
    rows = read_jsonl(out / "results.jsonl")
    assert len(rows) == 5 * 2 * 2  # widths x methods x seeds
    assert {r["method"] for r in rows} == {"filters", "xavier"}
    assert {tuple(r["widths"]) for r in rows} >= {(2, 8), (32, 128)}
    assert all(0.0 <= r["test_acc"] <= 1.0 for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["test_acc"]) == 10 and (out / "features.png").stat().st_size > 0
    assert main(args) == 0  # resumed: nothing recomputed
    assert len(read_jsonl(out / "results.jsonl")) == 20


def test_convergence_tiny(tmp_path, data_root):
    out = tmp_path / "conv"
    args = ["experiment", "convergence", "--methods", "filters,xavier", "--kernels",
            str(_kernel_dir(tmp_path)), "--seeds", "2", "--steps", "3", "--vae-steps", "2",
            "--test-examples", "50", "--out", str(out), "--device", "cpu",
            "--data-root", str(data_root), "--no-progress"]
    torch.manual_seed(0)
    assert main(args) == 0
    rows = read_jsonl(out / "results.jsonl")
    fconv = [r for r in rows if r["model"] == "fconv"]
    vae = [r for r in rows if r["model"] == "vae"]
    assert {r["step"] for r in fconv} == {0, 3} and len(fconv) == 2 * 2 * 2
    assert {r["step"] for r in vae} == {0, 2}
    assert all(r["test_elbo"] < 0 for r in vae)  # a log-likelihood bound of binary images
    assert (out / "convergence.png").exists()
    # a cell's numbers do not depend on the cells run before it in the same process
    alone = tmp_path / "conv-alone"
    args_alone = [a if a != "filters,xavier" else "xavier" for a in args]
    args_alone[args_alone.index(str(out))] = str(alone)
    assert main([*args_alone, "--models", "vae"]) == 0
    vae_alone = {(r["seed"], r["step"]): r["test_elbo"]
                 for r in read_jsonl(alone / "results.jsonl")}
    assert vae_alone == {(r["seed"], r["step"]): r["test_elbo"] for r in vae
                         if r["method"] == "xavier"}


def test_convergence_warns_about_diverged_nets(tmp_path, capsys, data_root):
    from dwp.experiments.convergence import diverged_cells

    rows = [{"model": "vae", "method": "dwp", "seed": s, "step": t, "test_elbo": v}
            for s, t, v in ((0, 0, -600.0), (0, 25, float("nan")), (1, 0, -610.0),
                            (1, 25, -300.0), (1, 50, float("inf")), (2, 0, -590.0))]
    rows += [{"model": "fconv", "method": "xavier", "seed": 0, "step": 0, "test_acc": 0.1}]
    assert diverged_cells(rows) == [
        "vae/dwp: 2 of 3 nets diverged (non-finite test ELBO from step 25)"]
    assert diverged_cells(rows[3:4] + rows[-1:]) == []
    # end to end: kernels a million times too large make the VAE's ELBO non-finite
    folder = tmp_path / "huge"
    folder.mkdir()
    gen = np.random.default_rng(1)
    for name, k in (("features.conv1", 7), ("features.conv2", 5)):
        np.save(folder / f"{name}.npy", (1e6 * gen.standard_normal((50, k, k))).astype("f4"))
    out = tmp_path / "conv"
    assert main(["experiment", "convergence", "--models", "vae", "--methods", "filters",
                 "--kernels", str(folder), "--seeds", "2", "--vae-steps", "1",
                 "--test-examples", "20", "--out", str(out), "--device", "cpu",
                 "--data-root", str(data_root), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "vae/filters: 2 of 2 nets diverged (non-finite test ELBO from step 0)" in err
    assert (out / "convergence.png").exists()


def test_missing_prior_dir_is_a_clear_error(tmp_path, capsys, data_root):
    code = main(["experiment", "features", "--methods", "dwp", "--out", str(tmp_path / "x"),
                 "--data-root", str(data_root)])
    assert code == 2
    assert "needs --prior-dir" in capsys.readouterr().err


def test_standardize_features_uses_training_statistics_only():
    from dwp.experiments.features import standardize_features

    gen = torch.Generator().manual_seed(0)
    train = 0.01 * torch.randn(3, 400, 6, generator=gen) + torch.arange(6.0)
    test = 5.0 * torch.randn(3, 50, 6, generator=gen) - 2.0  # a very different distribution
    tr, te = standardize_features(train, test)
    # training features: zero mean, unit (population) std per net and feature
    torch.testing.assert_close(tr.mean(1), torch.zeros(3, 6), atol=1e-4, rtol=0)
    torch.testing.assert_close(tr.std(1, unbiased=False), torch.ones(3, 6), atol=1e-3, rtol=0)
    # test features: the training transform, computed independently in float64 numpy
    x, t = train.double().numpy(), test.double().numpy()
    expect = (t - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(te.double().numpy(), expect, rtol=1e-4, atol=1e-3)
    assert te.abs().mean() > 10  # not re-standardised with its own statistics
    # other test data change nothing: the training output is the same, and each test row's
    # output does not depend on the other test rows
    tr2, te2 = standardize_features(train, test[:, :10])
    torch.testing.assert_close(tr2, tr)
    torch.testing.assert_close(te2, te[:, :10])


def test_features_standardize_flag(tmp_path, data_root):
    out = tmp_path / "feat-std"
    args = ["experiment", "features", "--methods", "xavier", "--seeds", "1", "--standardize",
            "--train-examples", "100", "--test-examples", "50", "--epochs", "1",
            "--out", str(out), "--device", "cpu", "--data-root", str(data_root), "--no-progress"]
    assert main(args) == 0
    rows = read_jsonl(out / "results.jsonl")
    assert len(rows) == 5 and all(r["standardize"] is True for r in rows)
    assert json.loads((out / "config.json").read_text())["config"]["standardize"] is True


def test_convergence_plot_survives_a_diverged_method(tmp_path):
    """A method whose ELBO is NaN (seen with the --quick pipeline's collapsed priors) is drawn
    as a gap; the plot is still written."""
    from dwp.experiments.convergence import plot_convergence

    elbo = [{"method": "dwp", "step": s, "n": 3, "mean": float("nan"), "std": float("nan")}
            for s in (0, 100, 200)]  # first, as in the summary's order
    elbo += [{"method": "xavier", "step": s, "n": 3, "mean": -500.0 + s, "std": 1.0}
             for s in (0, 100, 200)]
    acc = [{"method": m, "step": s, "n": 3, "mean": 0.5, "std": 0.01}
           for m in ("dwp", "xavier") for s in (0, 100)]
    plot_convergence({"test_elbo": elbo, "test_acc": acc}, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 1000
