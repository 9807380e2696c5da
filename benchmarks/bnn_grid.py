"""Speed of one classification-grid cell: S seeds trained together (vmap) vs one at a time.

Both sides run the same Bayesian method on the same S class-balanced MNIST subsets of N images
with the same step count, in this process one after the other (same machine state), through the
code the grid uses: ``dwp.bnn_batched.run_classification_seeds`` and
``dwp.bnn.run_classification``. Evaluation uses ``--test-examples`` test images (default 1,000)
so that training dominates. Prints and appends one JSON line with both wall times, their
ratio, peak memory (CUDA: max allocated per side; CPU: process max RSS at the end) and the mean
accuracies (which agree only in distribution: the random streams differ).

    python benchmarks/bnn_grid.py --method sn --n 50 --seeds 4 --steps 200 --device cpu
    python benchmarks/bnn_grid.py --method dwp --prior-dir PRIOR --kernel-subsample 512 \\
        --n 50 --seeds 10 --steps 10000 --device cuda     # one cell of the paper's grid
    python benchmarks/bnn_grid.py --method sn --n 50 --seeds 10 --steps 200 --device cuda \\
        --sides batched batched_graph                     # eager steps vs CUDA-graph replays
    python benchmarks/bnn_grid.py --method det --n 50 --seeds 4 --steps 200 --device cpu

The deterministic baseline batches ``dwp.bnn_batched.run_deterministic_seeds``: the S x 4
weight-decay candidates in one training, then the S final nets in a second (a single run
trains its 4 candidates and its final net one after the other).

Several sizes (``--n 50 100 200``) train all their cells in one padded training
(``run_classification_cells``, what ``experiment classification --batch-sizes-up-to``
does), against each cell trained alone:

    python benchmarks/bnn_grid.py --method sn --n 50 100 200 --seeds 10 --steps 500 \
        --device cuda --sides batched_graph one_at_a_time
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import time
from functools import partial
from pathlib import Path

import torch

from dwp.bayes import BNN_CONV_IMPLS
from dwp.bnn import run_classification
from dwp.bnn_batched import run_classification_cells, run_deterministic_cells
from dwp.data import load_dataset
from dwp.precision import PRECISIONS
from dwp.priorspec import canonical_method, resolve_priors
from dwp.runtime import select_device


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="sn")
    ap.add_argument("--prior-dir", default=None)
    ap.add_argument("--untrained-dwp", action="store_true",
                    help="--method dwp with untrained paper-architecture VAEs (7x7, 5x5) as "
                    "priors: the same cost per step as trained ones, for timing without a "
                    "prior folder (accuracies then mean nothing)")
    ap.add_argument("--kernels", default=None, help="kernel set (fitted-gaussian)")
    ap.add_argument("--kernel-subsample", type=int, default=None)
    ap.add_argument("--n", type=int, nargs="+", default=[50],
                    help="training-set size(s); several sizes train together, padded")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--ensemble", type=int, default=10)
    ap.add_argument("--test-examples", type=int, default=1000)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--data-root", default=os.environ.get("DWP_DATA_ROOT"))
    ap.add_argument("--sides", nargs="+", default=["batched", "one_at_a_time"],
                    choices=["batched", "batched_graph", "one_at_a_time"],
                    help="what to time: seeds trained together (eagerly or replaying a CUDA "
                    "graph per step) and/or one at a time")
    ap.add_argument("--warmup-steps", type=int, default=None,
                    help="an untimed short run of the seeds first (CUDA start-up, cuDNN and "
                    "cuBLAS set-up), so that the first timed side does not pay for it; default "
                    "20 on CUDA, 0 on CPU")
    ap.add_argument("--conv-impl", default="mixed", choices=BNN_CONV_IMPLS,
                    help="how the variational convolutions compute (BayesConv2d.set_conv_impl)")
    ap.add_argument("--precision", default="fp32", choices=PRECISIONS,
                    help="arithmetic of the data term in training (dwp.bnn.train_bnn)")
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).parent / "results" / "bnn-grid-speed.jsonl")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = select_device(args.device)
    method = canonical_method(args.method)
    if args.untrained_dwp:
        if method != "dwp":
            raise SystemExit("--untrained-dwp goes with --method dwp")
        from dwp.priors import KernelVAE

        torch.manual_seed(0)
        priors = {"conv1": KernelVAE(7).to(dev), "conv2": KernelVAE(5).to(dev)}
    else:
        priors = resolve_priors(method, args.prior_dir, args.kernels, map_location=dev)
    train = load_dataset("mnist", "train", args.data_root)
    test = load_dataset("mnist", "test", args.data_root)
    test = test.subset(torch.arange(min(args.test_examples, len(test))))
    seeds = list(range(args.seeds))
    kw = {"train_data": train, "test_data": test, "steps": args.steps, "priors": priors,
          "device": dev, "kernel_subsample": args.kernel_subsample, "ensemble": args.ensemble,
          "conv_impl": args.conv_impl, "precision": args.precision}

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    warmup = args.warmup_steps if args.warmup_steps is not None else (
        20 if dev.type == "cuda" else 0)
    cells = [(n, s) for n in args.n for s in seeds]
    batched = run_deterministic_cells if method == "deterministic" else partial(
        run_classification_cells, method)
    if warmup > 0:
        batched(cells, **{**kw, "steps": warmup})
    out = {}
    for side in args.sides:
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync()
        t0 = time.perf_counter()
        if side.startswith("batched"):
            recs = batched(cells, **kw, cuda_graph=side == "batched_graph")
        else:
            recs = [run_classification(method, n, s, **kw) for n, s in cells]
        sync()
        out[side] = {
            "seconds": round(time.perf_counter() - t0, 2),
            "mean_accuracy": round(sum(r["accuracy"] for r in recs) / len(recs), 4),
            "cuda_graph": bool(recs[0].get("cuda_graph", False)),
            "peak_memory_bytes": int(torch.cuda.max_memory_allocated() if dev.type == "cuda"
                                     else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                     * 1024),
        }
    row = {"date": datetime.date.today().isoformat(), "device": str(dev),
           "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda"
           else platform.processor() or platform.machine(),
           "threads": torch.get_num_threads(), "torch": torch.__version__, "method": method,
           "n": args.n[0] if len(args.n) == 1 else args.n, "seeds": args.seeds,
           "steps": args.steps,
           "kernel_subsample": args.kernel_subsample, "untrained_dwp": args.untrained_dwp,
           "conv_impl": args.conv_impl, "precision": args.precision,
           "warmup_steps": warmup,
           "test_examples": len(test), **out,
           "load_avg_1min": os.getloadavg()[0]}
    if "one_at_a_time" in out and "batched" in out:
        row["speedup"] = round(out["one_at_a_time"]["seconds"] / out["batched"]["seconds"], 3)
    if "batched_graph" in out and "batched" in out:
        row["graph_speedup"] = round(out["batched"]["seconds"] / out["batched_graph"]["seconds"],
                                     3)
    print(json.dumps(row))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as fh:
        fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
