"""``dwp train-bnn``: a Bayesian CNN (or the deterministic baseline) on a few MNIST images."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import typer

from dwp.commands.options import (
    BnnConvImpl,
    BnnPrecision,
    DataRoot,
    Device,
    Download,
    Progress,
    as_path,
    check_at_least_one,
    check_bnn_conv_impl,
    check_lr,
)
from dwp.runtime import DwpError

TestExamples = typer.Option(
    None, "--test-examples",
    help="Evaluate on the first K MNIST test images only (quick checks; default: all 10,000).",
)

COMMAND = {
    "short_help": "Train one Bayesian CNN on N MNIST images with a chosen kernel prior.",
    "help": "Variational inference for FConvMNIST on N MNIST images with a per-layer prior "
    "(dwp, sn, lu, mvn) or the deterministic L2 baseline; writes metrics.json and "
    "model.safetensors.",
}


def train_bnn(
    out: Path = typer.Option(
        ..., "--out", "-o",
        help="Run folder (config.json, metrics.json, model.safetensors: the trained model).",
    ),
    prior: str = typer.Option(
        "dwp", "--prior",
        help="dwp (deep weight prior, needs --prior-dir), sn (standard normal), lu "
        "(log-uniform), mvn (fitted Gaussian: --prior-dir of mvn priors or --kernels), or "
        "deterministic (L2 baseline, decay chosen on a validation split of the N images); "
        "or one per layer, e.g. conv1=dwp,conv2=lu (layers left out stay ordinary convs).",
    ),
    prior_dir: Path | None = typer.Option(
        None, "--prior-dir", help="Folder of per-layer priors (PRIOR/conv1, PRIOR/conv2)."
    ),
    kernels: Path | None = typer.Option(
        None, "--kernels", help="Kernel-set folder to fit the mvn priors on (with --prior mvn)."
    ),
    n: int = typer.Option(50, "--n", help="Training images (class-balanced MNIST subset)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data subset and of the model."),
    steps: int = typer.Option(
        10000, "--steps", help="Adam steps (full batch for N <= 1000: steps = epochs; the "
        "paper: 10,000 epochs at N = 50)."
    ),
    kernel_subsample: int | None = typer.Option(
        None, "--kernel-subsample",
        help="Estimate each layer's KL from this many random kernels (unbiased, rescaled); "
        "default: all kernels.",
    ),
    freeze_reverse: bool = typer.Option(
        False, "--freeze-reverse/--train-reverse",
        help="Keep the reverse model r(z|w) fixed at the prior's encoder (the paper's code) "
        "instead of training it jointly (Algorithm 1).",
    ),
    init: str | None = typer.Option(
        None, "--init",
        help="Posterior means from 'prior' samples, 'prior-mean' (dwp only: decoder means "
        "E[w|z] at z ~ p(z), no decoder noise, as the paper's code) or 'xavier' (default: "
        "prior for dwp/mvn).",
    ),
    log_sigma2_init: float = typer.Option(
        -10.0, "--log-sigma2-init", help="Initial log sigma^2 (gaussian posterior)."
    ),
    posterior: str = typer.Option(
        "auto", "--posterior",
        help="q(w) parameterisation: 'gaussian' (free log sigma^2), 'truncated-alpha' "
        "(sigma^2 = alpha mu^2, alpha < 1, as the paper's log-uniform baseline) or 'auto' "
        "(truncated-alpha for lu, gaussian otherwise).",
    ),
    ensemble: int = typer.Option(10, "--ensemble", help="Weight samples in the test ensemble."),
    lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate, decayed linearly to 0."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Mini-batch size (default: full batch for N <= 1000)."
    ),
    test_examples: int | None = TestExamples,
    checkpoint_every: int = typer.Option(
        500, "--checkpoint-every",
        help="Save the training state under OUT/checkpoints every N steps, so that a killed "
        "run resumes where it stopped when rerun and ends as an uninterrupted one (0: never).",
    ),
    conv_impl: str = BnnConvImpl,
    precision: str = BnnPrecision,
    device: str = Device,
    data_root: Path | None = DataRoot,
    download: bool = Download,
    show_progress: bool = Progress,
) -> None:
    """Train one model; write ``OUT/metrics.json`` (accuracy, nll, ece on MNIST test) and the
    trained model ``OUT/model.safetensors`` (variational parameters, reverse models, priors)."""
    from dwp.bnn import run_classification
    from dwp.data import class_balanced_subset, load_dataset
    from dwp.precision import check_precision
    from dwp.priorspec import canonical_spec, parse_prior_spec, resolve_priors
    from dwp.runtime import atomic_write_json, prepare_run_dir, select_device

    method = canonical_spec(prior)
    layer_methods = parse_prior_spec(method)
    used = set(layer_methods.values()) if layer_methods else {method}
    check_at_least_one(steps=steps, ensemble=ensemble, batch_size=batch_size,
                       test_examples=test_examples, kernel_subsample=kernel_subsample)
    check_lr(lr)
    check_bnn_conv_impl(conv_impl)
    check_precision(precision)
    if checkpoint_every < 0:
        raise DwpError(f"--checkpoint-every must be >= 0, got {checkpoint_every}")
    if init not in (None, "prior", "prior-mean", "xavier"):
        raise DwpError(f"--init must be 'prior', 'prior-mean' or 'xavier', got {init!r}")
    if init == "prior-mean" and used != {"dwp"}:
        raise DwpError(f"--init prior-mean needs --prior dwp (a latent-variable prior), not "
                       f"{method}: use --init prior or xavier")
    if init == "prior" and "log-uniform" in used:
        raise DwpError("the log-uniform prior cannot be sampled: use --init xavier")
    from dwp.bayes import POSTERIORS
    from dwp.priorspec import default_posterior

    if posterior not in ("auto", *POSTERIORS):
        raise DwpError(f"--posterior must be auto, {' or '.join(POSTERIORS)}; got {posterior!r}")
    if posterior == "auto":  # per-layer specs: each layer its method's default
        posterior = None if layer_methods else default_posterior(method)
    dev = select_device(device)
    out = as_path(out)
    config = {
        "method": method, "prior_dir": str(prior_dir) if prior_dir else None,
        "kernels": str(kernels) if kernels else None, "n": n, "seed": seed, "steps": steps,
        "kernel_subsample": kernel_subsample, "freeze_reverse": freeze_reverse, "init": init,
        "log_sigma2_init": log_sigma2_init, "posterior": posterior, "ensemble": ensemble,
        "lr": lr, "batch_size": batch_size, "device": str(dev), "test_examples": test_examples,
        "data_root": str(data_root) if data_root else None, "download": download,
        "conv_impl": conv_impl,
    }
    if precision != "fp32":  # only then, so that earlier run folders still resume
        config["precision"] = precision
    metrics_path = out / "metrics.json"
    priors = resolve_priors(method, as_path(prior_dir), as_path(kernels), map_location=dev)
    _warn_oversized_samples(method, prior_dir, init)
    train = load_dataset("mnist", "train", as_path(data_root), download)
    test = load_dataset("mnist", "test", as_path(data_root), download)
    if test_examples is not None:
        import torch

        test = test.subset(torch.arange(min(test_examples, len(test))))
    class_balanced_subset(train.labels, n, seed)  # a bad --n fails here, before OUT is made
    prepare_run_dir(out, "train-bnn", config)
    checkpoints = out / "checkpoints"
    if metrics_path.exists():
        typer.echo(f"{metrics_path} exists (this run is done):")
        typer.echo(metrics_path.read_text().strip())
        return
    rec = run_classification(
        method, n, seed, train_data=train, test_data=test, steps=steps, priors=priors,
        device=dev, kernel_subsample=kernel_subsample, freeze_reverse=freeze_reverse, init=init,
        log_sigma2_init=log_sigma2_init, posterior=posterior, ensemble=ensemble, lr=lr,
        batch_size=batch_size, show_progress=show_progress, model_path=out / "model.safetensors",
        checkpoint_dir=checkpoints if checkpoint_every else None,
        checkpoint_every=checkpoint_every or 1, conv_impl=conv_impl, precision=precision,
    )
    rec["test_examples"] = len(test)
    if rec.get("layers"):
        from dwp.bayes import format_report

        typer.echo(format_report(rec["layers"]), err=True)
    atomic_write_json(metrics_path, rec)
    shutil.rmtree(checkpoints, ignore_errors=True)
    brief = {k: rec[k] for k in ("method", "n", "seed", "accuracy", "nll", "ece", "seconds")}
    typer.echo(json.dumps(brief))


EXPERIMENT_COMMAND = {
    "short_help": "Paper Fig. 2: test accuracy vs N for each prior, over seeds.",
    "help": "The classification grid (paper Fig. 2/5): sizes x methods x seeds of train-bnn, "
    "resumable; writes results.jsonl, summary.md (mean ± sd per cell; dwp minus each baseline "
    "paired by seed) and accuracy.png.",
}


def _warn_oversized_samples(method: str, prior_dir: Path | None, init: str | None) -> None:
    """Warn when the posterior means start from samples of a prior whose saved metrics say its
    samples are far larger than its training kernels (see ``dwp train-prior``)."""
    from dwp.priors.fit import SAMPLE_TAIL_WARN
    from dwp.priorspec import default_init, oversized_sample_layers, parse_prior_spec

    if prior_dir is None or parse_prior_spec(method) is not None:
        return
    if (init or default_init(method)) != "prior":
        return
    layers = oversized_sample_layers(as_path(prior_dir), SAMPLE_TAIL_WARN)
    if layers:
        which = ", ".join(f"{name} ({frac:.0%})" for name, frac in layers)
        typer.echo(f"warning: the posterior means start from prior samples, and in {prior_dir} "
                   f"this share of the samples of {which} is over twice the training kernels' "
                   "99th-percentile norm (sample_norms in metrics.json), so some posterior "
                   "means start, and may stay, far larger than any source kernel. --init "
                   "prior-mean, or a prior trained with 'dwp train-prior --decoder-var-cap data', "
                   "avoids that (at N = 50 neither made dwp more accurate: BENCHMARKS.md, "
                   "'Stop 36').", err=True)


def _int_list(text: str, what: str) -> list[int]:
    try:
        if "-" in text and "," not in text:
            a, b = (int(v) for v in text.split("-"))
            return list(range(a, b + 1))
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise DwpError(
            f"{what}: expected integers like 50,100 or a range 0-9, got {text!r}"
        ) from exc


def training_units(
    todo: list[tuple[str, int, int]], batch_seeds: bool, batch_sizes_up_to: int = 0
) -> list[tuple[str, list[tuple[int, int]]]]:
    """Group the grid's missing (method, N, seed) runs into trainings: ``(method, [(N, seed),
    ...])``, in order of first appearance. Alone when not ``batch_seeds``; else all seeds of a
    (method, N) cell together, and all cells of a method with N <= ``batch_sizes_up_to`` in
    one training."""
    if batch_sizes_up_to < 0:
        raise DwpError(f"--batch-sizes-up-to must be >= 0, got {batch_sizes_up_to}")
    units: dict[tuple, tuple[str, list[tuple[int, int]]]] = {}
    for i, (m, n, s) in enumerate(todo):
        key = (m, "small") if n <= batch_sizes_up_to else (m, n)
        if not batch_seeds:
            key = (i,)
        units.setdefault(key, (m, []))[1].append((n, s))
    return list(units.values())


def experiment_classification(
    out: Path = typer.Option(..., "--out", "-o", help="Experiment folder (rerun to resume)."),
    sizes: str = typer.Option("50,100,200,500,1000", "--sizes", help="Training-set sizes N."),
    methods: str = typer.Option(
        "dwp,standard-normal,log-uniform,fitted-gaussian,deterministic", "--methods",
        help="Comma-separated: dwp, standard-normal (sn), log-uniform (lu), fitted-gaussian "
        "(mvn), deterministic.",
    ),
    seeds: str = typer.Option("0-9", "--seeds", help="Data-subset seeds: '0-9' or '0,1,2'."),
    steps: int = typer.Option(10000, "--steps", help="Steps per run (full batch: epochs)."),
    prior_dir: Path | None = typer.Option(
        None, "--prior-dir", help="Per-layer VAE priors (for dwp)."
    ),
    mvn_prior_dir: Path | None = typer.Option(
        None, "--mvn-prior-dir", help="Per-layer fitted-Gaussian priors (for fitted-gaussian)."
    ),
    kernels: Path | None = typer.Option(
        None, "--kernels", help="Kernel set to fit the fitted-Gaussian priors on."
    ),
    kernel_subsample: int | None = typer.Option(
        None, "--kernel-subsample", help="Unbiased KL estimate from this many kernels per layer."
    ),
    freeze_reverse: bool = typer.Option(
        False, "--freeze-reverse/--train-reverse", help="Freeze r(z|w) (the paper's code)."
    ),
    ensemble: int = typer.Option(10, "--ensemble", help="Weight samples in the test ensemble."),
    batch_seeds: bool | None = typer.Option(
        None, "--batch-seeds/--one-at-a-time",
        help="Train all missing seeds of a (method, N) cell at once in one vmapped computation "
        "(the deterministic baseline: all seeds x weight decays, then the final nets; a killed "
        "cell reruns whole), or each run alone. Default: batched on CUDA, one at a time on CPU "
        "(where vmapped convolutions are slower: BENCHMARKS.md).",
    ),
    batch_sizes_up_to: int = typer.Option(
        200, "--batch-sizes-up-to",
        help="With --batch-seeds: also train the cells of all sizes N up to this together, per "
        "method (training sets padded to the largest, each net still fitting exactly its own N "
        "images, full batch): fewer, larger trainings where small cells are launch-bound. "
        "0: one (method, N) cell per training.",
    ),
    cuda_graph: bool = typer.Option(
        False, "--cuda-graph/--no-cuda-graph",
        help="With --batch-seeds on CUDA: record one training step as a CUDA graph and replay "
        "it (removes per-step launch overhead; full-batch sizes only, else eager).",
    ),
    note: str = typer.Option("", "--note", help="A note stored with every result row."),
    test_examples: int | None = TestExamples,
    conv_impl: str = BnnConvImpl,
    precision: str = BnnPrecision,
    device: str = Device,
    data_root: Path | None = DataRoot,
    download: bool = Download,
    show_progress: bool = Progress,
) -> None:
    """Run every (method, N, seed) not yet in OUT/results.jsonl, then summarise and plot."""
    from dwp.bnn import run_classification
    from dwp.data import class_balanced_subset, load_dataset
    from dwp.experiments.classification import (
        calibration_table,
        paired_table,
        plot_accuracy,
        summary_table,
    )
    from dwp.precision import check_precision
    from dwp.priorspec import canonical_method, resolve_priors
    from dwp.runtime import (
        append_jsonl,
        atomic_write_text,
        prepare_run_dir,
        progress,
        read_jsonl,
        select_device,
    )

    method_list = [canonical_method(m.strip()) for m in methods.split(",") if m.strip()]
    size_list, seed_list = _int_list(sizes, "--sizes"), _int_list(seeds, "--seeds")
    if not method_list or not size_list or not seed_list:
        raise DwpError("--methods, --sizes and --seeds must each name at least one value")
    check_at_least_one(steps=steps, ensemble=ensemble, test_examples=test_examples,
                       kernel_subsample=kernel_subsample)
    check_bnn_conv_impl(conv_impl)
    check_precision(precision)
    training_units([], False, batch_sizes_up_to)  # checks the value before OUT is made
    dev = select_device(device)
    out = as_path(out)
    config = {
        "sizes": size_list, "methods": method_list, "steps": steps,
        "prior_dir": str(prior_dir) if prior_dir else None,
        "mvn_prior_dir": str(mvn_prior_dir) if mvn_prior_dir else None,
        "kernels": str(kernels) if kernels else None, "kernel_subsample": kernel_subsample,
        "freeze_reverse": freeze_reverse, "ensemble": ensemble, "device": str(dev),
        "test_examples": test_examples,
        "data_root": str(data_root) if data_root else None, "download": download,
        "conv_impl": conv_impl,
    }
    if precision != "fp32":  # only then, so that earlier experiment folders still resume
        config["precision"] = precision
    priors = {}
    for m in method_list:
        pdir = prior_dir if m == "dwp" else mvn_prior_dir if m == "fitted-gaussian" else None
        priors[m] = resolve_priors(m, as_path(pdir), as_path(kernels), map_location=dev)
    train = load_dataset("mnist", "train", as_path(data_root), download)
    test = load_dataset("mnist", "test", as_path(data_root), download)
    if test_examples is not None:
        import torch

        test = test.subset(torch.arange(min(test_examples, len(test))))
    for n in size_list:  # a bad size fails here, before OUT is made
        class_balanced_subset(train.labels, n, seed_list[0])
    # the grid may grow between reruns (sizes, methods, seeds); everything else must match
    fixed = {k: v for k, v in config.items() if k not in ("sizes", "methods")}
    prepare_run_dir(out, "experiment classification", fixed)
    results = out / "results.jsonl"
    done = {(r["method"], r["n"], r["seed"]) for r in read_jsonl(results)}
    todo = [(m, n, s) for n in size_list for m in method_list for s in seed_list
            if (m, n, s) not in done]
    # one unit of work: a single run, or cells of one method trained together (batch_seeds)
    if batch_seeds is None:
        batch_seeds = dev.type == "cuda"
    units = training_units(todo, batch_seeds, batch_sizes_up_to)
    typer.echo(f"{len(done)} runs done, {len(todo)} to go in {len(units)} training(s) "
               f"-> {results}", err=True)
    common = {"train_data": train, "test_data": test, "steps": steps, "device": dev,
              "kernel_subsample": kernel_subsample, "freeze_reverse": freeze_reverse,
              "ensemble": ensemble, "conv_impl": conv_impl, "precision": precision}
    for m, cells in progress(units, desc="grid", enabled=show_progress):
        if len(cells) > 1:
            from dwp.bnn_batched import run_classification_cells, run_deterministic_cells

            if m == "deterministic":
                recs = run_deterministic_cells(cells, cuda_graph=cuda_graph, **common)
            else:
                recs = run_classification_cells(m, cells, priors=priors[m],
                                                cuda_graph=cuda_graph, **common)
        else:
            (n, seed), = cells
            ckpt = out / "checkpoints" / f"{m}-n{n}-s{seed}"
            recs = [run_classification(m, n, seed, priors=priors[m], checkpoint_dir=ckpt,
                                       **common)]
        for rec in recs:
            rec.pop("layers", None)
            rec.pop("validation", None)
            if note:
                rec["note"] = note
            if test_examples is not None:
                rec["test_examples"] = len(test)
            append_jsonl(results, rec)
        if len(cells) == 1:
            shutil.rmtree(out / "checkpoints" / f"{m}-n{n}-s{seed}", ignore_errors=True)
    with contextlib.suppress(OSError):  # resume files of finished runs are gone: drop the folder
        (out / "checkpoints").rmdir()
    rows = [r for r in read_jsonl(results) if r["method"] in method_list]
    table = summary_table(rows)
    if paired := paired_table(rows):
        table += "\n\n" + paired
    if calibration := calibration_table(rows):
        table += "\n\n" + calibration
    atomic_write_text(out / "summary.md", table + "\n")
    plot_accuracy(rows, out / "accuracy.png")
    typer.echo(table)
