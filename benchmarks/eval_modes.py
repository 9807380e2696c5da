"""Test accuracy of saved ``dwp train-bnn`` runs under each way of drawing the ensemble.

dwp reports a true ensemble: ``samples`` networks drawn from q(w), each run on every test
image (``predict(mode="fixed")``). The paper's published code evaluates its 10-member
ensemble in its training-time mode instead: local reparameterisation, which draws every
pre-activation independently per image and per position ("lrt"). For a posterior whose noise
is small against its means both agree; where a layer's kernels have a signal-to-noise ratio
near 1, independent noise per position could average out in the pooling and the classifier,
where one shared weight sample does not. This script measures the difference on the same
models (BENCHMARKS.md, "Stop 37": it is small):

    python benchmarks/eval_modes.py runs/steps-dwp-committed-n50-t10000-s* \
        --out benchmarks/results/eval-modes-cpu.jsonl

Modes: ``fixed`` (dwp's reported metric), ``lrt`` (the paper code's), ``mean`` (the posterior
mean network, one pass). Each mode's draws are seeded the same for every run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from dwp.bnn import evaluate
from dwp.bnn_io import load_run
from dwp.data import load_dataset
from dwp.runtime import DwpError, read_jsonl

MODES = ("fixed", "lrt", "mean")


def score_modes(run: str | Path, test, samples: int, modes: tuple[str, ...] = MODES) -> dict:
    """Score one run folder on ``test`` (an ``ImageDataset``) in each of ``modes``.

    Returns {"run", "method", "n", "seed", "steps", "prior_dir", "samples",
    "reported_accuracy" (from its metrics.json), and per mode {"accuracy", "nll", "ece"}}.
    """
    run = Path(run)
    model, cfg = load_run(run)
    reported = json.loads((run / "metrics.json").read_text()).get("accuracy") \
        if (run / "metrics.json").is_file() else None
    row = {"run": str(run), "method": cfg["method"], "n": cfg["n"], "seed": cfg["seed"],
           "steps": cfg.get("steps"), "prior_dir": cfg.get("prior_dir"),
           "samples": samples, "reported_accuracy": reported}
    for mode in modes:
        torch.manual_seed(0)
        row[mode] = evaluate(model, test.images, test.labels, samples=samples, mode=mode)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="train-bnn output folders")
    ap.add_argument("--samples", type=int, default=10, help="ensemble members per mode")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None, help="JSONL to append rows to")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    done = {r["run"] for r in read_jsonl(args.out)} \
        if args.out is not None and args.out.is_file() else set()
    test = load_dataset("mnist", "test", args.data_root)
    try:
        for run in args.runs:
            if str(run) in done:
                continue
            row = score_modes(run, test, args.samples)
            if args.out is not None:
                with args.out.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
            accs = "  ".join(f"{m} {row[m]['accuracy']:.4f}" for m in MODES)
            print(f"{row['run']}: {accs}  (reported {row['reported_accuracy']})", flush=True)
    except DwpError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
