"""Convergence from a prior-based initialisation (paper Sec. 4.3, Fig. 4 and Fig. 7).

Two settings, each trained from dwp / filters / xavier initial kernels with several seeds,
all seeds of a method at once as one batched ``torch.func`` computation
(:class:`dwp.batched.BatchedModel`), Adam with the paper's default settings:

- ``fconv``: the MNIST classification net (``FConvMNIST``, widths (32, 128)), every layer
  trained; test accuracy every ``eval_every`` steps;
- ``vae``: the paper's convolutional VAE on binarised MNIST (:class:`dwp.convvae.ConvVAE`);
  test ELBO (nats per image, one posterior sample, fixed noise) every ``eval_every`` steps, and
  images decoded from 16 fixed latent codes after the steps in ``sample_steps`` (Fig. 7).

Results: rows in ``results.jsonl`` (a finished (model, method) cell is skipped on rerun),
``vae_samples_<method>.safetensors``, ``summary.json``, ``convergence.png`` (curves, mean +- std
bands) and ``vae_samples.png`` (rows: methods, columns: steps).
"""

from __future__ import annotations

import math
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dwp.batched import BatchedModel
from dwp.convvae import DEFAULT_Z, ConvVAE, binarize, elbo
from dwp.data import ImageDataset
from dwp.experiments.common import METHOD_COLORS, expand_for_nets, init_factory, summarise
from dwp.nets import FConvMNIST
from dwp.precision import flush_denormals
from dwp.runtime import (
    DwpError,
    append_jsonl,
    atomic_path,
    atomic_write_json,
    progress,
    read_jsonl,
)

MODELS = ("fconv", "vae")


@dataclass
class ConvergenceConfig:
    """Settings of the convergence experiment (defaults: the full MNIST run)."""

    models: tuple[str, ...] = MODELS
    methods: tuple[str, ...] = ("dwp", "filters", "xavier")
    seeds: int = 5
    seed: int = 0
    steps: int = 1000
    vae_steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    eval_every: int = 25
    vae_eval_every: int = 50
    test_examples: int | None = None  # None: all 10,000
    sample_steps: tuple[int, ...] = (100, 200, 300, 400, 500)
    eval_batch: int = 1000

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("models", "methods", "sample_steps"):
            d[key] = list(d[key])
        return d


def _build(model: str):
    if model == "fconv":
        return lambda: FConvMNIST()
    if model == "vae":
        return lambda: ConvVAE()
    raise DwpError(f"unknown model {model!r}: choose from {', '.join(MODELS)}")


def _batches(n_examples: int, batch_size: int, steps: int, generator: torch.Generator):
    """Indices of ``steps`` minibatches: shuffled epochs, one shared order for all nets."""
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if order.numel() < batch_size:
            order = torch.cat([order, torch.randperm(n_examples, generator=generator)])
        yield order[:batch_size]
        order = order[batch_size:]


@torch.no_grad()
def _eval_accuracy(model: BatchedModel, test: ImageDataset, cfg, device) -> torch.Tensor:
    params = {k: v.detach() for k, v in model.params.items()}
    correct = torch.zeros(model.n, device=device)
    for start in range(0, len(test), cfg.eval_batch):
        xb = test.images[start : start + cfg.eval_batch].to(device)
        yb = test.labels[start : start + cfg.eval_batch].to(device)
        logits = model.forward(expand_for_nets(xb, model.n), params=params, train=False)
        correct += (logits.argmax(-1) == yb).sum(1)
    return correct / len(test)


@torch.no_grad()
def _eval_elbo(model: BatchedModel, test_bin: torch.Tensor, cfg, device) -> torch.Tensor:
    params = {k: v.detach() for k, v in model.params.items()}
    total = torch.zeros(model.n, device=device, dtype=torch.float64)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(12345)  # the same posterior noise at every evaluation
        for start in range(0, test_bin.shape[0], cfg.eval_batch):
            xb = test_bin[start : start + cfg.eval_batch].to(device)
            logits, mu, logvar = model.forward(expand_for_nets(xb, model.n), params=params,
                                               train=False)
            total += _elbo_nets(logits, mu, logvar, xb).sum(1).double()
    return total / test_bin.shape[0]


def _elbo_nets(logits, mu, logvar, x) -> torch.Tensor:
    """Per-net, per-image ELBO: logits (n, B, 1, 28, 28), mu/logvar (n, B, z) -> (n, B)."""
    n = logits.shape[0]
    flat = elbo(logits.flatten(0, 1), mu.flatten(0, 1), logvar.flatten(0, 1),
                expand_for_nets(x, n).flatten(0, 1))
    return flat.view(n, -1)


