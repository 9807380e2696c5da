"""Speed of late training steps on CPU with and without flushing subnormal floats.

Loads the resume file of a deterministic weight-decay candidate that ``dwp train-bnn --prior
deterministic`` (via ``benchmarks/steps_sweep.sh``) was training, rebuilds its data split,
model, Adam state and learning rate, and times the same steps with
``torch.set_flush_denormal(False)`` and ``(True)`` alternately, in one process. Also counts the
subnormal entries of the weights and Adam moments in the file. Appends one JSON row to
``--out``.

    python benchmarks/denormals.py runs/steps-deterministic-n100-t10000-s4/checkpoints/wd-2.pt \
        --n 100 --seed 4 --weight-decay 1e-3 --out benchmarks/results/denormals-cpu.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

from dwp.bnn import stratified_holdout
from dwp.data import class_balanced_subset, load_dataset
from dwp.nets import FConvMNIST


def subnormal_counts(state: dict) -> dict[str, int]:
    """Entries with 0 < |x| < float32's smallest normal, in the weights and Adam's moments."""
    tiny = torch.finfo(torch.float32).tiny

    def count(t: torch.Tensor) -> int:
        return int(((t != 0) & (t.abs() < tiny)).sum())

    out = {"weights": sum(count(v) for v in state["model"].values())}
    for key in ("exp_avg", "exp_avg_sq"):
        out[key] = sum(count(s[key]) for s in state["optimizer"]["state"].values())
    return out


def time_steps(state: dict, x: torch.Tensor, y: torch.Tensor, wd: float, steps: int,
               flush: bool) -> list[float]:
    """Seconds of each of ``steps`` full-batch Adam steps from (a copy of) the saved state."""
    state = copy.deepcopy(state)  # Adam's load_state_dict keeps the tensors it is given
    torch.set_flush_denormal(flush)
    model = FConvMNIST((32, 128))
    model.load_state_dict(state["model"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=wd)
    opt.load_state_dict(state["optimizer"])
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        out.append(time.perf_counter() - t0)
    torch.set_flush_denormal(False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path, help="a wd-I.pt resume file of a deterministic run")
    ap.add_argument("--n", type=int, required=True, help="the run's N")
    ap.add_argument("--seed", type=int, required=True, help="the run's seed")
    ap.add_argument("--weight-decay", type=float, required=True, help="the candidate's decay")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per side and repeat")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    train = load_dataset("mnist", "train")
    idx = class_balanced_subset(train.labels, args.n, args.seed)
    x, y = train.images[idx], train.labels[idx]
    tr, _ = stratified_holdout(y, 0.2, torch.Generator().manual_seed(args.seed))
    x, y = x[tr], y[tr]
    counts = subnormal_counts(state)
    sides: dict[str, list[float]] = {"denormals": [], "flushed": []}
    for _ in range(args.repeats):
        for name, flush in (("denormals", False), ("flushed", True)):
            sides[name] += time_steps(state, x, y, args.weight_decay, args.steps + 2, flush)[2:]
    med = {k: statistics.median(v) for k, v in sides.items()}
    row = {"benchmark": "denormals", "date": str(date.today()), "checkpoint": str(args.checkpoint),
           "step": state["step"], "steps_total": state["steps"], "n_train": len(tr),
           "weight_decay": args.weight_decay, "threads": args.threads,
           "subnormal": counts,
           "s_per_step": {k: round(v, 4) for k, v in med.items()},
           "speedup": round(med["denormals"] / med["flushed"], 2)}
    print(json.dumps(row))
    if args.out is not None:
        with args.out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
