"""Training and evaluating Bayesian CNNs (paper Section 4.1) and their deterministic baseline.

- :func:`train_bnn`: maximise the ELBO (or the auxiliary bound, Algorithm 1) with Adam, lr
  linearly decayed to 0; full batch when N <= 1000 (one step = one epoch, as the paper).
- :func:`train_deterministic` / :func:`choose_weight_decay`: the same net with an L2 penalty,
  the penalty picked on a validation split carved from the training subset (never the test set).
- :func:`evaluate`: accuracy, NLL and ECE of the ensemble of weight samples on a test set.
- :func:`run_classification`: one run of the paper's classification experiment, from the
  training subset to the record (shared by ``dwp train-bnn`` and ``dwp experiment
  classification``).

Which prior each layer gets is :mod:`dwp.priorspec`; saved models are :mod:`dwp.bnn_io`;
the grid's table and plot are :mod:`dwp.experiments.classification`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dwp.bayes import bayes_layers, elbo_loss, kl, predict
from dwp.bnn_io import save_bnn
from dwp.metrics import classification_metrics
from dwp.precision import autocast_for, check_precision, flush_denormals, tf32_for
from dwp.priorspec import (
    canonical_spec,
    default_init,
    default_posterior,
    match_priors,
    parse_prior_spec,
)
from dwp.runtime import DwpError, progress

FULL_BATCH_MAX = 1000
DEFAULT_BATCH = 256
WEIGHT_DECAY_GRID = (0.0, 1e-4, 1e-3, 1e-2)


def resolve_batch_size(n: int, batch_size: int | None) -> int:
    """``None`` -> full batch for n <= 1000 (the paper), else 256; capped at n."""
    if batch_size is None:
        return n if n <= FULL_BATCH_MAX else DEFAULT_BATCH
    if batch_size < 1:
        raise DwpError(f"batch size must be >= 1, got {batch_size}")
    return min(batch_size, n)


def _linear_decay(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda t: max(0.0, 1.0 - t / steps))


class _BatchSampler:
    """An endless sampler of index batches: shuffled epochs of size ``bs`` (full batch: all).

    Its position is part of a training checkpoint (``state_dict`` / ``load_state_dict``).
    """

    def __init__(self, n: int, bs: int, generator: torch.Generator) -> None:
        self.n, self.bs, self.generator = n, bs, generator
        self.perm = torch.randperm(n, generator=generator)
        self.pos = 0

    def __call__(self) -> torch.Tensor:
        if self.bs >= self.n:
            return torch.arange(self.n)
        if self.pos + self.bs > self.n:
            self.perm, self.pos = torch.randperm(self.n, generator=self.generator), 0
        idx = self.perm[self.pos : self.pos + self.bs]
        self.pos += self.bs
        return idx

    def state_dict(self) -> dict[str, Any]:
        return {"perm": self.perm.clone(), "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.perm, self.pos = state["perm"].clone(), int(state["pos"])


CHECKPOINT_FORMAT = "dwp-train-bnn-checkpoint"


class _TrainingCheckpoint:
    """The whole state of a training loop in one file, for a killed run to resume bit for bit.

    Holds parameters, Adam moments, the lr schedule, the batch order and the states of the CPU
    (and CUDA) random generators. ``path=None`` turns it off. :meth:`restore` loads the file
    when it exists; :meth:`after_step` saves every ``every`` steps and after the last one.
    """

    def __init__(self, path: str | Path | None, every: int, *, steps: int, model: nn.Module,
                 opt: torch.optim.Optimizer, sched: Any, sampler: _BatchSampler,
                 generator: torch.Generator) -> None:
        if path is not None and every < 1:
            raise DwpError(f"checkpoint_every must be >= 1, got {every}")
        self.path = Path(path) if path is not None else None
        self.every, self.steps = every, steps
        self.model, self.opt, self.sched = model, opt, sched
        self.sampler, self.generator = sampler, generator

    def restore(self) -> tuple[int, dict[str, Any] | None, float]:
        """(next step, saved history, seconds trained so far); (0, None, 0.0) without a file."""
        path = self.path
        if path is None or not path.exists():
            return 0, None, 0.0
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated or foreign file
            raise DwpError(f"cannot read the checkpoint {path} ({exc}): delete it to start "
                           "over") from exc
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise DwpError(f"{path} is not a training checkpoint of dwp: delete it to start over")
        if state["steps"] != self.steps:
            raise DwpError(f"the checkpoint {path} is of a {state['steps']}-step run, not "
                           f"{self.steps}: use the same --steps or delete it")
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise DwpError(f"the checkpoint {path} holds another model ({exc}): delete it to "
                           "start over") from exc
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        return int(state["step"]), state["hist"], float(state["elapsed"])

    def after_step(self, t: int, hist: dict[str, Any], elapsed: float) -> None:
        """Save after step ``t`` (0-based) when it is due."""
        if self.path is None or ((t + 1) % self.every and t + 1 != self.steps):
            return
        import io

        from dwp.runtime import atomic_write_bytes

        state = {
            "format": CHECKPOINT_FORMAT, "step": t + 1, "steps": self.steps, "elapsed": elapsed,
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "sampler": self.sampler.state_dict(),
            "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "hist": hist,
        }
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.path, buf.getvalue())


def data_logits(model: nn.Module, x: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """``model(x)`` as float32 logits (B, classes), its forward pass (and so its backward)
    autocast to bfloat16 for ``precision="bf16"``. Training loops call it for the data term
    only: KL terms and auxiliary bounds stay in float32. (``"tf32"`` is set around a whole
    loop with :func:`dwp.precision.tf32_for`, since it must cover the backward pass too.)"""
    with autocast_for(precision, x.device, cache=False):  # also recorded into CUDA graphs
        out = model(x)
    return out.float()


def train_bnn(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int,
    lr: float = 1e-3,
    batch_size: int | None = None,
    kernel_subsample: int | None = None,
    generator: torch.Generator | None = None,
    show_progress: bool = False,
    log_every: int = 0,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 500,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Train a model with variational layers by minimising the negative ELBO estimate.

    ``images`` (N, C, H, W) and ``labels`` (N,) are moved to the model's device once.
    Trains every parameter with ``requires_grad`` (posterior means and log-variances, biases,
    the deterministic classifier, the reverse models unless frozen; prior parameters are frozen
    by the layers). Adam with lr linearly decayed from ``lr`` to 0 over ``steps``.

    Returns ``{"loss": [...], "nll": [...], "kl": [...], "steps", "seconds"}`` with one entry per
    logged step (every ``log_every`` steps and the last; ``log_every=0``: first and last only).

    ``checkpoint``: a file to save the whole training state to every ``checkpoint_every``
    steps and at the end; when it exists at the start, training resumes from it and ends
    exactly as an uninterrupted run would (same random draws). The caller deletes it once
    the result is safe. ``seconds`` then counts the training time of every part of the run;
    ``resumed_from`` is the step it restarted at (0: not resumed).

    ``precision``: arithmetic of the data term's forward and backward passes: ``"fp32"``,
    ``"tf32"`` (TensorFloat-32 on CUDA) or ``"bf16"`` (autocast; see :func:`data_logits`).
    The prior term, the parameters and Adam stay float32.
    """
    if steps < 1:
        raise DwpError(f"steps must be >= 1, got {steps}")
    check_precision(precision)
    if not bayes_layers(model):
        raise DwpError("the model has no variational layers: use dwp.bayes.bayesianize first")
    device = next(model.parameters()).device
    x, y = images.to(device), labels.to(device)
    n = x.shape[0]
    bs = resolve_batch_size(n, batch_size)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    next_batch = _BatchSampler(n, bs, g)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    sched = _linear_decay(opt, steps)
    ckpt = _TrainingCheckpoint(checkpoint, checkpoint_every, steps=steps, model=model, opt=opt,
                               sched=sched, sampler=next_batch, generator=g)
    start, saved, elapsed = ckpt.restore()
    hist: dict[str, Any] = saved or {"step": [], "loss": [], "nll": [], "kl": []}
    model.train()
    t0 = time.perf_counter()
    bar = progress(range(start, steps), desc="train-bnn", enabled=show_progress,
                   initial=start, total=steps)
    with flush_denormals(device):
        for t in bar:
            idx = next_batch().to(device)
            opt.zero_grad(set_to_none=True)
            with tf32_for(precision, device):
                logits = data_logits(model, x[idx], precision)
                kl_term = kl(model, kernel_subsample=kernel_subsample, generator=g)
                loss = elbo_loss(logits, y[idx], kl_term, n)
                if not torch.isfinite(loss):
                    raise DwpError(f"the loss became {loss.item()} at step {t}: lower --lr or "
                                   "check data")
                loss.backward()
            opt.step()
            sched.step()
            if t == 0 or t == steps - 1 or (log_every and t % log_every == 0):
                nll = (loss - kl_term).item() / n
                hist["step"].append(t)
                hist["loss"].append(loss.item())
                hist["nll"].append(nll)
                hist["kl"].append(kl_term.item())
                bar.set_postfix(nll=f"{nll:.3f}", kl=f"{kl_term.item():.4g}")
            ckpt.after_step(t, hist, elapsed + time.perf_counter() - t0)
    hist["steps"] = steps
    hist["seconds"] = elapsed + time.perf_counter() - t0
    hist["resumed_from"], hist["seconds_before_resume"] = start, elapsed
    return hist


