"""Per-layer size and signal-to-noise of the posteriors of saved ``dwp train-bnn`` runs.

For every variational conv layer of each run's ``model.safetensors``: the median and the
largest of the mean kernels' norms ||mu||, the median over kernels of the SNR
||mu|| / sqrt(sum sigma^2), and the mean log sigma^2. Gaussian posteriors store
``log_sigma2``; truncated-alpha ones store ``alpha_logit`` (sigma^2 = sigmoid(a) mu^2). Reads
tensors only (no priors needed).

    python benchmarks/posterior_stats.py runs/ablate-*-n50-t10000-s0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file


def layer_stats(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """{layer: {"norm", "norm_max", "snr", "log_sigma2"}} for every layer with a ``weight_mu``
    tensor (``norm``: the median kernel norm).

    weight_mu: (out, in, k, k); log_sigma2 the same shape, or alpha_logit broadcastable to it.
    """
    out = {}
    for key, mu in tensors.items():
        if not key.endswith(".weight_mu"):
            continue
        layer = key[: -len(".weight_mu")]
        if f"{layer}.log_sigma2" in tensors:
            var = tensors[f"{layer}.log_sigma2"].exp().expand_as(mu)
        else:
            var = torch.sigmoid(tensors[f"{layer}.alpha_logit"]) * mu**2
        norm = mu.flatten(2).norm(dim=2)
        snr = norm / var.flatten(2).sum(2).sqrt()
        out[layer] = {"norm": norm.median().item(), "norm_max": norm.max().item(),
                      "snr": snr.median().item(),
                      "log_sigma2": var.log().mean().item()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="train-bnn run folders")
    args = ap.parse_args()
    for run in args.runs:
        path = run / "model.safetensors"
        if not path.is_file():
            raise SystemExit(f"{run}: no model.safetensors (not a finished train-bnn run)")
        for layer, s in layer_stats(load_file(str(path))).items():
            print(f"{run}  {layer}: median norm {s['norm']:.4f}  largest {s['norm_max']:.4f}  "
                  f"median SNR {s['snr']:.2f}  "
                  f"mean log sigma^2 {s['log_sigma2']:.2f}")


if __name__ == "__main__":
    main()
