"""Table of a step-count sweep (``benchmarks/steps_sweep.sh``): validation and test accuracy
per (method, steps), and the step count each method would pick on validation accuracy.

    python benchmarks/steps_table.py runs/steps-*-n50-* \
        --val benchmarks/results/bnn-validation-cpu.jsonl \
        [--extra runs/bnn-paperlen-dwp3aug-frozen-s*] [--seeds 0 1 2 3 4] \
        [--report-seeds 0 1 2 3 4 5 6 7 8 9 --reference log-uniform standard-normal] \
        [--out benchmarks/results/steps-n50-cpu.json] [--plot PNG]

Each run needs a row in the ``--val`` JSONL (written by ``benchmarks/bnn_validation.py``) and
either its folder's ``metrics.json`` (test accuracy, steps) or, for a run whose git-ignored
folder is gone, the test accuracy that the row itself recorded; such a run's steps come from
the row, else from ``-t<steps>-`` in its name, else from ``--default-steps``. ``--extra`` adds
runs of other names (e.g. the paper-length runs) on the same footing. The choice of steps uses
validation accuracy only; test accuracy is reported beside it, never used to choose.

``--report-seeds`` reports each method's chosen cell (chosen on ``--seeds``) over more seeds,
e.g. seeds trained later at the chosen lengths only, with every method's per-seed difference
from each ``--reference`` method (paired by seed: mean, sd, t statistic, seeds won).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

from dwp.experiments.classification import paired_differences


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _from_val_row(run: Path, row: dict, default_steps: int | None) -> dict | None:
    """A lost run folder's record from its validation row: method, seed, steps, accuracy,
    prior_dir; None if the row holds no test accuracy or the steps cannot be told."""
    steps = row.get("steps")
    if steps is None:
        match = re.search(r"-t(\d+)-", run.name)
        steps = int(match.group(1)) if match else default_steps
    if row.get("test_accuracy") is None or steps is None:
        return None
    return {"method": row["method"], "seed": row["seed"], "steps": steps,
            "accuracy": row["test_accuracy"], "prior_dir": row.get("prior_dir")}


def collect(
    runs: list[Path], val_rows: dict[str, dict], default_steps: int | None = None
) -> dict[tuple[str, int], list[dict]]:
    """Group runs by (method, steps): each entry {seed, val, test}. A run with a prior folder
    is labelled "method (folder name)", so dwp runs with different priors stay apart. A run
    whose folder has no metrics.json is read from its validation row (see the module's
    docstring). Runs without a validation row, or with neither source of test accuracy, are
    reported and skipped."""
    cells: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for run in runs:
        metrics_path = run / "metrics.json"
        row = val_rows.get(str(run))
        if row is None:
            print(f"skipped {run}: no validation row")
            continue
        if metrics_path.is_file():
            m = json.loads(metrics_path.read_text())
            cfg_path = run / "config.json"
            prior_dir = (json.loads(cfg_path.read_text())["config"].get("prior_dir")
                         if cfg_path.is_file() else None)
        else:
            m = _from_val_row(run, row, default_steps)
            if m is None:
                print(f"skipped {run}: no metrics.json, and its validation row has no test "
                      "accuracy or no step count (name it -t<steps>- or pass --default-steps)")
                continue
            prior_dir = m["prior_dir"]
        label = f"{m['method']} ({Path(prior_dir).name})" if prior_dir else m["method"]
        cells[(label, int(m["steps"]))].append(
            {"seed": int(m["seed"]), "val": row["val_accuracy"], "test": m["accuracy"],
             "seconds": m.get("seconds")})
    return cells


def summarize(cells: dict[tuple[str, int], list[dict]]) -> list[dict]:
    """One dict per (method, steps) cell of :func:`collect`, sorted: method, steps, seeds and
    the per-seed val / test accuracies (in seed order), with their means and sds."""
    out = []
    for (method, steps) in sorted(cells):
        rows = sorted(cells[(method, steps)], key=lambda r: r["seed"])
        val, test = [r["val"] for r in rows], [r["test"] for r in rows]
        (val_mean, val_sd), (test_mean, test_sd) = mean_sd(val), mean_sd(test)
        out.append({"method": method, "steps": steps, "seeds": [r["seed"] for r in rows],
                    "val": val, "test": test, "val_mean": val_mean, "val_sd": val_sd,
                    "test_mean": test_mean, "test_sd": test_sd})
    return out


def choose_steps(cells: list[dict]) -> dict[str, dict]:
    """Per method, the cell (step count) of highest mean validation accuracy.

    cells: dicts as :func:`summarize` makes them. Test accuracy is
    carried along for the report, never looked at. Returns {method: chosen cell's summary}.
    """
    chosen: dict[str, dict] = {}
    for c in sorted(cells, key=lambda c: (c["method"], c["steps"])):
        best = chosen.get(c["method"])
        if best is None or c["val_mean"] > best["val_mean"]:
            chosen[c["method"]] = {"steps": c["steps"], "val_mean": c["val_mean"],
                                   "test_mean": c["test_mean"], "test_sd": c["test_sd"],
                                   "seeds": c["seeds"]}
    return chosen


def keep_seeds(
    cells: dict[tuple[str, int], list[dict]], seeds: list[int]
) -> dict[tuple[str, int], list[dict]]:
    """The cells of :func:`collect` with only the runs of ``seeds``; cells left empty are
    dropped."""
    kept = {k: [r for r in rows if r["seed"] in seeds] for k, rows in cells.items()}
    return {k: rows for k, rows in kept.items() if rows}


def report_chosen(
    cells: dict[tuple[str, int], list[dict]], chosen: dict[str, dict], seeds: list[int]
) -> dict[str, dict]:
    """Each method's chosen cell over ``seeds``: {method: its :func:`summarize` dict plus
    "missing", the seeds it lacks}. cells: as :func:`collect` makes them (all seeds);
    chosen: as :func:`choose_steps` returns."""
    by_cell = {(c["method"], c["steps"]): c for c in summarize(keep_seeds(cells, seeds))}
    report = {}
    for method, best in chosen.items():
        cell = by_cell[(method, best["steps"])]
        report[method] = {**cell, "missing": [s for s in seeds if s not in cell["seeds"]]}
    return report


def plot_cells(cells: list[dict], path: Path) -> None:
    """Mean accuracy (± sd over seeds) against steps: validation left, test right."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    methods = sorted({c["method"] for c in cells})
    for method in methods:
        cs = sorted((c for c in cells if c["method"] == method), key=lambda c: c["steps"])
        x = [c["steps"] for c in cs]
        for ax, key in zip(axes, ("val", "test"), strict=True):
            means = [c[f"{key}_mean"] for c in cs]
            sds = [c[f"{key}_sd"] for c in cs]
            ax.errorbar(x, means, yerr=sds, marker="o", capsize=3, label=method)
    for ax, title in zip(axes, ("validation (chooses)", "test (reported)"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("training steps (lr decays linearly to 0 over them)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("10-sample ensemble accuracy")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--extra", nargs="*", type=Path, default=[])
    ap.add_argument("--val", type=Path, required=True, help="bnn_validation.py JSONL")
    ap.add_argument("--out", type=Path, default=None, help="JSON summary to write")
    ap.add_argument("--seeds", type=int, nargs="*", default=None,
                    help="keep only these seeds (choose on the seeds every cell shares)")
    ap.add_argument("--plot", type=Path, default=None,
                    help="PNG: validation and test accuracy against steps, one line per method")
    ap.add_argument("--default-steps", type=int, default=None,
                    help="steps of lost run folders whose validation row and name do not say "
                         "(e.g. 10000 for the paper-length runs runs/bnn-n100-*-s0)")
    ap.add_argument("--report-seeds", type=int, nargs="*", default=None,
                    help="report each chosen cell over these seeds (choice stays on --seeds)")
    ap.add_argument("--reference", nargs="*", default=None,
                    help="with --report-seeds: method labels every other method is paired "
                         "against by seed, e.g. 'log-uniform' 'standard-normal'")
    args = ap.parse_args()
    if args.reference and args.report_seeds is None:
        ap.error("--reference pairs the chosen cells of --report-seeds; give --report-seeds too")

    val_rows = {}
    for line in args.val.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            val_rows[r["run"]] = r
    all_cells = collect(args.runs + args.extra, val_rows, args.default_steps)
    cells = all_cells if args.seeds is None else keep_seeds(all_cells, args.seeds)

    summary = {"cells": summarize(cells)}
    print(f"{'method':<24}{'steps':>7}{'seeds':>7}{'validation':>18}{'test':>18}")
    for c in summary["cells"]:
        print(f"{c['method']:<24}{c['steps']:>7}{len(c['seeds']):>7}"
              f"{c['val_mean']:>11.3f} ± {c['val_sd']:.3f}"
              f"{c['test_mean']:>11.3f} ± {c['test_sd']:.3f}")
    summary["chosen"] = choose_steps(summary["cells"])
    print("\nchosen on validation accuracy:")
    for method, best in summary["chosen"].items():
        print(f"  {method}: {best['steps']} steps (validation {best['val_mean']:.3f}), "
              f"test {best['test_mean']:.3f} ± {best['test_sd']:.3f} "
              f"over {len(best['seeds'])} seeds")
    if args.report_seeds is not None:
        report = report_chosen(all_cells, summary["chosen"], args.report_seeds)
        summary["report"] = report
        print(f"\nchosen cells over seeds {args.report_seeds}:")
        for method, r in report.items():
            missing = f" (missing seeds {r['missing']})" if r["missing"] else ""
            print(f"  {method}: {r['steps']} steps, test {r['test_mean']:.3f} ± "
                  f"{r['test_sd']:.3f} over {len(r['seeds'])} seeds{missing}")
        unknown = [m for m in args.reference or [] if m not in report]
        if unknown:
            raise SystemExit(f"--reference {unknown} not among the methods here: "
                             f"{sorted(report)}")
        tests = {m: dict(zip(r["seeds"], r["test"], strict=True)) for m, r in report.items()}
        summary["paired"] = {}
        for reference in args.reference or []:
            for method in report:
                if method == reference:
                    continue
                d = paired_differences(tests[method], tests[reference])
                summary["paired"][f"{method} minus {reference}"] = d
                if d["mean"] is not None:
                    t = "n/a" if d["t"] is None else f"{d['t']:.2f}"
                    print(f"  {method} minus {reference}: {d['mean']:+.3f} "
                          f"(sd {d['sd']:.3f}, t = {t}), ahead on {d['wins']} of "
                          f"{len(d['seeds'])} seeds")
    if args.plot is not None:
        plot_cells(summary["cells"], args.plot)
    if args.out is not None:
        args.out.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
