"""benchmarks/add_runs.py: result rows from run folders, no run added twice."""

from __future__ import annotations

import json
import sys

import pytest


def _run(folder, seed, prior_dir=None, kernels=None):
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(
        {"method": "dwp", "n": 50, "seed": seed, "accuracy": 0.7 + seed / 100,
         "layers": {"conv1": {}}, "model_path": "/tmp/x"}))
    (folder / "config.json").write_text(json.dumps(
        {"config": {"prior_dir": prior_dir, "kernels": kernels}}))
    return folder


def test_rows_appended_once_without_bulky_keys(benchmark_script, tmp_path, monkeypatch):
    mod = benchmark_script("add_runs")
    a, b = _run(tmp_path / "a", 0, "runs/prior-x"), _run(tmp_path / "b", 1, kernels="runs/k")
    target = tmp_path / "results.jsonl"
    for runs in ([a], [a, b]):  # the second call adds b only
        monkeypatch.setattr(sys, "argv", ["add_runs", str(target), *map(str, runs),
                                          "--note", "test"])
        mod.main()
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["run"] for r in rows] == [str(a), str(b)]
    assert rows[0]["prior_dir"] == "runs/prior-x" and rows[1]["prior_dir"] is None
    assert "kernels" not in rows[0] and rows[1]["kernels"] == "runs/k"  # fitted-Gaussian source
    assert all("layers" not in r and "model_path" not in r and r["note"] == "test" for r in rows)
    assert rows[1]["accuracy"] == pytest.approx(0.71)


def test_unfinished_run_is_a_clear_error(benchmark_script, tmp_path):
    mod = benchmark_script("add_runs")
    (tmp_path / "half").mkdir()
    with pytest.raises(SystemExit, match="no metrics.json"):
        mod.result_row(tmp_path / "half", "note")
