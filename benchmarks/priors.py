"""Time kernel-VAE prior training (paper settings: Adam 1e-3 -> 0, batch 128).

Cases:
- ``7x7``: the paper's 7x7 VAE (z=2, hidden 32) on ~1.8k kernels for 300 epochs (the paper's
  code: 46 s on an H100; dwp's goal: <= 20 s there);
- ``5x5``: the paper's 5x5 VAE (z=4, hidden 64) on 100k+ kernels.

Kernels come from ``--kernels7`` / ``--kernels5`` (a kernel file's ``train`` tensor) or are
synthetic (oriented edges + noise; speed does not depend on the values). ``--epochs5`` lets the
slow CPU case run fewer epochs: the row then reports seconds per epoch and the extrapolated total.

    python benchmarks/priors.py --device cpu --threads 2 --out benchmarks/results/priors_timing.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import time
from pathlib import Path

import torch

from dwp.kernelsets import load_kernel_file
from dwp.priors.fit import train_kernel_vae
from dwp.runtime import select_device


def synthetic(n: int, k: int, seed: int = 0) -> torch.Tensor:
    """Oriented soft edges under a Gaussian window, plus noise: (n, k, k)."""
    g = torch.Generator().manual_seed(seed)
    th = torch.rand(n, generator=g) * math.pi
    c = torch.linspace(-1, 1, k)
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    proj = xx * torch.cos(th)[:, None, None] + yy * torch.sin(th)[:, None, None]
    w = 0.2 * torch.tanh(3 * proj) * torch.exp(-(xx**2 + yy**2))
    return w + 0.02 * torch.randn(n, k, k, generator=g)


def time_case(w: torch.Tensor, epochs: int, device: torch.device) -> dict:
    if device.type == "cuda":
        train_kernel_vae(w[:256], epochs=1, device=device, show_progress=False)  # warm-up
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    _, hist = train_kernel_vae(w, epochs=epochs, device=device, show_progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    return {"kernels": int(w.shape[0]), "k": int(w.shape[-1]), "epochs": epochs,
            "seconds": round(sec, 2), "seconds_per_epoch": round(sec / epochs, 4),
            "final_train_elbo": round(hist[-1]["train_elbo"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--kernels7", type=Path, default=None)
    ap.add_argument("--kernels5", type=Path, default=None)
    ap.add_argument("--n7", type=int, default=1800, help="synthetic 7x7 kernel count")
    ap.add_argument("--n5", type=int, default=100_000, help="synthetic 5x5 kernel count")
    ap.add_argument("--epochs7", type=int, default=300)
    ap.add_argument("--epochs5", type=int, default=300)
    ap.add_argument("--skip5", action="store_true")
    ap.add_argument("--skip7", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="append the rows to this JSON list")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    rows = []
    if not args.skip7:
        w7 = load_kernel_file(args.kernels7)["train"] if args.kernels7 else synthetic(args.n7, 7)
        rows.append({"case": "7x7", "source": str(args.kernels7 or "synthetic"),
                     **time_case(w7, args.epochs7, device)})
    if not args.skip5:
        w5 = load_kernel_file(args.kernels5)["train"] if args.kernels5 else synthetic(args.n5, 5)
        row = {"case": "5x5", "source": str(args.kernels5 or "synthetic"),
               **time_case(w5, args.epochs5, device)}
        row["extrapolated_300_epochs_s"] = round(row["seconds_per_epoch"] * 300, 1)
        rows.append(row)
    meta = {"date": datetime.date.today().isoformat(), "device": str(device), "device_name": name,
            "threads": torch.get_num_threads(), "torch": torch.__version__}
    rows = [{**meta, **r} for r in rows]
    for r in rows:
        print(json.dumps(r))
    if args.out:
        old = json.loads(args.out.read_text()) if args.out.exists() else []
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(old + rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
