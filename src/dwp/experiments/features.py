"""Random-feature extraction (paper Sec. 4.2, Fig. 3): frozen random conv layers, trained head.

For each width factor k, method (dwp / filters / xavier) and seed, an MNIST ``FConvMNIST`` with
conv widths ``round(k * (32, 128))`` (at least 1) gets its conv kernels from the method and is
frozen; only the linear classifier is trained on the frozen features. Since the conv layers never
change, the features of every training and test image are computed once per net -- for all the
seeds of a (k, method) cell at once, as one batched ``torch.func`` computation
(:class:`dwp.batched.BatchedModel`) -- and the heads of all seeds are trained together as one
batched logistic regression (Adam, the paper's optimiser, fixed lr; nothing is tuned on the
test set).

``standardize=True`` (off by default; the paper feeds the raw features) is a control for
feature *scale*: every feature is shifted and scaled by its mean and std over the **training**
images of its own net (:func:`standardize_features`) before the head sees it, and the test
features get the same training-set transform. Kernels drawn from a prior fitted on wide source
layers are much smaller than Xavier's kernels for a narrow target layer, so their raw features
are small and a fixed-lr head trained for a few epochs lags behind for that reason alone.

Results: one JSONL row per (k, method, seed) in ``results.jsonl`` (a finished cell is skipped on
rerun), ``summary.json`` (mean +- std over seeds) and ``features.png``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dwp.batched import BatchedModel
from dwp.data import ImageDataset
from dwp.experiments.common import METHOD_COLORS, expand_for_nets, init_factory, summarise
from dwp.nets import FConvMNIST
from dwp.precision import flush_denormals
from dwp.runtime import append_jsonl, atomic_path, atomic_write_json, progress, read_jsonl

WIDTH_FACTORS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)


@dataclass
class FeaturesConfig:
    """Settings of the random-feature experiment (defaults: the full MNIST run)."""

    width_factors: tuple[float, ...] = WIDTH_FACTORS
    methods: tuple[str, ...] = ("dwp", "filters", "xavier")
    seeds: int = 10
    seed: int = 0
    train_examples: int | None = None  # None: all 60,000
    test_examples: int | None = None  # None: all 10,000
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    feature_batch: int = 500
    standardize: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["width_factors"] = list(self.width_factors)
        d["methods"] = list(self.methods)
        return d


@torch.no_grad()
def stacked_features(
    model: BatchedModel, images: torch.Tensor, batch_size: int, device: torch.device
) -> torch.Tensor:
    """Frozen ``features`` outputs of every net: images (N, 1, 28, 28) -> (n, N, D) on device."""
    feats = []
    params = {k: v.detach() for k, v in model.params.items()}
    for start in range(0, images.shape[0], batch_size):
        xb = images[start : start + batch_size].to(device)
        feats.append(_features_forward(model, params, expand_for_nets(xb, model.n)))
    return torch.cat(feats, dim=1)


def _features_forward(model: BatchedModel, params, x: torch.Tensor) -> torch.Tensor:
    from torch.func import functional_call, vmap

    features = model.base.features
    sub = {k[len("features."):]: v for k, v in params.items() if k.startswith("features.")}

    def one(p, xi):
        return functional_call(features, p, (xi,))

    return vmap(one, in_dims=(0, 0))(sub, x)


@torch.no_grad()
def standardize_features(
    train_x: torch.Tensor, *others: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, ...]:
    """Standardise features with the training set's statistics only.

    train_x: (n, N, D) features of n nets on N training images; each of ``others``: (n, M, D)
    (e.g. the test features). Per net and feature, mean and (population) std are computed over
    the N training images; ``(x - mean) / (std + eps)`` is returned for ``train_x`` and every
    tensor of ``others``, in that order. A feature constant on the training set maps to
    (x - mean) / eps, i.e. 0 on the training set.
    """
    mean = train_x.mean(1, keepdim=True)
    std = train_x.std(1, keepdim=True, unbiased=False) + eps
    return tuple((x - mean) / std for x in (train_x, *others))


def train_heads(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    cfg: FeaturesConfig,
    generator: torch.Generator,
    num_classes: int = 10,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train one linear head per net on its features.

    train_x: (n, N, D); train_y: (N,). Xavier-normal weights, zero biases, Adam with
    ``cfg.lr``, ``cfg.epochs`` passes of minibatches of ``cfg.batch_size`` (one shared order
    per epoch from ``generator``). Returns weights (n, D, C) and biases (n, C).
    """
    n, N, D = train_x.shape
    dev = train_x.device
    std = (2.0 / (D + num_classes)) ** 0.5
    w = (torch.randn(n, D, num_classes, generator=generator) * std).to(dev).requires_grad_(True)
    b = torch.zeros(n, num_classes, device=dev, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=cfg.lr)
    y = train_y.to(dev)
    with flush_denormals(dev):
        for _ in range(cfg.epochs):
            order = torch.randperm(N, generator=generator).to(dev)
            for start in range(0, N, cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                logits = torch.baddbmm(b[:, None, :], train_x[:, idx], w)
                loss = F.cross_entropy(
                    logits.reshape(-1, num_classes), y[idx].repeat(n), reduction="mean"
                ) * n
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return w.detach(), b.detach()


@torch.no_grad()
def head_accuracy(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor):
    """Per-net accuracy of linear heads: x (n, N, D), y (N,) -> (n,) float."""
    pred = torch.baddbmm(b[:, None, :], x, w).argmax(-1)
    return (pred == y.to(pred.device)).double().mean(1)


def run_features(
    cfg: FeaturesConfig,
    sources: dict[str, Any],
    train: ImageDataset,
    test: ImageDataset,
    out: Path,
    device: torch.device,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """Run (or resume) every (k, method) cell; returns all result rows of ``out/results.jsonl``."""
    results = out / "results.jsonl"
    done = {(r["width_factor"], r["method"]) for r in read_jsonl(results)}
    cells = [(k, m) for k in cfg.width_factors for m in cfg.methods]
    seeds = [cfg.seed * 1000 + i for i in range(cfg.seeds)]
    bar = progress(total=len(cells), desc="features", enabled=show_progress)
    for k, m in cells:
        if (k, m) in done:
            bar.update(1)
            continue
        t0 = time.perf_counter()
        factory = init_factory(lambda k=k: FConvMNIST(width_factor=k), m, sources.get(m))
        model = BatchedModel(factory, seeds, device=device)
        widths = list(model.base.widths)
        tr = stacked_features(model, train.images, cfg.feature_batch, device)
        te = stacked_features(model, test.images, cfg.feature_batch, device)
        if cfg.standardize:
            tr, te = standardize_features(tr, te)
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + round(k * 1024))
        w, b = train_heads(tr, train.labels, cfg, gen)
        train_acc = head_accuracy(tr, train.labels, w, b)
        test_acc = head_accuracy(te, test.labels, w, b)
        secs = time.perf_counter() - t0
        for i, s in enumerate(seeds):
            append_jsonl(results, {
                "experiment": "features", "dataset": "mnist", "width_factor": k,
                "widths": widths, "method": m, "seed": s, "test_acc": float(test_acc[i]),
                "train_acc": float(train_acc[i]), "standardize": cfg.standardize,
                "cell_seconds": round(secs, 2),
                "device": str(device),
            })
        del tr, te
        bar.set_postfix(k=f"{k:g}", method=m, acc=f"{float(test_acc.mean()):.3f}")
        bar.update(1)
    bar.close()
    rows = read_jsonl(results)
    summary = summarise(rows, ("width_factor", "method"), "test_acc")
    atomic_write_json(out / "summary.json", {"config": cfg.to_dict(), "test_acc": summary})
    plot_features(summary, out / "features.png", cfg.standardize)
    return rows


def plot_features(summary: list[dict[str, Any]], path: Path, standardize: bool = False) -> None:
    """Mean +- std test accuracy vs width factor k (log2 axis), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for m in sorted({r["method"] for r in summary}):
        rs = sorted((r for r in summary if r["method"] == m), key=lambda r: r["width_factor"])
        ks = [r["width_factor"] for r in rs]
        ax.errorbar(ks, [100 * r["mean"] for r in rs], yerr=[100 * r["std"] for r in rs],
                    label=m, marker="o", capsize=3, color=METHOD_COLORS.get(m))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("width factor k (conv widths = k x (32, 128))")
    ax.set_ylabel("test accuracy, % (mean ± std over seeds)")
    head = "standardised features -> linear head" if standardize else "raw features -> linear head"
    ax.set_title(f"MNIST random features: frozen convs,\n{head}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
