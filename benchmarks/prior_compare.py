"""Paired comparison of kernel priors on the same held-out kernels, with a standard error.

For one layer's kernel file, every VAE prior folder given is scored on each test kernel by its
IWAE log-likelihood estimate (K importance samples; a stochastic lower bound of log p(w)), beside
a full-covariance and an isotropic Gaussian fitted by maximum likelihood on the same training
kernels. Reported per prior: mean log-likelihood (nats per kernel) and the mean per-kernel
difference to the FittedGaussian with its standard error (kernels of the test split come from
held-out source nets, so the SE is a within-test-set figure, not a between-nets one).

    python benchmarks/prior_compare.py runs/kernels-notmnist-cpu2/conv1.safetensors \\
        runs/prior-cpu2-z16k8/conv1 runs/prior-cpu2-z16k8-s1/conv1 runs/prior-notmnist-cpu2/conv1 \\
        --out benchmarks/results/prior-compare-cpu2-conv1.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
from pathlib import Path

import torch

from dwp.kernelsets import load_kernel_file
from dwp.priors import FittedGaussian, IsotropicGaussian, load_prior


def paired(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Mean of a - b and its standard error, for per-kernel scores (N,)."""
    d = (a - b).double()
    return {"mean_diff": d.mean().item(), "se": (d.std() / math.sqrt(d.numel())).item()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kernels", type=Path, help="one layer's kernel file (train + test splits)")
    ap.add_argument("priors", type=Path, nargs="+", help="VAE prior folders (PRIOR/<layer>)")
    ap.add_argument("--k", type=int, default=1000, help="IWAE samples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    data = load_kernel_file(args.kernels)
    train, test = data["train"], data["test"]
    mvn = FittedGaussian.fit(train).log_prob(test)
    iso = IsotropicGaussian.fit(train).log_prob(test)
    rows = [{"prior": "fitted_gaussian", "loglik": mvn.mean().item()},
            {"prior": "isotropic_gaussian", "loglik": iso.mean().item(), **paired(iso, mvn)}]
    for folder in args.priors:
        prior = load_prior(folder)
        if prior.explicit:
            raise SystemExit(f"{folder}: a {prior.family} prior, not a VAE; the Gaussians are "
                             f"fitted and compared here already, pass VAE prior folders only")
        g = torch.Generator().manual_seed(args.seed)
        with torch.no_grad():
            ll = prior.iwae_log_prob(test, k=args.k, generator=g)
        rows.append({"prior": str(folder), "config": prior.config(), "iwae_k": args.k,
                     "loglik": ll.mean().item(), **paired(ll, mvn)})
    for r in rows:
        extra = f"  vs mvn {r['mean_diff']:+.2f} ± {r['se']:.2f}" if "se" in r else ""
        print(f"{r['prior']:<45} {r['loglik']:8.2f}{extra}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "kernels": str(args.kernels), "n_train": int(train.shape[0]),
            "n_test": int(test.shape[0]), "date": datetime.date.today().isoformat(),
            "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
