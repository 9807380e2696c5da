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


def test_lost_run_folders_are_read_from_their_validation_rows(benchmark_script, tmp_path):
    mod = benchmark_script("steps_table")
    kept = _run(tmp_path / "steps-lu-n100-t250-s0", "log-uniform", 250, 0, 0.80)
    lost_named = tmp_path / "steps-lu-n100-t10000-s0"      # steps from the name
    lost_row = tmp_path / "bnn-n100-lu-s1"                   # steps from the row
    lost_default = tmp_path / "bnn-n100-lu-s2"               # steps from --default-steps
    lost_untold = tmp_path / "bnn-n100-lu-s3"                # no test accuracy: skipped
    row = {"method": "log-uniform", "prior_dir": None}
    val = {
        str(kept): {"val_accuracy": 0.79},
        str(lost_named): {**row, "seed": 0, "val_accuracy": 0.83, "test_accuracy": 0.84},
        str(lost_row): {**row, "seed": 1, "steps": 10000, "val_accuracy": 0.82,
                        "test_accuracy": 0.85},
        str(lost_default): {**row, "seed": 2, "val_accuracy": 0.81, "test_accuracy": 0.86},
        str(lost_untold): {**row, "seed": 3, "val_accuracy": 0.5, "test_accuracy": None},
    }
    runs = [kept, lost_named, lost_row, lost_default, lost_untold]
    cells = mod.collect(runs, val)  # without a default, seed 2's steps cannot be told
    assert [r["seed"] for r in cells[("log-uniform", 10000)]] == [0, 1]
    cells = mod.collect(runs, val, default_steps=10000)
    assert sorted(cells) == [("log-uniform", 250), ("log-uniform", 10000)]
    assert [(r["seed"], r["val"], r["test"]) for r in cells[("log-uniform", 10000)]] == [
        (0, 0.83, 0.84), (1, 0.82, 0.85), (2, 0.81, 0.86)]
    dwp_lost = tmp_path / "bnn-n100-dwp-s0"
    val[str(dwp_lost)] = {"method": "dwp", "prior_dir": "runs/prior-a", "seed": 0,
                          "steps": 10000, "val_accuracy": 0.7, "test_accuracy": 0.71}
    assert ("dwp (prior-a)", 10000) in mod.collect([dwp_lost], val)


def test_chosen_cells_reported_over_more_seeds_with_paired_differences(
        benchmark_script, tmp_path):
    mod = benchmark_script("steps_table")
    # Choice on seeds 0-1: "a" picks 100 steps (validation 0.9 > 0.8). Seeds 2-3 exist only
    # at the chosen length, as when later seeds are trained at the chosen lengths only.
    val, runs = {}, []
    for steps, v in ((100, 0.9), (1000, 0.8)):
        for seed in (0, 1):
            r = _run(tmp_path / f"a-{steps}-{seed}", "a", steps, seed, 0.70 + 0.01 * seed)
            runs.append(r)
            val[str(r)] = {"val_accuracy": v}
    for seed, test in ((2, 0.75), (3, 0.60)):
        r = _run(tmp_path / f"a-100-{seed}", "a", 100, seed, test)
        runs.append(r)
        val[str(r)] = {"val_accuracy": 0.5}  # later seeds never change the choice
    ref_tests = {0: 0.68, 1: 0.72, 2: 0.70}  # reference method "b": seed 3 missing
    for seed, test in ref_tests.items():
        r = _run(tmp_path / f"b-{seed}", "b", 500, seed, test)
        runs.append(r)
        val[str(r)] = {"val_accuracy": 0.7}
    all_cells = mod.collect(runs, val)
    choice = {k: [r for r in rows if r["seed"] in (0, 1)] for k, rows in all_cells.items()}
    chosen = mod.choose_steps(mod.summarize(choice))
    assert chosen["a"]["steps"] == 100
    report = mod.report_chosen(all_cells, chosen, [0, 1, 2, 3])
    assert report["a"]["seeds"] == [0, 1, 2, 3] and report["a"]["missing"] == []
    assert report["a"]["test"] == [0.70, 0.71, 0.75, 0.60]
    assert report["b"]["missing"] == [3]
    a = dict(zip(report["a"]["seeds"], report["a"]["test"], strict=True))
    d = mod.paired_differences(a, ref_tests)
    # by hand: diffs 0.02, -0.01, 0.05; mean 0.02, sd 0.03, t = 0.02 / (0.03 / sqrt 3)
    assert d["seeds"] == [0, 1, 2] and d["wins"] == 2
    assert abs(d["mean"] - 0.02) < 1e-12 and abs(d["sd"] - 0.03) < 1e-12
    assert abs(d["t"] - 0.02 / (0.03 / 3 ** 0.5)) < 1e-9
    assert mod.paired_differences({0: 0.5}, {0: 0.4})["t"] is None  # one seed: no t
