"""Collect `dwp experiment gap` runs into one results JSON and a Table-1-style markdown table.

    python benchmarks/gap.py --run trained=runs/gap-dwp --run frozen=runs/gap-dwp-frozen \
        --out benchmarks/results/gap-cpu.json --machine "CPU-2"

Each run folder holds gap.json (written by `dwp experiment gap`); the table has one row per
(net, layer) with the gap for the net's reverse model and for r(z|w) = p(z), in nats summed over
the layer (± one standard error), plus per-kernel values and the seconds the estimate took.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
from pathlib import Path

import torch

from dwp.runtime import atomic_write_json


def _pm(s: dict, key: str) -> str:
    se = s["sum_se"] if key == "sum" else s["se"]
    return f"{s[key]:.3g} ± {se:.2g}" if se is not None else f"{s[key]:.3g}"


def table(runs: dict[str, dict]) -> str:
    lines = [
        "| net | layer | kernels evaluated / all | K | gap, net's r (nats, layer sum) | "
        "gap, r = p(z) (nats, layer sum) | per kernel: net's r / r = p(z) | log p_IWAE per "
        "kernel | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, rec in runs.items():
        k = rec["config"]["k"]
        for r in rec["layers"]:
            a, b = r["gap_trained_r"], r["gap_prior_r"]
            lines.append(
                f"| {label} | {r['layer']} | {r['evaluated']} / {r['kernels']} | {k} | "
                f"{_pm(a, 'sum')} | {_pm(b, 'sum')} | {_pm(a, 'per_kernel')} / "
                f"{_pm(b, 'per_kernel')} | {r['log_p_iwae']['per_kernel']:.2f} | "
                f"{r['seconds']:.0f} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, help="LABEL=RUN_FOLDER")
    ap.add_argument("--out", required=True, help="results JSON to write")
    ap.add_argument("--machine", default=platform.node())
    args = ap.parse_args()
    runs = {}
    for item in args.run:
        label, _, folder = item.rpartition("=")
        runs[label] = json.loads((Path(folder) / "gap.json").read_text())
        runs[label]["run_folder"] = folder
    atomic_write_json(args.out, {
        "machine": args.machine, "date": dt.date.today().isoformat(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "runs": runs,
    })
    print(table(runs))


if __name__ == "__main__":
    main()
