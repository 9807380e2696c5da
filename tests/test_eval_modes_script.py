"""benchmarks/eval_modes.py and dwp.bnn_io.load_run: a saved run rebuilt from its folder and
scored in each ensemble mode, against direct calls."""

from __future__ import annotations

import pytest
import torch

from dwp.runtime import DwpError


def test_score_modes_matches_direct_predictions(tmp_path, data_root, benchmark_script):
    from dwp.bayes import bayes_layers, predict, sampling
    from dwp.bnn_io import load_bnn, load_run
    from dwp.cli import main
    from dwp.data import load_dataset
    from dwp.metrics import classification_metrics
    from dwp.priorspec import resolve_priors

    mod = benchmark_script("eval_modes")
    out = tmp_path / "run"
    assert main(["train-bnn", "--out", str(out), "--prior", "sn", "--n", "20", "--steps", "3",
                 "--ensemble", "1", "--test-examples", "50", "--device", "cpu",
                 "--data-root", str(data_root), "--no-progress"]) == 0
    test = load_dataset("mnist", "test", data_root).subset(torch.arange(64))
    row = mod.score_modes(out, test, samples=3)
    assert row["method"] == "standard-normal" and row["n"] == 20 and row["samples"] == 3
    model, _ = load_bnn(out / "model.safetensors", resolve_priors("sn"))
    assert bayes_layers(model)
    again, cfg = load_run(out)  # the run folder's config names the priors
    assert cfg["method"] == "standard-normal" and cfg["n"] == 20
    with sampling(model, "mean"), sampling(again, "mean"):
        assert torch.equal(model(test.images), again(test.images))
    for mode in mod.MODES:
        torch.manual_seed(0)
        want = classification_metrics(predict(model, test.images, samples=3, mode=mode),
                                      test.labels)
        assert row[mode] == pytest.approx(want)
    with pytest.raises(DwpError, match="not a finished train-bnn run"):
        mod.score_modes(tmp_path / "missing", test, samples=3)