def train_deterministic(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int,
    weight_decay: float,
    lr: float = 1e-3,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    show_progress: bool = False,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 500,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Train an ordinary net: mean cross-entropy + L2 (Adam ``weight_decay``), lr decayed to 0.

    Returns ``{"loss": final mean CE on the last batch, "steps", "seconds"}``. ``checkpoint``
    / ``checkpoint_every``: resume file, and ``precision``, as in :func:`train_bnn`.
    """
    if steps < 1:
        raise DwpError(f"steps must be >= 1, got {steps}")
    check_precision(precision)
    device = next(model.parameters()).device
    x, y = images.to(device), labels.to(device)
    n = x.shape[0]
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    next_batch = _BatchSampler(n, resolve_batch_size(n, batch_size), g)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = _linear_decay(opt, steps)
    ckpt = _TrainingCheckpoint(checkpoint, checkpoint_every, steps=steps, model=model, opt=opt,
                               sched=sched, sampler=next_batch, generator=g)
    start, saved, elapsed = ckpt.restore()
    hist: dict[str, Any] = saved or {"loss": float("nan")}
    model.train()
    t0 = time.perf_counter()
    with flush_denormals(device):
        for t in progress(range(start, steps), desc="train-det", enabled=show_progress,
                          initial=start, total=steps):
            idx = next_batch().to(device)
            opt.zero_grad(set_to_none=True)
            with tf32_for(precision, device):
                loss = F.cross_entropy(data_logits(model, x[idx], precision), y[idx])
                loss.backward()
            opt.step()
            sched.step()
            if t == steps - 1:
                hist["loss"] = loss.item()
            ckpt.after_step(t, hist, elapsed + time.perf_counter() - t0)
    return {"loss": hist["loss"], "steps": steps, "seconds": elapsed + time.perf_counter() - t0,
            "resumed_from": start, "seconds_before_resume": elapsed}


def stratified_holdout(
    labels: torch.Tensor, fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (train, validation): ``fraction`` of every class (at least 1) held out.

    Raises ``DwpError`` when a class has fewer than 2 examples.
    """
    train, val = [], []
    for c in labels.unique():
        members = torch.nonzero(labels == c).flatten()
        if len(members) < 2:
            raise DwpError(f"class {int(c)} has {len(members)} example(s): need >= 2 to validate")
        members = members[torch.randperm(len(members), generator=generator)]
        k = min(len(members) - 1, max(1, round(fraction * len(members))))
        val.append(members[:k])
        train.append(members[k:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def choose_weight_decay(
    make_model: Callable[[], nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int,
    grid: Sequence[float] = WEIGHT_DECAY_GRID,
    val_fraction: float = 0.2,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    **train_kw: Any,
) -> tuple[float, list[dict[str, float]]]:
    """Pick the L2 strength from ``grid`` on a validation split of the TRAINING data.

    Each candidate trains ``make_model()`` on the rest of the training subset; the best validation
    accuracy wins (ties: lower validation NLL, then the smaller decay). Returns the chosen decay
    and one ``{"weight_decay", "val_accuracy", "val_nll", "seconds"}`` record per candidate
    (training seconds; with ``"earlier_process": True`` when read back from a killed run,
    ``"seconds_before_resume"`` when its training resumed from a checkpoint).
    ``checkpoint_dir``: scores of finished candidates (``wd-scores.jsonl``) and the resume file
    of the one in training go there, so a killed choice resumes (every candidate starts from
    the same seeds, so skipping finished ones changes nothing).
    """
    from dwp.runtime import append_jsonl, read_jsonl

    g = torch.Generator().manual_seed(seed)
    tr, va = stratified_holdout(labels, val_fraction, g)
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    done = {r["weight_decay"]: r for r in read_jsonl(folder / "wd-scores.jsonl")} if folder \
        else {}
    scores = []
    for i, wd in enumerate(grid):
        if wd in done:
            scores.append(done[wd])
            continue
        torch.manual_seed(seed)
        model = make_model()
        ckpt = folder / f"wd-{i}.pt" if folder else None
        hist = train_deterministic(model, images[tr], labels[tr], steps=steps, weight_decay=wd,
                                   generator=torch.Generator().manual_seed(seed),
                                   checkpoint=ckpt, **train_kw)
        m = evaluate(model, images[va], labels[va], samples=1)
        scores.append({"weight_decay": wd, "val_accuracy": m["accuracy"], "val_nll": m["nll"],
                       "seconds": hist["seconds"]})
        if folder is not None:
            append_jsonl(folder / "wd-scores.jsonl", {**scores[-1], "earlier_process": True})
            ckpt.unlink(missing_ok=True)
        scores[-1]["seconds_before_resume"] = hist["seconds_before_resume"]
    return best_weight_decay(scores), scores


def best_weight_decay(scores: Sequence[dict[str, float]]) -> float:
    """The decay of the best candidate: highest ``val_accuracy``, ties broken by lower
    ``val_nll``, then by the smaller ``weight_decay``."""
    best = min(scores, key=lambda s: (-s["val_accuracy"], s["val_nll"], s["weight_decay"]))
    return best["weight_decay"]


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    samples: int = 10,
    batch_size: int = 1000,
    mode: str = "fixed",
) -> dict[str, float]:
    """Accuracy, NLL and ECE of the ``samples``-member ensemble (1 pass for deterministic nets).

    ``mode`` is how :func:`dwp.bayes.predict` draws the ensemble (default: whole weight samples).
    """
    probs = predict(model, images, samples=samples, batch_size=batch_size, mode=mode)
    out = classification_metrics(probs.cpu(), labels.cpu())
    if not all(math.isfinite(v) for v in out.values()):
        raise DwpError(f"non-finite test metrics {out}: the model diverged")
    return out


# -- one classification run (paper Section 4.1), shared by ``train-bnn`` and the experiment --
def fconv_factory(
    widths: Sequence[int], in_channels: int, num_classes: int, device: torch.device
) -> Callable[[], nn.Module]:
    """A zero-argument builder of the Xavier-initialised target FConvMNIST on ``device``."""
    from dwp.nets import FConvMNIST, xavier_init_

    def make_model() -> nn.Module:
        return xavier_init_(FConvMNIST(widths, in_channels=in_channels,
                                       num_classes=num_classes)).to(device)

    return make_model


def build_bayes_model(
    method: str,
    seed: int,
    make_model: Callable[[], nn.Module],
    priors: Any,
    *,
    device: torch.device,
    init: str | None = None,
    log_sigma2_init: float = -10.0,
    posterior: str | None = None,
    freeze_reverse: bool = False,
    conv_impl: str = "mixed",
) -> tuple[nn.Module, dict[str, Any], torch.Generator]:
    """Seed, build and bayesianize one model of a Bayesian method (as :func:`run_classification`).

    Returns the model (on ``device``), the settings used (``init``, ``posterior``,
    ``log_sigma2_init``, ``freeze_reverse``, ``conv_impl`` (see
    :meth:`dwp.bayes.BayesConv2d.set_conv_impl`), ``layers``: the per-layer report) and the CPU
    generator seeded with ``seed`` that training goes on drawing from.
    """
    from dwp.bayes import bayesianize
    from dwp.runtime import seed_everything

    if priors is None:
        raise DwpError(f"method {method} needs priors (see dwp.priorspec.resolve_priors)")
    g = seed_everything(seed)
    model = make_model()
    gen = torch.Generator(device=device).manual_seed(seed) if device.type != "cpu" else g
    kw = {"log_sigma2_init": log_sigma2_init, "freeze_reverse": freeze_reverse, "generator": gen,
          "conv_impl": conv_impl}
    layers = parse_prior_spec(method)
    if layers is None:
        init = init or default_init(method)
        posterior = posterior or default_posterior(method)
        report = bayesianize(model, match_priors(model, priors), init=init,
                             posterior=posterior, **kw)
        model.to(device)
        settings = {"init": init, "posterior": posterior, "log_sigma2_init": log_sigma2_init,
                    "freeze_reverse": freeze_reverse, "conv_impl": conv_impl, "layers": report}
        return model, settings, g
    # per-layer methods: each layer with its method's defaults, in the model's layer order (so
    # a spec naming one method for every layer draws the same initial weights as that method)
    order = [n for n, m in model.named_modules() if type(m) is nn.Conv2d]

    def rank(layer: str) -> int:  # unknown names last: bayesianize then names the model's convs
        return next((i for i, n in enumerate(order) if layer in (n, n.rsplit(".", 1)[-1])),
                    len(order))

    inits, posteriors, records = {}, {}, {}
    for layer in sorted(layers, key=rank):
        inits[layer] = init or default_init(layers[layer])
        posteriors[layer] = posterior or default_posterior(layers[layer])
        for r in bayesianize(model, {layer: priors[layer]}, init=inits[layer],
                             posterior=posteriors[layer], **kw):
            records[r["layer"]] = r  # each call reports the convs still left; keep the last word
    report = [records[n] for n in order]
    model.to(device)
    settings = {"init": inits, "posterior": posteriors, "log_sigma2_init": log_sigma2_init,
                "freeze_reverse": freeze_reverse, "conv_impl": conv_impl, "layers": report}
    return model, settings, g


def run_classification(
    method: str,
    n: int,
    seed: int,
    *,
    train_data: Any,
    test_data: Any,
    steps: int,
    priors: Any = None,
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
    weight_decay_grid: Sequence[float] = WEIGHT_DECAY_GRID,
    show_progress: bool = False,
    model_path: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 500,
    conv_impl: str = "mixed",
    precision: str = "fp32",
) -> dict[str, Any]:
    """Train one FConvMNIST on a class-balanced subset of ``n`` training images and evaluate it.

    ``train_data``/``test_data`` are ``dwp.data.ImageDataset``s; the subset is
    ``class_balanced_subset(labels, n, seed)``. Bayesian methods: conv layers get ``priors``
    (see :func:`dwp.priorspec.resolve_priors`), the classifier stays deterministic, posterior
    means start from a prior sample (``init="prior"``, default for dwp and fitted-gaussian, as
    the paper's code) or Xavier (default otherwise). ``posterior`` (see
    :func:`dwp.priorspec.default_posterior`): ``"truncated-alpha"`` by default for
    log-uniform, ``"gaussian"`` otherwise.
    ``deterministic``: the weight decay is chosen on a validation split of the subset.
    ``conv_impl``: how the variational convolutions compute (see
    :meth:`dwp.bayes.BayesConv2d.set_conv_impl`; same results up to float rounding).
    ``precision``: of the data term in training (see :func:`train_bnn`; recorded when not
    ``"fp32"``); evaluation is always float32.
    Returns the JSON-able record of the run.

    ``model_path``: also save the trained model there with :func:`dwp.bnn_io.save_bnn`
    (posterior means and log-variances, reverse models, priors, classifier; reload with
    :func:`dwp.bnn_io.load_bnn`).
    ``checkpoint_dir``: resume files of the training (every ``checkpoint_every`` steps) and of
    the weight-decay choice go there, so a killed run resumes where it stopped and ends as an
    uninterrupted one; the caller deletes the folder once the record is stored.
    """
    from dwp.data import class_balanced_subset
    from dwp.runtime import seed_everything

    method = canonical_spec(method)
    device = torch.device(device)
    idx = class_balanced_subset(train_data.labels, n, seed)
    x, y = train_data.images[idx], train_data.labels[idx]
    in_ch = x.shape[1]
    make_model = fconv_factory(widths, in_ch, train_data.num_classes, device)

    t0 = time.perf_counter()
    before = 0.0  # seconds spent by earlier, interrupted processes of this run (resumed runs)
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    ckpt = folder / "train.pt" if folder is not None else None
    check_precision(precision)
    rec: dict[str, Any] = {"method": method, "n": n, "seed": seed, "steps": steps,
                           "device": str(device), "ensemble": ensemble}
    if precision != "fp32":
        rec["precision"] = precision
    if method == "deterministic":
        wd, scores = choose_weight_decay(make_model, x, y, steps=steps, grid=weight_decay_grid,
                                         seed=seed, lr=lr, batch_size=batch_size,
                                         checkpoint_dir=folder,
                                         checkpoint_every=checkpoint_every, precision=precision)
        before += sum(r["seconds"] for r in scores if r.get("earlier_process"))
        before += sum(r.get("seconds_before_resume", 0.0) for r in scores)
        g = seed_everything(seed)
        model = make_model()
        hist = train_deterministic(model, x, y, steps=steps, weight_decay=wd, lr=lr,
                                   batch_size=batch_size, generator=g,
                                   show_progress=show_progress, checkpoint=ckpt,
                                   checkpoint_every=checkpoint_every, precision=precision)
        metrics = evaluate(model, test_data.images, test_data.labels, samples=1)
        scores = [{k: r[k] for k in ("weight_decay", "val_accuracy", "val_nll")}
                  for r in scores]
        rec.update(weight_decay=wd, validation=scores, final_train_loss=hist["loss"],
                   ensemble=1)
    else:
        model, settings, g = build_bayes_model(
            method, seed, make_model, priors, device=device, init=init,
            log_sigma2_init=log_sigma2_init, posterior=posterior, freeze_reverse=freeze_reverse,
            conv_impl=conv_impl)
        hist = train_bnn(model, x, y, steps=steps, lr=lr, batch_size=batch_size,
                         kernel_subsample=kernel_subsample, generator=g,
                         show_progress=show_progress, checkpoint=ckpt,
                         checkpoint_every=checkpoint_every, precision=precision)
        metrics = evaluate(model, test_data.images, test_data.labels, samples=ensemble)
        rec.update(settings, kernel_subsample=kernel_subsample,
                   final_train_nll=hist["nll"][-1], final_kl=hist["kl"][-1])
    before += hist["seconds_before_resume"]
    if before:  # ``seconds`` below counts the saved work of the interrupted processes too
        rec["resumed"] = True
    if model_path is not None:
        save_bnn(model, model_path, method=method, widths=widths, in_channels=in_ch,
                 num_classes=train_data.num_classes)
        rec["model_path"] = str(model_path)
    rec.update(metrics)
    rec["seconds"] = time.perf_counter() - t0 + before
    return rec
