"""Diagnostic: where a kernel prior puts its density — on real kernels or on shrunken ones.

For each layer of a prior folder, the mean log-density (nats per kernel) of held-out kernels
scaled by s in {1, 0.5, 0.1, 0} (s = 0: the all-zero kernel), under the VAE (IWAE estimate) and
under a full-covariance Gaussian fitted to the same training kernels. If log p rises steeply as
s -> 0, the prior term of variational inference pulls posterior means towards zero-amplitude
kernels with a force the data term of 50 images may not resist (see BENCHMARKS.md, "Bayesian CNN").

    python benchmarks/prior_mode.py --prior-dir runs/prior-notmnist-cpu2 \
        --kernels runs/kernels-notmnist-cpu2 --out benchmarks/results/prior-mode-cpu2.json
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import torch

from dwp.kernelsets import find_layers, load_kernel_file
from dwp.priors import FittedGaussian, load_prior_dir

SCALES = (1.0, 0.5, 0.1, 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prior-dir", type=Path, required=True)
    ap.add_argument("--kernels", type=Path, required=True)
    ap.add_argument("--n", type=int, default=200, help="held-out kernels per layer")
    ap.add_argument("--k", type=int, default=1000, help="IWAE samples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    priors = load_prior_dir(args.prior_dir)
    files = find_layers(args.kernels)
    rows = []
    for layer, prior in priors.items():
        data = load_kernel_file(files[layer])
        test = data["test"][: args.n]
        mvn = FittedGaussian.fit(data["train"])
        for s in SCALES:
            w = test * s
            with torch.no_grad():
                vae_lp = prior.iwae_log_prob(w, k=args.k).mean().item()
                mvn_lp = mvn.log_prob(w).mean().item()
            rows.append({"layer": layer, "scale": s, "kernels": int(w.shape[0]),
                         "mean_norm": w.flatten(1).norm(dim=1).mean().item(),
                         "vae_iwae": vae_lp, "fitted_gaussian": mvn_lp})
            print(json.dumps(rows[-1]))
    if args.out:
        result = {"date": datetime.date.today().isoformat(), "prior_dir": str(args.prior_dir),
                  "kernels": str(args.kernels), "iwae_k": args.k, "rows": rows}
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
