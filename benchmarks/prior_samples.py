"""Diagnostic: are a prior's samples the size of the kernels it was fitted to?

For each layer of each prior folder: ``dwp.priors.fit.sample_norm_check`` against the layer's
training kernels (norm percentiles of 10,000 samples and of the kernels, and the fractions of
samples above the kernels' 99th-percentile norm and above twice it), and for a VAE the decoder's
mean standard deviation per entry in bands of |z| under p(z) = N(0, I) (an uncapped decoder's
variance can grow far from where the encoder put the training kernels; see BENCHMARKS.md,
"Stop 36").

    python benchmarks/prior_samples.py --kernels runs/kernels-notmnist-cpu3aug \
        benchmarks/priors/notmnist-cpu3aug runs/prior-cap --out benchmarks/results/x.json
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import torch

from dwp.kernelsets import find_layers, load_kernel_file
from dwp.priors import KernelVAE, load_prior_dir
from dwp.priors.fit import sample_norm_check

#: Bands of |z| for the decoder standard deviation (upper bounds; the last band is open).
Z_BANDS = (1.0, 1.5, 2.0, 2.5, 3.0)


@torch.no_grad()
def decoder_sd_by_radius(vae: KernelVAE, n: int = 20_000, seed: int = 0) -> list[dict]:
    """Mean decoder sd per entry (and mean decoder-mean norm) of z ~ N(0, I) by |z| band."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, vae.z_dim, generator=gen)
    mu, log_var = vae.decode(z)
    sd = (0.5 * log_var).exp().flatten(1).mean(1)
    mean_norm = mu.flatten(1).norm(dim=1)
    radius = z.norm(dim=1)
    rows, lo = [], 0.0
    for hi in (*Z_BANDS, float("inf")):
        m = (radius >= lo) & (radius < hi)
        if m.any():
            rows.append({"z_norm_from": lo, "z_norm_to": hi, "share": float(m.float().mean()),
                         "decoder_sd": float(sd[m].mean()),
                         "decoder_mean_norm": float(mean_norm[m].mean())})
        lo = hi
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prior_dirs", nargs="+", type=Path, help="prior folders (dwp train-prior)")
    ap.add_argument("--kernels", type=Path, required=True,
                    help="the kernel-set folder whose 'train' kernels are the reference")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    files = find_layers(args.kernels)
    results = []
    for prior_dir in args.prior_dirs:
        for layer, prior in load_prior_dir(prior_dir).items():
            if layer not in files:
                raise SystemExit(f"{prior_dir}: layer {layer} has no kernel file in {args.kernels}")
            train = load_kernel_file(files[layer])["train"]
            gen = torch.Generator().manual_seed(args.seed)
            row = {"prior_dir": str(prior_dir), "layer": layer,
                   **sample_norm_check(prior, train, generator=gen)}
            if isinstance(prior, KernelVAE):
                row["max_log_var"] = prior.max_log_var
                row["decoder_sd_by_z_norm"] = decoder_sd_by_radius(prior, seed=args.seed)
            results.append(row)
            sn, dn = row["sample_norm"], row["data_norm"]
            print(f"{prior_dir} {layer}: sample norm p50/p90/p99 {sn['p50']:.3f} / {sn['p90']:.3f}"
                  f" / {sn['p99']:.3f}, training kernels {dn['p50']:.3f} / {dn['p90']:.3f} / "
                  f"{dn['p99']:.3f}; samples > kernels' p99 {row['samples_above_data_p99']:.1%},"
                  f" > 2x {row['samples_above_2x_data_p99']:.1%}")
    if args.out:
        out = {"date": datetime.date.today().isoformat(), "kernels": str(args.kernels),
               "seed": args.seed, "rows": results}
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
