"""Choose a kernel VAE's latent size / epochs on a validation split of the TRAINING kernels.

The last ``--val-nets`` source nets of a kernel file's ``train`` split are held out (kernels
are split by net, as ``collect-kernels`` does); each configuration ``Z:EPOCHS:ARCH[:K]`` (K:
importance samples in the training objective; 1, the default, is the ELBO) is trained on the
rest and scored by its IWAE (K = 1000) log-likelihood on the held-out kernels, beside a
full-covariance Gaussian fitted on the same kernels. The test split is never read.

    python benchmarks/vae_selection.py runs/kernels-notmnist-cpu2/conv1.safetensors \\
        2:300:paper 8:300:generic 16:300:generic 32:300:generic 16:1000:generic \\
        --out benchmarks/results/vae-selection-cpu2-conv1.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dwp.kernelsets import load_kernel_file
from dwp.priors import FittedGaussian
from dwp.priors.fit import train_kernel_vae


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kernels", type=Path)
    ap.add_argument("configs", nargs="+",
                    help="Z:EPOCHS:ARCH[:K], e.g. 2:300:paper or 16:300:generic:8")
    ap.add_argument("--val-nets", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="append JSON lines here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_kernel_file(args.kernels)
    w, nets = data["train"], data["train_net"]
    held = torch.isin(nets, nets.unique()[-args.val_nets:])
    tr, va = w[~held], w[held]
    rows = [{"config": "fitted_gaussian", "n_train": int(tr.shape[0]), "n_val": int(va.shape[0]),
             "val_loglik": FittedGaussian.fit(tr).log_prob(va).mean().item()}]
    print(json.dumps(rows[-1]), flush=True)
    for spec in args.configs:
        z, epochs, arch, *rest = spec.split(":")
        train_k = int(rest[0]) if rest else 1
        vae, hist = train_kernel_vae(tr, z_dim=int(z), epochs=int(epochs), arch=arch,
                                     train_k=train_k, show_progress=False)
        torch.manual_seed(0)
        rows.append({"config": spec, "z_dim": int(z), "epochs": int(epochs), "arch": arch,
                     "train_k": train_k,
                     "train_elbo": hist[-1]["train_elbo"],
                     "val_loglik": vae.iwae_log_prob(va, k=1000).mean().item()})
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        with args.out.open("a") as fh:
            for r in rows:
                fh.write(json.dumps({"kernels": str(args.kernels), **r}) + "\n")


if __name__ == "__main__":
    main()
