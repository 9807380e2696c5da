"""Append finished ``dwp train-bnn`` runs to a results JSONL (e.g. mnist-classification.jsonl).

Each row is the run's ``metrics.json`` without its bulky or machine-local keys (``layers``,
``model_path``, ``validation``), plus ``prior_dir`` and, when set, ``kernels`` (the kernel set
a fitted Gaussian was fitted on; both from ``config.json``), ``run`` (the folder) and ``note``
(how and where it ran). A run already in the file (same ``run``) is not added
twice, so rerunning after a partly finished sweep is safe.

    python benchmarks/add_runs.py benchmarks/results/mnist-classification.jsonl \
        --note "CPU-2, 1 thread, two runs side by side; paper length" runs/steps-sn-n100-t10000-s*
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DROPPED = ("layers", "model_path", "validation")


def result_row(run: Path, note: str) -> dict:
    """The JSONL row of one run folder (needs metrics.json and config.json)."""
    for name in ("metrics.json", "config.json"):
        if not (run / name).is_file():
            raise SystemExit(f"{run}: no {name}; is the run finished? (train-bnn writes both)")
    row = json.loads((run / "metrics.json").read_text())
    for key in DROPPED:
        row.pop(key, None)
    cfg = json.loads((run / "config.json").read_text())
    row["prior_dir"] = cfg.get("config", {}).get("prior_dir")
    if cfg.get("config", {}).get("kernels"):
        row["kernels"] = cfg["config"]["kernels"]
    row["run"] = str(run)
    row["note"] = note
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", type=Path, help="JSONL to append to")
    ap.add_argument("runs", nargs="+", type=Path, help="train-bnn run folders")
    ap.add_argument("--note", required=True, help="machine, threads, what else ran beside it")
    args = ap.parse_args()

    present = set()
    if args.target.is_file():
        present = {json.loads(line).get("run") for line in args.target.read_text().splitlines()
                   if line.strip()}
    rows = [result_row(run, args.note) for run in args.runs if str(run) not in present]
    with args.target.open("a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
            print(f"{row['run']}: {row['method']} n={row['n']} seed={row['seed']} "
                  f"accuracy {row['accuracy']:.4f}")
    print(f"{len(rows)} rows added to {args.target} ({len(args.runs) - len(rows)} already there)")


if __name__ == "__main__":
    main()
