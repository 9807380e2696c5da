"""benchmarks/steps_table.py: runs grouped by (method, steps), steps chosen on validation."""

from __future__ import annotations

import json


def _run(folder, method, steps, seed, test):
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(
        {"method": method, "steps": steps, "seed": seed, "accuracy": test, "seconds": 1.0}))
    return folder


def test_steps_chosen_on_validation_not_test(benchmark_script, tmp_path):
    mod = benchmark_script("steps_table")
    # 100 steps: better on validation; 1000 steps: better on test. The choice must be 100.
    runs, val = [], {}
    for steps, v, t in ((100, 0.80, 0.70), (1000, 0.75, 0.90)):
        for seed in (0, 1):
            r = _run(tmp_path / f"dwp-{steps}-{seed}", "dwp", steps, seed, t + 0.01 * seed)
            runs.append(r)
            val[str(r)] = {"val_accuracy": v + 0.01 * seed}
    orphan = _run(tmp_path / "no-val", "dwp", 10, 0, 0.99)  # no validation row: skipped
    other = _run(tmp_path / "other-prior", "dwp", 100, 0, 0.5)  # another prior: its own cell
    (other / "config.json").write_text(json.dumps({"config": {"prior_dir": "runs/prior-x"}}))
    val[str(other)] = {"val_accuracy": 0.99}
    cells = mod.collect(runs + [orphan, other], val)
    assert [r["test"] for r in cells.pop(("dwp (prior-x)", 100))] == [0.5]
    assert sorted(cells) == [("dwp", 100), ("dwp", 1000)]
    assert [r["seed"] for r in cells[("dwp", 100)]] == [0, 1]
    summary = mod.summarize(cells)
    assert [(c["steps"], c["val"], c["test"]) for c in summary] == [
        (100, [0.80, 0.81], [0.70, 0.71]), (1000, [0.75, 0.76], [0.90, 0.91])]
    chosen = mod.choose_steps(summary)
    assert chosen["dwp"]["steps"] == 100
    assert abs(chosen["dwp"]["test_mean"] - 0.705) < 1e-12
