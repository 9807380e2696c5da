"""Score saved ``dwp train-bnn`` runs on a validation split of the MNIST *training* images.

Choices between priors, source runs and prior-training settings must not be made on the test
set. This script gives every saved run (a folder with ``config.json`` and ``model.safetensors``)
a validation score: the same 10-sample ensemble as the test metrics, on ``--val-examples``
MNIST training images drawn with a fixed seed, minus the N images the run was trained on. All
runs are scored on (nearly) the same images, so their validation accuracies can be compared
and used to choose, and the rank agreement with the test accuracy (from ``metrics.json``) shows
how far the split can stand in for the test set.

    python benchmarks/bnn_validation.py runs/bnn-paperlen-dwp3-frozen-s0 runs/bnn-paperlen-lu-s0 \
        --out benchmarks/results/bnn-validation.jsonl

Prints one line per run (validation and test accuracy) and Spearman's rank correlation of the
two over the runs. Runs already in ``--out`` are not scored again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from dwp.bnn import evaluate
from dwp.bnn_io import load_run
from dwp.data import class_balanced_subset, load_dataset
from dwp.runtime import DwpError

VAL_SEED = 20261127


def validation_indices(labels: torch.Tensor, count: int, exclude: torch.Tensor,
                       seed: int = VAL_SEED) -> torch.Tensor:
    """``count`` random training indices (fixed ``seed``), minus those in ``exclude``.

    labels: (N,) int64; exclude: (n,) indices of the run's training subset. Returns sorted
    LongTensor of at most ``count`` indices, none of them in ``exclude``.
    """
    if not 0 < count <= labels.numel():
        raise DwpError(f"--val-examples must be in 1..{labels.numel()}, got {count}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(labels.numel(), generator=g)[:count]
    keep = ~torch.isin(idx, exclude.to(idx.dtype))
    return idx[keep].sort().values


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation of two equal-length lists (average ranks for ties)."""
    def ranks(v: list[float]) -> torch.Tensor:
        t = torch.tensor(v, dtype=torch.float64)
        order = t.argsort()
        r = torch.empty_like(t)
        r[order] = torch.arange(len(v), dtype=torch.float64)
        for val in t.unique():  # average ranks of ties
            m = t == val
            r[m] = r[m].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def score_run(run: Path, train, val_examples: int) -> dict:
    model, cfg = load_run(run)
    subset = class_balanced_subset(train.labels, int(cfg["n"]), int(cfg["seed"]))
    vidx = validation_indices(train.labels, val_examples, subset)
    torch.manual_seed(0)  # the ensemble's weight samples: the same for every run
    val = evaluate(model, train.images[vidx], train.labels[vidx],
                   samples=int(cfg.get("ensemble") or 10))
    test = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() \
        else {}
    return {"run": str(run), "method": cfg["method"], "n": cfg["n"], "seed": cfg["seed"],
            "steps": cfg.get("steps"), "prior_dir": cfg.get("prior_dir"),
            "freeze_reverse": cfg.get("freeze_reverse"),
            "val_examples": int(vidx.numel()), "val_accuracy": val["accuracy"],
            "val_nll": val["nll"], "test_accuracy": test.get("accuracy")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="train-bnn output folders")
    ap.add_argument("--val-examples", type=int, default=10000,
                    help="validation images drawn from the 60,000 MNIST training images")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None, help="JSONL to append rows to")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    done: dict[str, dict] = {}
    if args.out is not None and args.out.is_file():
        for line in args.out.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["run"]] = row
    train = load_dataset("mnist", "train", args.data_root)
    rows = []
    try:
        for run in args.runs:
            row = done.get(str(run))
            if row is None:
                row = score_run(run, train, args.val_examples)
                if args.out is not None:
                    with args.out.open("a") as fh:
                        fh.write(json.dumps(row) + "\n")
            rows.append(row)
            print(f"{row['run']}: val {row['val_accuracy']:.4f}  test {row['test_accuracy']}",
                  flush=True)
    except DwpError as exc:
        sys.exit(f"error: {exc}")
    pairs = [(r["val_accuracy"], r["test_accuracy"]) for r in rows
             if r["test_accuracy"] is not None]
    if len(pairs) >= 3:
        v, t = [p[0] for p in pairs], [p[1] for p in pairs]
        print(f"Spearman rank correlation (validation vs test accuracy, {len(pairs)} runs): "
              f"{spearman(v, t):.3f}")


if __name__ == "__main__":
    main()
