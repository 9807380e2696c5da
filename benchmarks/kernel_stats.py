"""Structure statistics of kernel sets (those BENCHMARKS.md tabulates), one JSON line per layer.

For each layer file of each kernel-set folder (``dwp collect-kernels`` output) or ``.npy`` file:
the number of train kernels, their norm percentiles, roughness (``dwp.kernels.roughness``:
squared neighbour differences over squared entries, pooled; white noise 3.2 for 5x5, 3.43 for
7x7) and the fraction of variance in the top 4 / 8 principal directions.

    python benchmarks/kernel_stats.py runs/kernels-notmnist-cpu3 runs/kernels-notmnist-cpu3aug
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dwp.kernels import norm_stats, principal_variance, roughness
from dwp.kernelsets import KERNEL_SUFFIXES, load_kernel_file


def layer_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.suffix in KERNEL_SUFFIXES)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", type=Path, help="kernel-set folders or layer files")
    ap.add_argument("--out", type=Path, default=None, help="also write the lines here")
    args = ap.parse_args()
    rows = []
    for path in args.paths:
        for f in layer_files(path):
            w = load_kernel_file(f)["train"]
            norms = w.flatten(1).norm(dim=1)
            stats = norm_stats(norms)
            row = {"kernel_set": str(path), "layer": f.stem, "k": int(w.shape[-1]),
                   "train_kernels": int(w.shape[0]),
                   "norm_p25": round(stats["p25"], 4), "norm_p50": round(stats["p50"], 4),
                   "norm_p95": round(stats["p95"], 4), "roughness": round(roughness(w), 3),
                   **{k: round(v, 3) for k, v in principal_variance(w).items()}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
