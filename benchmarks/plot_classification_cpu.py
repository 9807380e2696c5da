"""Accuracy vs N from the committed paper-length CPU runs, beside the paper's Fig. 2.

Reads the rows of ``benchmarks/results/mnist-n50-paperlength-cpu.jsonl`` and
``benchmarks/results/mnist-classification.jsonl`` that ran the paper's length (10,000 full-batch
steps): log-uniform, standard normal, the deterministic baseline, dwp with each
``--dwp PRIOR_DIR`` (frozen reverse model,
prior-sample init, subsampled KL, unscaled prior: the CPU configuration of BENCHMARKS.md) and the
fitted Gaussian fitted on each ``--fitted KERNELS`` kernel set. Runs whose folders (and so
their full records) were lost keep their test accuracy in
``benchmarks/results/bnn-validation-cpu.jsonl``; those accuracy-only rows (the N = 1000 runs)
count too, where no full record of the same method, prior, N and seed exists.
``--dwp A+B+C`` pools the runs of prior folders made by one recipe (a prior and its rebuilds)
into one curve; where several of them ran the same N and seed, A's run counts, then B's.
Prints a markdown table (mean ± std over seeds, number of seeds), then the mean test NLL and
ECE per cell (of the runs whose full records survive), then, per dwp curve, its differences
from each baseline paired by seed (mean, t, seeds ahead), and writes the plot.

    python benchmarks/plot_classification_cpu.py --dwp runs/prior-cpu3e300 \
        runs/prior-cpu3aug+runs/prior-cpu3aug2+benchmarks/priors/notmnist-cpu3aug \
        --fitted runs/kernels-notmnist-cpu3aug-3k --out docs/experiments/classification_cpu.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dwp.experiments.classification import (
    PAPER_FIG2,
    calibration_table,
    paired_table,
    summarize,
)

RESULTS = Path(__file__).resolve().parent / "results"
FILES = ("mnist-n50-paperlength-cpu.jsonl", "mnist-classification.jsonl")
VALIDATION = "bnn-validation-cpu.jsonl"
BASELINES = ("log-uniform", "standard-normal", "deterministic")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def dwp_labels(specs: list[str]) -> dict[str, tuple[str, int]]:
    """{prior folder: (curve label, rank)} for ``--dwp`` specs; a spec ``A+B`` pools folders
    A (rank 0) and B (rank 1) under the label 'dwp (A + rebuilds)'."""
    out = {}
    for spec in specs:
        dirs = spec.split("+")
        label = f"dwp ({dirs[0]}{' + rebuilds' if len(dirs) > 1 else ''})"
        out.update({d: (label, rank) for rank, d in enumerate(dirs)})
    return out


def accuracy_only_rows(path: Path, dwp_dirs: dict[str, tuple[str, int]]) -> list[tuple[str, dict]]:
    """(label, row) for the paper-length runs of ``path`` (validation rows, which keep a run's
    test accuracy) made by ``benchmarks/steps_sweep.sh``: baselines, and dwp with a prior of
    ``dwp_dirs`` (:func:`dwp_labels`) and a frozen reverse model. ``accuracy`` is their
    ``test_accuracy``."""
    out = []
    for r in _jsonl(path):
        if r.get("steps") != 10000 or not str(r.get("run", "")).startswith("runs/steps-"):
            continue
        if r["method"] in BASELINES:
            label = r["method"]
        elif r["method"] == "dwp" and r.get("prior_dir") in dwp_dirs and r.get("freeze_reverse"):
            label = dwp_dirs[r["prior_dir"]][0]
        else:
            continue
        out.append((label, {**r, "accuracy": r["test_accuracy"], "accuracy_only": True}))
    return out


def load_rows(dwp_specs: list[str], fitted: list[str] = ()) -> dict[str, list[dict]]:
    """{label: rows} for log-uniform, standard-normal, deterministic, 'dwp (PRIOR_DIR)' per
    ``--dwp`` spec (:func:`dwp_labels`) and 'fitted-gaussian (KERNELS)' per kernel set."""
    dwp_dirs = dwp_labels(dwp_specs)
    groups: dict[str, list[dict]] = {m: [] for m in BASELINES}
    groups.update({label: [] for label, _ in dwp_dirs.values()})
    groups.update({f"fitted-gaussian ({k})": [] for k in fitted})
    pooled: dict[tuple[str, int, int], tuple[int, dict]] = {}  # (label, n, seed): (rank, row)
    for name in FILES:
        for r in _jsonl(RESULTS / name):
            if r.get("steps") != 10000:
                continue
            if r["method"] in BASELINES:
                groups[r["method"]].append(r)
            elif (r["method"] == "dwp" and r.get("prior_dir") in dwp_dirs
                  and r.get("freeze_reverse") and r.get("init") == "prior"
                  and r.get("kernel_subsample") == 128 and "prior_scales" not in r):
                label, rank = dwp_dirs[r["prior_dir"]]
                key = (label, r["n"], r["seed"])
                if key not in pooled or rank < pooled[key][0]:
                    pooled[key] = (rank, r)
            elif r["method"] == "fitted-gaussian" and r.get("kernels") in fitted:
                groups[f"fitted-gaussian ({r['kernels']})"].append(r)
    for (label, _, _), (_, r) in pooled.items():
        groups[label].append(r)
    have = {(label, r["n"], r["seed"]) for label, rows in groups.items() for r in rows}
    for label, r in accuracy_only_rows(RESULTS / VALIDATION, dwp_dirs):
        if (label, r["n"], r["seed"]) not in have:
            groups[label].append(r)
            have.add((label, r["n"], r["seed"]))
    return groups


def by_size(label: str, rows: list[dict]) -> dict[int, tuple[float, float, int]]:
    """{n: (mean, sample std, seeds)} of the accuracy
    (:func:`dwp.experiments.classification.summarize`)."""
    return {s["n"]: (s["mean"], s["std"], s["runs"])
            for s in summarize([{**r, "method": label} for r in rows])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dwp", nargs="+", default=["runs/prior-cpu3"],
                    help="prior folders whose dwp runs to show (as recorded in the rows); "
                         "A+B pools a prior's rebuilds into one curve, A's runs first")
    ap.add_argument("--fitted", nargs="*", default=[],
                    help="kernel sets whose fitted-Gaussian runs to show (as recorded)")
    ap.add_argument("--out", type=Path, default=None, help="PNG to write")
    args = ap.parse_args()

    rows = load_rows(args.dwp, args.fitted)
    groups = {k: by_size(k, v) for k, v in rows.items()}
    sizes = sorted({n for s in groups.values() for n in s})
    print("| method | " + " | ".join(f"N = {n}" for n in sizes) + " |")
    print("|---" * (len(sizes) + 1) + "|")
    for label, s in groups.items():
        key = label.split(" (")[0]
        cells = []
        for n in sizes:
            paper = (f" (paper {PAPER_FIG2[key][PAPER_FIG2['sizes'].index(n)]:.3f})"
                     if n in PAPER_FIG2["sizes"] and key in PAPER_FIG2 else "")
            if n not in s:
                cells.append("-")
            else:  # one seed has no spread to show
                spread = f" ± {s[n][1]:.3f}" if s[n][2] > 1 else ""
                cells.append(f"{s[n][0]:.3f}{spread} ({s[n][2]}){paper}")
        print(f"| {label} | " + " | ".join(cells) + " |")
    flat = [{**r, "method": label} for label, rs in rows.items() for r in rs]
    print(f"\n{calibration_table(flat, methods=list(rows))}")
    for label in dict.fromkeys(label for label, _ in dwp_labels(args.dwp).values()):
        if paired := paired_table(flat, method=label, baselines=BASELINES):
            print(f"\n{paired}")

    if args.out is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        colors = {"log-uniform": "C2", "standard-normal": "C1", "deterministic": "C8"}
        dwp_colors = iter(["C0", "C9", "C4", "C5", "C3"])
        fitted_colors = iter(["C6", "C7"])
        for label, s in groups.items():
            if not s:
                continue
            ns = sorted(s)
            color = (colors[label] if label in colors else next(fitted_colors, "C7")
                     if label.startswith("fitted") else next(dwp_colors, "C7"))
            ax.errorbar(ns, [s[n][0] for n in ns], yerr=[s[n][1] for n in ns], marker="o",
                        capsize=3, color=color, label=f"{label}, ours (CPU)")
        for key, color in (("dwp", "C0"), ("log-uniform", "C2"), ("standard-normal", "C1"),
                           ("deterministic", "C8")):
            ax.plot(PAPER_FIG2["sizes"], PAPER_FIG2[key], ls="--", marker="x", color=color,
                    alpha=0.5, label=f"{key}, paper")
        ax.set_xscale("log")
        ax.set_xlabel("training images N (MNIST)")
        ax.set_ylabel("test accuracy (10-sample ensemble)")
        ax.set_title("Paper-length runs on CPU (error bars: sd over seeds)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.out, dpi=120)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
