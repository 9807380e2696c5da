"""Time the MNIST initialisation experiments (paper Fig. 3 + Fig. 4): goal <= 10 min on one H100.

Runs ``dwp experiment features`` and ``dwp experiment convergence`` (full paper-sized
configuration by default, ``--quick`` for the small CPU one) into fresh folders under ``--out``
and writes the wall-clock times and devices to ``benchmarks/results/init_experiments_timing.json``.

    python benchmarks/init_experiments.py --prior-dir runs/prior-notmnist --kernels \
        runs/kernels-notmnist [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import platform
import shutil
import time
from pathlib import Path

import torch

from dwp.cli import main as dwp_main
from dwp.runtime import atomic_write_json


def run(args: list[str]) -> float:
    t0 = time.perf_counter()
    code = dwp_main(args)
    if code != 0:
        raise SystemExit(f"dwp {' '.join(args)} failed with exit code {code}")
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prior-dir", required=True)
    p.add_argument("--kernels", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="runs/bench-init")
    p.add_argument("--data-root", default=None)
    p.add_argument("--results", default="benchmarks/results/init_experiments_timing.json")
    a = p.parse_args()
    out = Path(a.out)
    if out.exists():
        shutil.rmtree(out)
    common = ["--prior-dir", a.prior_dir, "--kernels", a.kernels, "--device", a.device,
              "--no-progress"] + (["--quick"] if a.quick else [])
    if a.data_root:
        common += ["--data-root", a.data_root]
    t_feat = run(["experiment", "features", "--out", str(out / "features"), *common])
    t_conv = run(["experiment", "convergence", "--out", str(out / "convergence"), *common])
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() and a.device != "cpu" else (
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    record = {"config": "quick" if a.quick else "full", "device": dev,
              "features_seconds": round(t_feat, 1), "convergence_seconds": round(t_conv, 1),
              "total_seconds": round(t_feat + t_conv, 1), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d")}
    atomic_write_json(a.results, record)
    print(record)


if __name__ == "__main__":
    main()
