"""Diagnostic: a paper-length N = 50 Bayesian CNN with scale-matched isotropic Gaussian priors.

Each conv layer gets N(mean kernel, s^2 I), fitted by maximum likelihood on the training split of
that layer's kernel set (``IsotropicGaussian.fit``): the counterpart of the standard normal at
the source kernels' own scale. Comparing it with ``--prior sn`` (scale 1), ``--prior mvn`` (same
kernels, full covariance) and ``--prior dwp`` separates the effect of the prior's *scale* from
that of its *structure* (see BENCHMARKS.md, "Bayesian CNN"). MNIST test set, 10-sample ensemble.

    python benchmarks/bnn_isotropic.py runs/kernels-notmnist-cpu3 --seed 0 \\
        --out runs/bnn-paperlen-iso3-s0.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dwp.bnn import run_classification
from dwp.data import load_dataset
from dwp.kernelsets import find_layers, load_kernel_file
from dwp.priors import IsotropicGaussian


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kernels", type=Path, help="kernel-set folder made by collect-kernels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--steps", type=int, default=10000)
    ap.add_argument("--kernel-subsample", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, required=True, help="JSON record to write")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    priors = {name: IsotropicGaussian.fit(load_kernel_file(path)["train"])
              for name, path in find_layers(args.kernels).items()}
    scales = {name: float(p.log_var.exp().sqrt()) for name, p in priors.items()}
    print("fitted prior sd per layer:", scales, flush=True)
    rec = run_classification("fitted-gaussian", args.n, args.seed,
                             train_data=load_dataset("mnist", "train"),
                             test_data=load_dataset("mnist", "test"), steps=args.steps,
                             priors=priors, device=args.device,
                             kernel_subsample=args.kernel_subsample)
    rec.update(method="isotropic-gaussian (diagnostic)", prior_sd=scales,
               kernels=str(args.kernels))
    args.out.write_text(json.dumps(rec) + "\n")
    print(json.dumps({k: rec[k] for k in ("method", "seed", "accuracy", "nll", "seconds")}))


if __name__ == "__main__":
    main()
