"""Pieces shared by the initialisation experiments: kernel sources per method, nets, summaries."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dwp.init import init_from_prior, load_kernel_sets
from dwp.runtime import DwpError

METHODS = ("dwp", "filters", "xavier")


def load_sources(
    methods: Iterable[str], prior_dir: Path | None, kernels: Path | None
) -> dict[str, Any]:
    """``{method: what init_from_prior takes as priors}``; ``DwpError`` when one is missing."""
    out: dict[str, Any] = {}
    for m in methods:
        if m not in METHODS:
            raise DwpError(f"unknown method {m!r}: choose from {', '.join(METHODS)}")
        if m == "dwp":
            if prior_dir is None:
                raise DwpError("method 'dwp' needs --prior-dir (a folder of per-layer priors)")
            from dwp.priors import load_prior_dir

            out[m] = load_prior_dir(prior_dir, map_location="cpu")
        elif m == "filters":
            if kernels is None:
                raise DwpError("method 'filters' needs --kernels (a kernel-set folder or file)")
            out[m] = load_kernel_sets(kernels)
        else:
            out[m] = None
    return out


def init_factory(
    build: Callable[[], nn.Module], method: str, source: Any
) -> Callable[[], nn.Module]:
    """A factory: ``build()``, Xavier-normal on every conv/linear weight (the paper code's
    default), then the conv kernels from ``method`` (global RNG, so a seeded call is
    reproducible)."""

    def factory() -> nn.Module:
        net = build()
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                nn.init.xavier_normal_(m.weight)
        if method != "xavier":
            report = init_from_prior(net, source, source=method)
            if report.skipped:
                names = ", ".join(n for n, _ in report.skipped)
                raise DwpError(f"{method}: no kernels for layers {names}; check the prior set")
        return net

    return factory


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def summarise(
    rows: list[dict[str, Any]], keys: tuple[str, ...], value: str
) -> list[dict[str, Any]]:
    """Group ``rows`` by ``keys`` and give mean/std/n of ``value`` per group (sorted)."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        if value in r and all(k in r for k in keys):
            groups[tuple(r[k] for k in keys)].append(float(r[value]))
    out = []
    for key in sorted(groups):
        mean, std = mean_std(groups[key])
        out.append({**dict(zip(keys, key, strict=True)), "mean": mean, "std": std,
                    "n": len(groups[key])})
    return out


def expand_for_nets(x: torch.Tensor, n: int) -> torch.Tensor:
    """A shared batch (B, ...) as a per-net batch (n, B, ...) without copying."""
    return x.unsqueeze(0).expand(n, *x.shape)


METHOD_COLORS = {"dwp": "tab:blue", "filters": "tab:orange", "xavier": "tab:green"}
