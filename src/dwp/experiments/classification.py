"""Reporting the classification grid (paper Fig. 2 / Fig. 5): per-cell means over seeds, a
markdown table and a plot, with the paper's published points beside ours."""

from __future__ import annotations

import statistics
from typing import Any

import torch

from dwp.priorspec import METHODS

#: The paper's Fig. 2 (MNIST, 10-sample ensemble accuracy, mean over 10 seeds).
PAPER_FIG2 = {
    "sizes": [50, 100, 200, 500, 1000],
    "dwp": [0.800, 0.867, 0.915, 0.945, 0.961],
    "log-uniform": [0.766, 0.839, 0.894, 0.938, 0.958],
    "standard-normal": [0.717, 0.816, 0.890, 0.938, 0.959],
    "deterministic": [0.751, 0.827, 0.879, 0.926, 0.954],
}


def summarize(rows: list[dict[str, Any]], key: str = "accuracy") -> list[dict[str, Any]]:
    """Mean and std of ``key`` per (method, n) over seeds, sorted by method then n."""
    groups: dict[tuple[str, int], list[float]] = {}
    for r in rows:
        groups.setdefault((r["method"], int(r["n"])), []).append(float(r[key]))
    out = []
    for (m, n), v in sorted(groups.items()):
        t = torch.tensor(v, dtype=torch.float64)
        std = t.std().item() if len(v) > 1 else 0.0
        out.append({"method": m, "n": n, "runs": len(v), "mean": t.mean().item(), "std": std})
    return out


def _header(first: str, sizes: list[int]) -> list[str]:
    """The two header lines of a markdown table with column ``first`` then one per N."""
    return ["| " + " | ".join([first, *(f"N={n}" for n in sizes)]) + " |",
            "|---" * (len(sizes) + 1) + "|"]


def summary_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table: method x N, cells 'accuracy mean ± std (runs)', paper value beside."""
    summ = {(s["method"], s["n"]): s for s in summarize(rows)}
    sizes = sorted({n for _, n in summ})
    methods = [m for m in METHODS if any((m, n) in summ for n in sizes)]
    lines = _header("method", sizes)
    for m in methods:
        cells = []
        for n in sizes:
            s = summ.get((m, n))
            paper = ""
            if m in PAPER_FIG2 and n in PAPER_FIG2["sizes"]:
                paper = f" (paper {PAPER_FIG2[m][PAPER_FIG2['sizes'].index(n)]:.3f})"
            cells.append("-" if s is None else
                         f"{s['mean']:.3f} ± {s['std']:.3f} ({s['runs']}){paper}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def calibration_table(rows: list[dict[str, Any]], methods: list[str] | None = None) -> str:
    """A markdown table: method x N, cells 'NLL / ECE (runs)', each the mean over seeds of the
    test NLL (nats per image) and the expected calibration error. Rows without both (records
    that kept only the accuracy) are left out. ``methods`` orders the rows (default: the order
    of :data:`dwp.priorspec.METHODS`, then any other method in order of appearance). Empty
    string if no row has both."""
    full = [r for r in rows if r.get("nll") is not None and r.get("ece") is not None]
    if not full:
        return ""
    nll = {(s["method"], s["n"]): s for s in summarize(full, "nll")}
    ece = {(s["method"], s["n"]): s for s in summarize(full, "ece")}
    sizes = sorted({n for _, n in nll})
    present = list(dict.fromkeys(r["method"] for r in full))
    order = methods if methods is not None else (
        [m for m in METHODS if m in present] + [m for m in present if m not in METHODS])
    lines = _header("method (test NLL / ECE)", sizes)
    for m in order:
        if not any((m, n) in nll for n in sizes):
            continue
        cells = [f"{nll[(m, n)]['mean']:.3f} / {ece[(m, n)]['mean']:.3f} ({nll[(m, n)]['runs']})"
                 if (m, n) in nll else "-" for n in sizes]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_differences(a: dict[int, float], b: dict[int, float]) -> dict[str, Any]:
    """``a`` minus ``b`` over the seeds both have ({seed: accuracy} each): the seeds, the
    differences, their mean and sample sd, t = mean / (sd / sqrt(seeds)) (None for fewer than 2
    seeds or sd 0), and ``wins``, the number of seeds where a > b. Mean and sd are None when no
    seed is shared."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds]
    if not diffs:
        return {"seeds": [], "diffs": [], "mean": None, "sd": None, "t": None, "wins": 0}
    mean = statistics.fmean(diffs)
    sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    t = mean / (sd / len(diffs) ** 0.5) if len(diffs) > 1 and sd > 0 else None
    return {"seeds": seeds, "diffs": diffs, "mean": mean, "sd": sd, "t": t,
            "wins": sum(d > 0 for d in diffs)}


def paired_table(rows: list[dict[str, Any]], method: str = "dwp",
                 baselines: tuple[str, ...] = ("log-uniform", "standard-normal",
                                               "deterministic")) -> str:
    """A markdown table of ``method`` minus each baseline, paired by seed at each N: cells
    'mean difference (t, seeds where method is ahead / shared seeds)'. A seed's first row
    counts where a (method, n, seed) has several. Empty string if no baseline shares a seed
    with ``method``."""
    acc: dict[tuple[str, int], dict[int, float]] = {}
    for r in rows:
        acc.setdefault((r["method"], int(r["n"])), {}).setdefault(int(r["seed"]),
                                                                 float(r["accuracy"]))
    sizes = sorted({n for m, n in acc if m == method})
    lines = []
    for base in baselines:
        cells, shared = [], False
        for n in sizes:
            d = paired_differences(acc[(method, n)], acc.get((base, n), {}))
            if d["mean"] is None:
                cells.append("-")
                continue
            shared = True
            t = f"t {d['t']:+.1f}, " if d["t"] is not None else ""
            cells.append(f"{d['mean']:+.3f} ({t}ahead {d['wins']}/{len(d['seeds'])})")
        if shared:
            lines.append(f"| {method} − {base} | " + " | ".join(cells) + " |")
    if not lines:
        return ""
    return "\n".join([*_header("paired by seed", sizes), *lines])


def plot_accuracy(rows: list[dict[str, Any]], path: Any) -> None:
    """Accuracy vs N per method (mean ± std over seeds), the paper's Fig. 2 points dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dwp.runtime import atomic_path

    summ = summarize(rows)
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, m in enumerate(METHODS):
        pts = [s for s in summ if s["method"] == m]
        color = f"C{i}"
        if pts:
            ax.errorbar([s["n"] for s in pts], [s["mean"] for s in pts],
                        yerr=[s["std"] for s in pts], marker="o", color=color, label=f"{m} (ours)",
                        capsize=3)
        if m in PAPER_FIG2:
            ax.plot(PAPER_FIG2["sizes"], PAPER_FIG2[m], ls="--", marker="x", color=color,
                    alpha=0.6, label=f"{m} (paper)")
    ax.set_xscale("log")
    ax.set_xlabel("training images N (MNIST)")
    ax.set_ylabel("test accuracy (10-sample ensemble)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