@torch.no_grad()
def _decode_samples(model: BatchedModel, z: torch.Tensor, device) -> torch.Tensor:
    """Mean images of net 0 for codes z (m, zdim): (m, 1, 28, 28) on CPU."""
    net = model.net(0).to(device).eval()
    return torch.sigmoid(net.decode(z.to(device))).cpu()


def run_cell(
    name: str,
    method: str,
    source: Any,
    cfg: ConvergenceConfig,
    train: ImageDataset,
    test: ImageDataset,
    device: torch.device,
    show_progress: bool = True,
) -> tuple[list[dict[str, Any]], torch.Tensor | None]:
    """Train all seeds of one (model, method) cell; returns result rows and VAE samples."""
    seeds = [cfg.seed * 1000 + i for i in range(cfg.seeds)]
    model = BatchedModel(init_factory(_build(name), method, source), seeds, device=device)
    opt = torch.optim.Adam(list(model.params.values()), lr=cfg.lr)
    steps = cfg.steps if name == "fconv" else cfg.vae_steps
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + 17)
    train_x = binarize(train.images) if name == "vae" else train.images
    test_x = binarize(test.images) if name == "vae" else test.images
    z_fixed = torch.randn(16, DEFAULT_Z, generator=torch.Generator().manual_seed(99))
    samples = []
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()

    def evaluate(step: int) -> None:
        if name == "fconv":
            vals, key = _eval_accuracy(model, test, cfg, device), "test_acc"
        else:
            vals, key = _eval_elbo(model, test_x, cfg, device), "test_elbo"
        for i, s in enumerate(seeds):
            rows.append({"experiment": "convergence", "model": name, "method": method,
                         "seed": s, "step": step, key: float(vals[i]),
                         "seconds": round(time.perf_counter() - t0, 2)})

    evaluate(0)
    bar = progress(total=steps, desc=f"{name}/{method}", enabled=show_progress, leave=False)
    # The VAE's reparameterisation noise comes from torch's global RNG: seed it per model (the
    # same noise for every method: common random numbers), so that a cell's numbers do not
    # depend on which cells ran before it in this process (e.g. after a resume).
    cuda = [device] if device.type == "cuda" else []
    with flush_denormals(device), torch.random.fork_rng(devices=cuda):
        torch.manual_seed(zlib.crc32(f"convergence/{cfg.seed}/{name}".encode()))
        for step, idx in enumerate(_batches(len(train), cfg.batch_size, steps, gen), start=1):
            xb = expand_for_nets(train_x[idx].to(device), model.n)
            if name == "fconv":
                yb = train.labels[idx].to(device)
                logits = model.forward(xb, train=True)
                loss = F.cross_entropy(logits.flatten(0, 1), yb.repeat(model.n)) * model.n
            else:
                logits, mu, logvar = model.forward(xb, train=True)
                loss = -_elbo_nets(logits, mu, logvar, xb[0]).mean(1).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            every = cfg.eval_every if name == "fconv" else cfg.vae_eval_every
            if step % every == 0 or step == steps:
                evaluate(step)
                last = rows[-1].get("test_acc", rows[-1].get("test_elbo"))
                bar.set_postfix({"metric": f"{last:.3f}"})
            if name == "vae" and step in cfg.sample_steps:
                samples.append(_decode_samples(model, z_fixed, device))
            bar.update(1)
    bar.close()
    return rows, (torch.stack(samples) if samples else None)


