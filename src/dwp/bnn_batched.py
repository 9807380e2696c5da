"""Train many Bayesian nets of one architecture and one prior family at once (torch.func vmap).

The models (e.g. one per data-subset seed) are stacked with ``torch.func.stack_module_state``;
one vmapped ``functional_call`` computes every net's negative ELBO (data term + KL or auxiliary
bound), the loss is the *sum* over nets, so each net's stacked parameters receive exactly its own
gradient, and Adam (element-wise) makes exactly the per-net updates. With deterministic forward
passes (``sampling(model, "mean")``) and closed-form KLs the result equals training each net
alone up to float rounding (``tests/test_bnn_batched.py``); with sampling, each net draws its own
noise (``randomness="different"``), so the random streams differ from single runs.

With ``kernel_subsample`` every step draws one random subset of kernels per layer, shared by
all nets: each net's KL estimate is still unbiased.

On CUDA a training step of these small nets is bound by kernel launches (the priors' VAEs are
a dozen small layers, run forward and backward every step). ``cuda_graph=True`` records one
whole step (forward, backward, Adam) as a CUDA graph after a few eager warm-up steps and
replays it: the random numbers (LRT noise, auxiliary samples, kernel subsets, then drawn on the
device) are fresh at every replay. Full-batch training only (the paper's setting for N <= 1000);
if recording fails the run goes on eagerly with a warning. The loop never waits for the GPU
except to check every ``CHECK_EVERY`` steps that the losses are finite.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from dwp.bayes import bayes_layers, draw_kernel_indices, elbo_loss, kl
from dwp.bnn import data_logits, resolve_batch_size
from dwp.precision import check_precision, flush_denormals, tf32_for
from dwp.runtime import DwpError, progress

#: Steps between checks that the losses are finite (each check waits for the device).
CHECK_EVERY = 100
#: Eager steps before a CUDA graph is recorded (they initialise Adam's state and the libraries).
GRAPH_WARMUP = 3


class _MeanCrossEntropy(nn.Module):
    """Wraps an ordinary model so that one ``functional_call`` gives its mean cross-entropy
    (the forward pass in ``precision``, see :func:`dwp.bnn.data_logits`)."""

    def __init__(self, model: nn.Module, precision: str = "fp32") -> None:
        super().__init__()
        self.model = model
        self.precision = precision

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, indices: dict[str, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        logits = data_logits(self.model, x, self.precision)
        if mask is None:
            return F.cross_entropy(logits, y)
        return (F.cross_entropy(logits, y, reduction="none") * mask).sum() / mask.sum()


class _NegElbo(nn.Module):
    """Wraps a model so that one ``functional_call`` gives its negative ELBO estimate (the data
    term's forward pass in ``precision``, the KL term in float32)."""

    def __init__(self, model: nn.Module, n_train: int, precision: str = "fp32") -> None:
        super().__init__()
        self.model = model
        self.n_train = n_train
        self.precision = precision

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, indices: dict[str, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        logits = data_logits(self.model, x, self.precision)
        if mask is None:
            return elbo_loss(logits, y, kl(self.model, indices=indices), self.n_train)
        # full batch over the net's real examples: the data term is their summed NLL
        nll = (F.cross_entropy(logits, y, reduction="none") * mask).sum()
        return nll + kl(self.model, indices=indices)


def train_bnn_batched(
    models: Sequence[nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int,
    lr: float = 1e-3,
    batch_size: int | None = None,
    kernel_subsample: int | None = None,
    generator: torch.Generator | None = None,
    randomness: str = "different",
    cuda_graph: bool = False,
    capturable_adam: bool | None = None,
    record_losses: bool = False,
    show_progress: bool = False,
    precision: str = "fp32",
    mask: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Train ``models`` (same architecture, priors and modes) together; results written back.

    ``images`` (M, N, C, H, W) and ``labels`` (M, N) give each of the M nets its own data (or
    (N, C, H, W) / (N,) shared). Adam, lr linearly decayed to 0 over ``steps``; full batch for
    N <= 1000, else mini-batches with one shared index order. ``cuda_graph``: replay each step
    as a recorded CUDA graph (CUDA and full batch only; see the module docstring).
    ``capturable_adam``: run Adam in its capturable form (state and lr on the device), as graph
    replay needs; default: exactly when graphs are used. Setting it without graphs gives the
    graph path's arithmetic eagerly (``benchmarks/bnn_graph_check.py``); CUDA only. Returns
    ``{"loss": (M,) final losses, "steps", "seconds", "cuda_graph": whether graphs ran}``,
    plus ``"history"``: (steps, M) losses of every step when ``record_losses``.
    ``precision``: of the data term, as in :func:`dwp.bnn.train_bnn`. ``mask`` (M, N): for
    nets with training sets of different sizes padded to N (:func:`pad_per_net`), 1 for each
    net's real examples and 0 for padding; the data term then sums the NLL of the real examples
    only, which is the full-batch ELBO of each net's own set (full batch only).
    """
    if not models:
        raise DwpError("train_bnn_batched needs at least one model")
    if not bayes_layers(models[0]):
        raise DwpError("the models have no variational layers: use dwp.bayes.bayesianize first")
    n = images.shape[0] if images.ndim == 4 else images.shape[1]
    return _train_stacked(
        [_NegElbo(mod, n, precision) for mod in models], images, labels, steps=steps, lr=lr,
        batch_size=batch_size, kernel_subsample=kernel_subsample, generator=generator,
        randomness=randomness, cuda_graph=cuda_graph, capturable_adam=capturable_adam,
        record_losses=record_losses, show_progress=show_progress, desc=f"train-bnn x{len(models)}",
        precision=precision, mask=mask)


def train_deterministic_batched(
    models: Sequence[nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int,
    weight_decay: Sequence[float],
    lr: float = 1e-3,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    cuda_graph: bool = False,
    record_losses: bool = False,
    show_progress: bool = False,
    precision: str = "fp32",
    mask: torch.Tensor | None = None,
) -> dict[str, Any]:
    """:func:`dwp.bnn.train_deterministic` for M ordinary nets at once, each with its own L2.

    ``images`` / ``labels`` as in :func:`train_bnn_batched`; ``weight_decay`` (M,): each net's
    Adam weight decay (the coupled L2 of ``torch.optim.Adam(weight_decay=...)``, applied, as
    there, to every parameter: grad + decay * param before the Adam update). Full batch for
    N <= 1000: the nets then end as the same nets trained one by one, up to float rounding
    (``tests/test_bnn_batched.py``). Returns what :func:`train_bnn_batched` returns (``"loss"``:
    the final mean cross-entropies). ``mask``: as there (each net's loss is then the mean
    cross-entropy over its real examples).
    """
    if len(weight_decay) != len(models):
        raise DwpError(f"weight_decay needs one value per model ({len(models)}), got "
                       f"{len(weight_decay)}")
    if any(bayes_layers(mod) for mod in models):
        raise DwpError("train_deterministic_batched trains ordinary nets: use "
                       "train_bnn_batched for variational ones")
    return _train_stacked(
        [_MeanCrossEntropy(mod, precision) for mod in models], images, labels, steps=steps,
        lr=lr, batch_size=batch_size, generator=generator, cuda_graph=cuda_graph,
        record_losses=record_losses, show_progress=show_progress, weight_decay=weight_decay,
        desc=f"train-det x{len(models)}", precision=precision, mask=mask)


def pad_per_net(
    images: Sequence[torch.Tensor], labels: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Stack per-net training sets of possibly different sizes N_i for the batched trainers.

    ``images[i]`` (N_i, C, H, W), ``labels[i]`` (N_i,). Returns ``(x, y, mask)``: x (M, N, C,
    H, W) and y (M, N) with N = max N_i, each set padded at its end with copies of its first
    example, and mask (M, N) float, 1 on real examples and 0 on padding; mask is None when all
    sizes are equal (nothing is padded).
    """
    if not images or len(images) != len(labels):
        raise DwpError("pad_per_net needs one label tensor per image tensor, and at least one")
    sizes = [len(x) for x in images]
    n = max(sizes)
    if min(sizes) == n:
        return torch.stack(list(images)), torch.stack(list(labels)), None
    if min(sizes) < 1:
        raise DwpError("every net needs at least one training example")
    xs, ys, mask = [], [], torch.zeros(len(images), n)
    for i, (x, y) in enumerate(zip(images, labels, strict=True)):
        pad = n - len(x)
        xs.append(torch.cat([x, x[:1].expand(pad, *x.shape[1:])]))
        ys.append(torch.cat([y, y[:1].expand(pad)]))
        mask[i, : len(x)] = 1.0
    return torch.stack(xs), torch.stack(ys), mask


def _train_stacked(
    wrappers: Sequence[nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int,
    lr: float,
    batch_size: int | None,
    generator: torch.Generator | None,
    cuda_graph: bool,
    record_losses: bool,
    show_progress: bool,
    desc: str,
    kernel_subsample: int | None = None,
    randomness: str = "different",
    capturable_adam: bool | None = None,
    weight_decay: Sequence[float] | None = None,
    precision: str = "fp32",
    mask: torch.Tensor | None = None,
) -> dict[str, Any]:
    """The loop shared by the batched trainers: ``wrappers[i](x, y, indices[, mask])`` is net
    i's loss (each wraps its model as ``.model``); the stacked parameters are written back at
    the end. ``precision`` only sets TensorFloat-32 around the loop ("tf32"); the wrappers
    autocast. ``mask`` (M, N) marks each net's real examples in padded per-net data (full
    batch only)."""
    m = len(wrappers)
    models = [w.model for w in wrappers]
    if steps < 1:
        raise DwpError(f"steps must be >= 1, got {steps}")
    check_precision(precision)
    device = next(models[0].parameters()).device
    shared = images.ndim == 4
    n = images.shape[0] if shared else images.shape[1]
    if not shared and (images.shape[0] != m or labels.shape[:2] != (m, n)):
        raise DwpError(f"per-net data must be (M={m}, N, ...), got {tuple(images.shape)}")
    x, y = images.to(device), labels.to(device)
    bs = resolve_batch_size(n, batch_size)
    if mask is not None:
        if shared or tuple(mask.shape) != (m, n):
            raise DwpError(f"mask must be (M={m}, N={n}) with per-net data, got "
                           f"{tuple(mask.shape)}")
        if bs < n:
            raise DwpError("nets with padded data (a mask) train full batch only")
        mask = mask.to(device=device, dtype=torch.float32)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    use_graph = cuda_graph and device.type == "cuda" and bs >= n and steps > GRAPH_WARMUP

    params, buffers = stack_module_state(wrappers)
    trainable = {k: v for k, v in params.items() if v.requires_grad}
    frozen = {k: v.detach() for k, v in params.items() if not v.requires_grad}
    base = copy.deepcopy(wrappers[0])

    extra = () if mask is None else (mask,)  # each net's mask rides along with its data

    def one(p: dict, b: dict, xb: torch.Tensor, yb: torch.Tensor, ind: dict,
            *mb: torch.Tensor) -> torch.Tensor:
        return functional_call(base, ({**p, **b}), (xb, yb, ind or None, *mb))

    in_x = None if shared else 0
    fv = vmap(one, in_dims=(0, 0, in_x, in_x, None, *(0,) * len(extra)), randomness=randomness)

    def f(p: dict, b: dict, xb: torch.Tensor, yb: torch.Tensor, ind: dict) -> torch.Tensor:
        return fv(p, b, xb, yb, ind, *extra)
    # capturable Adam keeps its step counts on the device and takes the lr as a device tensor
    capturable = (use_graph if capturable_adam is None else capturable_adam) and (
        device.type == "cuda")
    opt = torch.optim.Adam(list(trainable.values()),
                           lr=torch.tensor(lr, device=device) if capturable else lr,
                           capturable=capturable)

    def set_lr(t: int) -> None:
        value = lr * max(0.0, 1.0 - t / steps)
        for group in opt.param_groups:
            if torch.is_tensor(group["lr"]):
                group["lr"].fill_(value)
            else:
                group["lr"] = value

    perm, pos = torch.randperm(n, generator=g), 0

    def eager_step() -> torch.Tensor:
        nonlocal perm, pos
        if bs >= n:
            idx = torch.arange(n)
        else:
            if pos + bs > n:
                perm, pos = torch.randperm(n, generator=g), 0
            idx, pos = perm[pos : pos + bs], pos + bs
        idx = idx.to(device)
        xb = x[idx] if shared else x[:, idx]
        yb = y[idx] if shared else y[:, idx]
        ind = {} if kernel_subsample is None else {
            k: v.to(device)
            for k, v in draw_kernel_indices(models[0], kernel_subsample, g).items()}
        opt.zero_grad(set_to_none=True)
        return update(xb, yb, ind)

    def graph_body() -> torch.Tensor:  # full batch; kernel subsets drawn on the device
        ind = {} if kernel_subsample is None else draw_kernel_indices(
            models[0], kernel_subsample, device=device)
        return update(x, y, ind)

    decay = None if weight_decay is None else torch.tensor(
        [float(d) for d in weight_decay], device=device)

    def update(xb: torch.Tensor, yb: torch.Tensor, ind: dict) -> torch.Tensor:
        """Forward, backward and one Adam step; the per-net losses (M,)."""
        per_net = f({**trainable, **frozen}, buffers, xb, yb, ind)
        per_net.sum().backward()
        if decay is not None:  # Adam's coupled L2, one strength per net
            with torch.no_grad():
                for p in trainable.values():
                    p.grad.add_(p * decay.view(-1, *([1] * (p.ndim - 1))))
        opt.step()
        return per_net.detach()

    t0 = time.perf_counter()
    losses = torch.zeros(m)
    step_fn: Callable[[], torch.Tensor] = eager_step
    graphed = False
    history: list[torch.Tensor] = []
    # warm-up steps before a recording run on a side stream (PyTorch's recipe for CUDA graphs)
    side = torch.cuda.Stream(device) if use_graph else None
    if side is not None:
        side.wait_stream(torch.cuda.current_stream(device))
    with flush_denormals(device):
        for t in progress(range(steps), desc=desc, enabled=show_progress):
            if side is not None and t == GRAPH_WARMUP:
                torch.cuda.current_stream(device).wait_stream(side)
                side = None
                with tf32_for(precision, device):
                    step_fn, graphed = _record_step(graph_body, opt, eager_step)
            with torch.cuda.stream(side) if side is not None else nullcontext():
                set_lr(t)
                with tf32_for(precision, device):
                    losses = step_fn()
            if record_losses:
                history.append(losses.clone())
            if (t + 1) % CHECK_EVERY == 0 or t == steps - 1:
                if not torch.isfinite(losses).all():
                    raise DwpError(f"a loss became non-finite in batched training by step {t + 1}: "
                                   "lower the lr")
    losses = losses.cpu()
    with torch.no_grad():  # by name, so that a module shared by layers (one prior for
        for i, w in enumerate(wrappers):  # several same-size convs) is written once
            for k, v in {**trainable, **frozen}.items():
                w.get_parameter(k).copy_(v[i])
            for k, v in buffers.items():
                w.get_buffer(k).copy_(v[i])
    out = {"loss": losses.tolist(), "steps": steps, "seconds": time.perf_counter() - t0,
           "cuda_graph": graphed}
    if record_losses:
        out["history"] = torch.stack(history).cpu()
    return out


def _record_step(
    body: Callable[[], torch.Tensor],
    opt: torch.optim.Optimizer,
    fallback: Callable[[], torch.Tensor],
) -> tuple[Callable[[], torch.Tensor], bool]:
    """Record ``body`` (one full training step) as a CUDA graph; return (replay, True), or
    (fallback, False) with a warning when recording fails. The recording itself computes
    nothing, so the caller's step count is unaffected."""
    torch.cuda.synchronize()
    opt.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            out = body()
    except RuntimeError as exc:  # an op that cannot be recorded: go on eagerly
        warnings.warn(f"CUDA graph recording failed, training eagerly instead: {exc}",
                      RuntimeWarning, stacklevel=3)
        torch.cuda.synchronize()
        opt.zero_grad(set_to_none=True)
        return fallback, False

    def replay() -> torch.Tensor:
        graph.replay()
        return out

    return replay, True


def run_classification_seeds(
    method: str,
    n: int,
    seeds: Sequence[int],
    **kw: Any,
) -> list[dict[str, Any]]:
    """:func:`dwp.bnn.run_classification` for every seed of ``seeds``, the models trained at once
    (:func:`run_classification_cells` with the cells (n, seed))."""
    if not seeds:
        raise DwpError("run_classification_seeds needs at least one seed")
    return run_classification_cells(method, [(n, s) for s in seeds], **kw)


def run_classification_cells(
    method: str,
    cells: Sequence[tuple[int, int]],
    *,
    train_data: Any,
    test_data: Any,
    steps: int,
    priors: Any,
    device: torch.device | str = "cpu",
    kernel_subsample: int | None = None,
    freeze_reverse: bool = False,
    init: str | None = None,
    log_sigma2_init: float = -10.0,
    posterior: str | None = None,
    ensemble: int = 10,
    lr: float = 1e-3,
    batch_size: int | None = None,
    widths: Sequence[int] = (32, 128),
    cuda_graph: bool = False,
    show_progress: bool = False,
    conv_impl: str = "mixed",
    precision: str = "fp32",
) -> list[dict[str, Any]]:
    """:func:`dwp.bnn.run_classification` for every (N, seed) of ``cells``, the models trained at
    once.

    Each cell gets its own class-balanced subset of N images and its own model, built and
    initialised exactly as a single run does; the models are then trained together by
    :func:`train_bnn_batched` (their own LRT / KL noise per net, one kernel subset per step
    shared by all nets) and evaluated one by one. Cells of different sizes N are padded to the
    largest (:func:`pad_per_net`); each net's data term still covers exactly its own N images,
    full batch (so sizes can share a training only while full batch, N <= 1000). Returns one
    record per cell, in order, with the fields of a single run plus ``batched`` (how many nets
    trained together), ``cuda_graph`` (whether steps replayed a CUDA graph) and, for padded
    groups, ``padded_to``; ``seconds`` is the group's wall time divided by the number of nets.
    Bayesian methods only.
    """
    from dwp.bnn import build_bayes_model, evaluate, fconv_factory
    from dwp.data import class_balanced_subset
    from dwp.priorspec import canonical_method

    method = canonical_method(method)
    if method == "deterministic":
        raise DwpError("run_classification_cells trains Bayesian methods; the deterministic "
                       "baseline chooses its weight decay per run (run_deterministic_cells)")
    if not cells:
        raise DwpError("run_classification_cells needs at least one (N, seed) cell")
    device = torch.device(device)
    t0 = time.perf_counter()
    make_model = fconv_factory(widths, train_data.images.shape[1], train_data.num_classes,
                               device)
    models, xs, ys, settings = [], [], [], {}
    for n, seed in cells:
        idx = class_balanced_subset(train_data.labels, n, seed)
        xs.append(train_data.images[idx])
        ys.append(train_data.labels[idx])
        model, settings, _ = build_bayes_model(
            method, seed, make_model, priors, device=device, init=init,
            log_sigma2_init=log_sigma2_init, posterior=posterior, freeze_reverse=freeze_reverse,
            conv_impl=conv_impl)
        models.append(model)
    x, y, mask = pad_per_net(xs, ys)
    trained = train_bnn_batched(models, x, y, steps=steps, lr=lr, batch_size=batch_size,
                                kernel_subsample=kernel_subsample,
                                generator=torch.Generator().manual_seed(int(cells[0][1])),
                                cuda_graph=cuda_graph, show_progress=show_progress,
                                precision=precision, mask=mask)
    records = []
    for i, ((n, seed), model) in enumerate(zip(cells, models, strict=True)):
        with torch.no_grad():
            model.train()
            xi, yi = xs[i].to(device), ys[i].to(device)
            final_nll = torch.nn.functional.cross_entropy(model(xi), yi).item()
            final_kl = kl(model).item()
        metrics = evaluate(model, test_data.images, test_data.labels, samples=ensemble)
        rec: dict[str, Any] = {"method": method, "n": n, "seed": seed, "steps": steps,
                               "device": str(device), "ensemble": ensemble}
        rec.update(settings, kernel_subsample=kernel_subsample, final_train_nll=final_nll,
                   final_kl=final_kl, batched=len(models), cuda_graph=trained["cuda_graph"])
        if mask is not None:
            rec["padded_to"] = x.shape[1]
        if precision != "fp32":
            rec["precision"] = precision
        rec.update(metrics)
        records.append(rec)
    seconds = (time.perf_counter() - t0) / len(models)
    for rec in records:
        rec["seconds"] = seconds
    return records


def run_deterministic_seeds(n: int, seeds: Sequence[int], **kw: Any) -> list[dict[str, Any]]:
    """The deterministic baseline of :func:`dwp.bnn.run_classification` for every seed, at once
    (:func:`run_deterministic_cells` with the cells (n, seed))."""
    if not seeds:
        raise DwpError("run_deterministic_seeds needs at least one seed")
    return run_deterministic_cells([(n, s) for s in seeds], **kw)


def run_deterministic_cells(
    cells: Sequence[tuple[int, int]],
    *,
    train_data: Any,
    test_data: Any,
    steps: int,
    device: torch.device | str = "cpu",
    weight_decay_grid: Sequence[float] | None = None,
    lr: float = 1e-3,
    batch_size: int | None = None,
    widths: Sequence[int] = (32, 128),
    cuda_graph: bool = False,
    show_progress: bool = False,
    priors: Any = None,
    kernel_subsample: int | None = None,
    freeze_reverse: bool = False,
    ensemble: int = 1,
    conv_impl: str = "mixed",
    precision: str = "fp32",
) -> list[dict[str, Any]]:
    """The deterministic baseline of :func:`dwp.bnn.run_classification` for every (N, seed) of
    ``cells``, at once.

    A single run trains one net per weight decay of the grid on 80% of its N images, keeps the
    decay with the best accuracy on the other 20% (:func:`dwp.bnn.choose_weight_decay`), then
    trains the final net on all N. Here the C x G candidate nets train together in one batched
    computation, then the C final nets in a second: two trainings instead of C (G + 1), each
    net seeded and fed exactly as in its single run, so the records match single runs up to
    float rounding. Training sets of different sizes are padded (:func:`pad_per_net`), each
    net's loss averaging over its own examples only (full batch only). Returns one record per
    cell with the fields of a single run plus ``batched`` (nets per training), ``cuda_graph``
    and, for padded groups, ``padded_to``; ``seconds`` is the wall time / C.
    ``priors``, ``kernel_subsample``, ``freeze_reverse``, ``ensemble`` and ``conv_impl`` belong
    to the Bayesian methods; they are accepted, so that one set of grid arguments serves every
    method, and ignored (a deterministic net is evaluated once, as in its single run).
    """
    del priors, kernel_subsample, freeze_reverse, ensemble, conv_impl
    from dwp.bnn import (
        WEIGHT_DECAY_GRID,
        best_weight_decay,
        evaluate,
        fconv_factory,
        stratified_holdout,
    )
    from dwp.data import class_balanced_subset
    from dwp.runtime import seed_everything

    grid = list(WEIGHT_DECAY_GRID if weight_decay_grid is None else weight_decay_grid)
    if not cells:
        raise DwpError("run_deterministic_cells needs at least one (N, seed) cell")
    if not grid:
        raise DwpError("the weight-decay grid is empty")
    device = torch.device(device)
    t0 = time.perf_counter()
    make_model = fconv_factory(widths, train_data.images.shape[1], train_data.num_classes,
                               device)
    data, splits = [], []
    for n, seed in cells:
        idx = class_balanced_subset(train_data.labels, n, seed)
        x, y = train_data.images[idx], train_data.labels[idx]
        data.append((x, y))
        splits.append(stratified_holdout(y, 0.2, torch.Generator().manual_seed(seed)))
    # 1. every (cell, decay) candidate on its cell's 80%
    cands, cx, cy, decays = [], [], [], []
    for (x, y), (tr, _), (_, seed) in zip(data, splits, cells, strict=True):
        for wd in grid:
            torch.manual_seed(seed)
            cands.append(make_model())
            cx.append(x[tr])
            cy.append(y[tr])
            decays.append(wd)
    x1, y1, m1 = pad_per_net(cx, cy)
    first = train_deterministic_batched(
        cands, x1, y1, steps=steps, weight_decay=decays, lr=lr, batch_size=batch_size,
        generator=torch.Generator().manual_seed(int(cells[0][1])), cuda_graph=cuda_graph,
        show_progress=show_progress, precision=precision, mask=m1)
    chosen, validation = [], []
    for i, ((x, y), (_, va)) in enumerate(zip(data, splits, strict=True)):
        scores = []
        for j, wd in enumerate(grid):
            mv = evaluate(cands[i * len(grid) + j], x[va], y[va], samples=1)
            scores.append({"weight_decay": wd, "val_accuracy": mv["accuracy"],
                           "val_nll": mv["nll"]})
        chosen.append(best_weight_decay(scores))
        validation.append(scores)
    # 2. the final nets on all N images, with the chosen decays
    finals = []
    for _, seed in cells:
        seed_everything(seed)
        finals.append(make_model())
    x2, y2, m2 = pad_per_net([x for x, _ in data], [y for _, y in data])
    second = train_deterministic_batched(
        finals, x2, y2, steps=steps, weight_decay=chosen, lr=lr, batch_size=batch_size,
        generator=torch.Generator().manual_seed(int(cells[0][1])), cuda_graph=cuda_graph,
        show_progress=show_progress, precision=precision, mask=m2)
    records = []
    for i, ((n, seed), model) in enumerate(zip(cells, finals, strict=True)):
        rec: dict[str, Any] = {"method": "deterministic", "n": n, "seed": seed, "steps": steps,
                               "device": str(device), "ensemble": 1,
                               "weight_decay": chosen[i], "validation": validation[i],
                               "final_train_loss": second["loss"][i], "batched": len(cands),
                               "cuda_graph": bool(first["cuda_graph"] and second["cuda_graph"])}
        if m2 is not None:
            rec["padded_to"] = x2.shape[1]
        if precision != "fp32":
            rec["precision"] = precision
        rec.update(evaluate(model, test_data.images, test_data.labels, samples=1))
        records.append(rec)
    seconds = (time.perf_counter() - t0) / len(cells)
    for rec in records:
        rec["seconds"] = seconds
    return records
