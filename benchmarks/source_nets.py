"""Benchmark: source nets trained together (batched) vs one at a time, with the same code.

Both modes train exactly the same nets (same seeds, same data orders, same optimiser), so their
held-out accuracies agree up to float rounding; only the wall time and memory differ. Each mode
runs in its own subprocess so peak memory is measured cleanly (CUDA: max allocated; CPU: peak
RSS of the process).

Examples
--------
CPU, small (BENCHMARKS.md "Source nets")::

    python benchmarks/source_nets.py --nets 4 --widths 32 64 --epochs 1 \
        --train-examples 2000 --device cpu --out benchmarks/results/source_nets_cpu.json

H100 acceptance rows (paper config: 256/512, 100 epochs)::

    python benchmarks/source_nets.py --nets 10 --widths 256 512 --epochs 100 --modes batched
    python benchmarks/source_nets.py --nets 100 --widths 256 512 --epochs 100 --modes batched \
        --precision bf16
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch


def run_mode(args: argparse.Namespace) -> dict:
    """Train in one mode inside this process; return timings, memory and accuracies."""
    from dwp.batched import BatchedModel, BatchedTrainer, evaluate_accuracy
    from dwp.data import class_balanced_subset, load_dataset
    from dwp.precision import cudnn_autotune
    from dwp.runtime import select_device
    from dwp.sourcenets import SourceConfig, net_factory

    device = select_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    train = load_dataset("notmnist", "train", root=args.data_root)
    test = load_dataset("notmnist", "test", root=args.data_root)
    if args.train_examples:
        train = train.subset(class_balanced_subset(train.labels, args.train_examples, 0))
    x, y = train.images.to(device), train.labels.to(device)
    xt, yt = test.images.to(device), test.labels.to(device)
    seeds = SourceConfig(nets=args.nets, seed=args.seed).net_seeds()
    factory = net_factory("fconv", args.widths, 1, 10)
    groups = [seeds] if args.mode.startswith("batched") else [[s] for s in seeds]
    conv_impl = args.mode.split("-", 1)[1] if "-" in args.mode else "native"
    chunk = None if args.chunk_size == "all" else (
        "auto" if args.chunk_size == "auto" else int(args.chunk_size))

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    accs, chunks, epoch_s = [], [], []
    sync()
    t0 = time.perf_counter()
    with cudnn_autotune(device):  # as dwp train-source does
        for group in groups:
            model = BatchedModel(factory, group, device=device, conv_impl=conv_impl)
            trainer = BatchedTrainer(model, lr=1e-3, epochs=args.epochs, l2=args.l2,
                                     chunk_size=chunk, precision=args.precision)
            for epoch in range(args.epochs):
                te = time.perf_counter()
                trainer.train_epoch(x, y, epoch, batch_size=args.batch_size)
                sync()
                if len(groups) == 1:  # batched: one time per epoch of all nets
                    epoch_s.append(time.perf_counter() - te)
            eval_chunk = trainer.chunk_size if isinstance(trainer.chunk_size, int) else None
            accs += evaluate_accuracy(model, xt, yt, batch_size=args.batch_size,
                                      chunk_size=eval_chunk).tolist()
            chunks.append(trainer.chunk_size)
    sync()
    wall = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {
        "mode": args.mode, "wall_s": wall, "epoch_s": epoch_s, "peak_memory_bytes": int(peak),
        "peak_memory_kind": "cuda max allocated" if device.type == "cuda" else "process max RSS",
        "heldout_acc": accs, "mean_heldout_acc": sum(accs) / len(accs),
        "chunk_size": chunks[0], "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "precision": args.precision,
        "conv_impl": conv_impl,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nets", type=int, default=4)
    p.add_argument("--widths", type=int, nargs=2, default=[32, 64])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--l2", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-examples", type=int, default=None)
    p.add_argument("--chunk-size", default="auto", help="'auto', 'all' or an integer")
    p.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"],
                   help="forward/backward arithmetic (see dwp train-source --precision)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--data-root", default=os.environ.get("DWP_DATA_ROOT"))
    p.add_argument("--modes", nargs="+", default=["batched", "sequential"],
                   choices=["batched", "sequential", "batched-unfold", "sequential-unfold",
                            "batched-mixed", "sequential-mixed"],
                   help="batched: all nets in one vmapped computation; sequential: one net at a "
                   "time; -unfold: convolutions as im2col + matmul (dwp.convimpl); -mixed: that "
                   "for the one-input-channel conv1 only")
    p.add_argument("--mode", default=None, help=argparse.SUPPRESS)  # internal: one mode
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()

    if args.mode:
        print(json.dumps(run_mode(args)))
        return

    results = []
    base = list(sys.argv[1:])
    for mode in args.modes:
        cmd = [sys.executable, __file__, *base, "--mode", mode]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"{mode} run failed")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        r = results[-1]
        last = r["epoch_s"][-1] if r["epoch_s"] else float("nan")
        print(f"{mode:14s} wall {r['wall_s']:8.1f} s  last epoch {last:6.2f} s  "
              f"peak {r['peak_memory_bytes'] / 2**30:6.2f} "
              f"GiB  mean held-out acc {r['mean_heldout_acc']:.4f}  chunk {r['chunk_size']}")
    record = {
        "benchmark": "source_nets",
        "date": dt.date.today().isoformat(),
        "command": "python benchmarks/source_nets.py " + " ".join(base),
        "torch": torch.__version__,
        "config": {k: v for k, v in vars(args).items() if k not in ("mode", "out")},
        "results": results,
    }
    by_mode = {r["mode"]: r for r in results}
    for slow, fast, key in (("sequential", "batched", "sequential_over_batched"),
                            ("batched", "batched-unfold", "native_over_unfold"),
                            ("batched", "batched-mixed", "native_over_mixed")):
        if slow in by_mode and fast in by_mode:
            a, b = by_mode[slow], by_mode[fast]
            record[key] = a["wall_s"] / b["wall_s"]
            diff = max(abs(u - v) for u, v in zip(a["heldout_acc"], b["heldout_acc"],
                                                  strict=True))
            record[f"max_abs_acc_difference_{fast}_{slow}"] = diff
            print(f"{slow} / {fast} wall time: {record[key]:.2f}x; "
                  f"max per-net accuracy difference {diff:.4f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