def run_convergence(
    cfg: ConvergenceConfig,
    sources: dict[str, Any],
    train: ImageDataset,
    test: ImageDataset,
    out: Path,
    device: torch.device,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """Run (or resume) every (model, method) cell, then write the summary and the figures."""
    from safetensors.torch import save_file

    results = out / "results.jsonl"
    done = {(r["model"], r["method"]) for r in read_jsonl(results)}
    cells = [(n, m) for n in cfg.models for m in cfg.methods]
    bar = progress(total=len(cells), desc="convergence", enabled=show_progress)
    for name, method in cells:
        if (name, method) not in done:
            rows, samples = run_cell(name, method, sources.get(method), cfg, train, test,
                                     device, show_progress)
            if samples is not None:
                with atomic_path(out / f"vae_samples_{method}.safetensors") as tmp:
                    save_file({"samples": samples.contiguous()}, str(tmp))
            for r in rows:  # rows go last: a cell counts as done only once all are written
                append_jsonl(results, {**r, "device": str(device)})
        bar.update(1)
    bar.close()
    rows = read_jsonl(results)
    summary = {
        "config": cfg.to_dict(),
        "test_acc": summarise([r for r in rows if r["model"] == "fconv"],
                              ("method", "step"), "test_acc"),
        "test_elbo": summarise([r for r in rows if r["model"] == "vae"],
                               ("method", "step"), "test_elbo"),
    }
    atomic_write_json(out / "summary.json", summary)
    plot_convergence(summary, out / "convergence.png")
    plot_vae_samples(out, cfg, out / "vae_samples.png")
    return rows


def diverged_cells(rows: list[dict[str, Any]]) -> list[str]:
    """One line per (model, method) with nets whose metric went non-finite (NaN / inf): how
    many of its nets, and the first step at which one did. Empty when every value is finite."""
    first: dict[tuple[str, str], int] = {}
    nets: dict[tuple[str, str], set] = {}
    bad: dict[tuple[str, str], set] = {}
    for r in rows:
        key = (r["model"], r["method"])
        nets.setdefault(key, set()).add(r["seed"])
        value = r.get("test_acc", r.get("test_elbo"))
        if value is not None and not math.isfinite(value):
            bad.setdefault(key, set()).add(r["seed"])
            first[key] = min(first.get(key, r["step"]), r["step"])
    metric = {"fconv": "test accuracy", "vae": "test ELBO"}
    return [f"{m}/{meth}: {len(bad[(m, meth)])} of {len(nets[(m, meth)])} nets diverged "
            f"(non-finite {metric.get(m, 'metric')} from step {first[(m, meth)]})"
            for m, meth in sorted(bad)]


def plot_convergence(summary: dict[str, Any], path: Path) -> None:
    """Test accuracy (fconv) and test ELBO (vae) vs step; mean line and +- std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(k, t) for k, t in (("test_acc", "MNIST FConv: test accuracy"),
                                  ("test_elbo", "MNIST conv VAE: test ELBO (nats)"))
              if summary.get(k)]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        rows = summary[key]
        for m in sorted({r["method"] for r in rows}):
            rs = sorted((r for r in rows if r["method"] == m), key=lambda r: r["step"])
            x = [r["step"] for r in rs]
            scale = 100.0 if key == "test_acc" else 1.0
            mean = [scale * r["mean"] for r in rs]
            std = [scale * r["std"] for r in rs]
            color = METHOD_COLORS.get(m)
            ax.plot(x, mean, label=f"{m} (n={rs[0]['n']})", color=color)
            ax.fill_between(x, [a - b for a, b in zip(mean, std, strict=True)],
                            [a + b for a, b in zip(mean, std, strict=True)], alpha=0.25,
                            color=color)
        ax.set_xlabel("optimisation step")
        ax.set_ylabel("accuracy, %" if key == "test_acc" else "ELBO per image, nats")
        if key == "test_acc":
            lo = min((100 * r["mean"] for r in rows if r["step"] > 0), default=0.0)
            ax.set_ylim(max(0.0, lo - 5), 100)
        else:  # a diverged method (NaN ELBO) is drawn as a gap and leaves the limits alone
            finite = [r for r in rows if math.isfinite(r["mean"])]
            late = [r["mean"] for r in finite
                    if r["step"] >= max(q["step"] for q in finite) // 10]
            if late:
                ax.set_ylim(min(late) - 20, max(r["mean"] for r in finite) + 5)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def plot_vae_samples(out: Path, cfg: ConvergenceConfig, path: Path) -> None:
    """Grid of VAE samples (Fig. 7): one row per method, one column per step in sample_steps."""
    from safetensors.torch import load_file
    from torchvision.utils import make_grid

    found = {m: out / f"vae_samples_{m}.safetensors" for m in cfg.methods}
    found = {m: p for m, p in found.items() if p.exists()}
    if not found:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [s for s in cfg.sample_steps if s <= cfg.vae_steps]
    fig, axes = plt.subplots(len(found), len(steps), figsize=(1.9 * len(steps), 2.0 * len(found)),
                             squeeze=False)
    for r, (m, p) in enumerate(found.items()):
        samples = load_file(str(p))["samples"]  # (steps, 16, 1, 28, 28)
        for c, step in enumerate(steps):
            ax = axes[r][c]
            grid = make_grid(samples[c], nrow=4, padding=1, pad_value=1.0)[0]
            ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"step {step}")
            if c == 0:
                ax.set_ylabel(m)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
