"""``dwp experiment ...``: the paper's experiments, one sub-command each."""

from __future__ import annotations

from pathlib import Path

import typer

from dwp.commands.options import (
    DataRoot,
    Device,
    Download,
    Progress,
    as_path,
    check_at_least_one,
)
from dwp.runtime import DwpError

app = typer.Typer(
    help="Reproduce the paper's experiments (results JSONL, summaries and figures per run).",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

PriorDir = typer.Option(
    None, "--prior-dir", help="Folder of per-layer priors (dwp train-prior output), for 'dwp'."
)
Kernels = typer.Option(
    None, "--kernels", help="Kernel-set folder or kernel file (dwp collect-kernels), for 'filters'."
)
Methods = typer.Option(
    "dwp,filters,xavier", "--methods", help="Comma-separated initialisations to compare."
)
Quick = typer.Option(False, "--quick", help="A small configuration that runs in minutes on CPU.")


def _methods(text: str) -> tuple[str, ...]:
    items = tuple(m.strip() for m in text.split(",") if m.strip())
    if not items:
        raise DwpError("--methods is empty: give e.g. --methods dwp,filters,xavier")
    return items


def _override(cfg, **values: int | None) -> None:
    """Set the given positive integer options on ``cfg``; ``None`` keeps the config's value."""
    check_at_least_one(**values)
    for name, value in values.items():
        if value is not None:
            setattr(cfg, name, value)


def _prepare_run(command, cfg, out, prior_dir, kernels, data_root, download, device, n_train):
    """Shared start of the init experiments: device, kernel sources, MNIST, run folder + config.

    Returns ``(device, sources, train, test, out)``.
    """
    from dwp.experiments.common import load_sources
    from dwp.runtime import prepare_run_dir, select_device

    dev = select_device(device)
    sources = load_sources(cfg.methods, as_path(prior_dir), as_path(kernels))
    train, test = _mnist(data_root, download, n_train, cfg.test_examples, cfg.seed)
    config = {**cfg.to_dict(), "prior_dir": str(prior_dir), "kernels": str(kernels),
              "device": str(dev), "data_root": str(data_root)}
    return dev, sources, train, test, prepare_run_dir(as_path(out), command, config)


def _mnist(data_root: Path | None, download: bool, n_train, n_test, seed: int):
    from dwp.data import class_balanced_subset, load_dataset

    train = load_dataset("mnist", "train", as_path(data_root), download)
    test = load_dataset("mnist", "test", as_path(data_root), download)
    if n_train is not None and n_train < len(train):
        train = train.subset(class_balanced_subset(train.labels, n_train, seed))
    if n_test is not None and n_test < len(test):
        test = test.subset(class_balanced_subset(test.labels, n_test, seed))
    return train, test


@app.command("features")
def features(
    out: Path = typer.Option(Path("runs/experiment-features"), "--out", "-o",
                             help="Run folder (created; rerun to resume)."),
    prior_dir: Path | None = PriorDir,
    kernels: Path | None = Kernels,
    methods: str = Methods,
    seeds: int | None = typer.Option(None, "--seeds", help="Nets per cell [10; quick 3]."),
    train_examples: int | None = typer.Option(
        None, "--train-examples", help="Class-balanced MNIST training subset [all; quick 10000]."
    ),
    test_examples: int | None = typer.Option(
        None, "--test-examples", help="Class-balanced MNIST test subset [all; quick 2000]."
    ),
    epochs: int | None = typer.Option(None, "--epochs", help="Head training epochs [10; quick 5]."),
    seed: int = typer.Option(0, "--seed", help="Base seed."),
    standardize: bool = typer.Option(
        False, "--standardize/--raw",
        help="Standardise each frozen feature with its mean/std over the TRAINING images before "
             "the linear head (a control for feature scale) [default: raw, as in the paper].",
    ),
    quick: bool = Quick,
    data_root: Path | None = DataRoot,
    download: bool = Download,
    device: str = Device,
    show_progress: bool = Progress,
) -> None:
    """Random-feature extraction (paper Fig. 3) on MNIST.

    Conv layers of FConvMNIST nets with widths scaled by k in {1/16 .. 1} get dwp / filters /
    xavier kernels and stay frozen; only the linear classifier is trained. Writes mean +- std
    test accuracy over seeds vs k (results.jsonl, summary.json, features.png).
    """
    from dwp.experiments.features import FeaturesConfig, run_features

    cfg = FeaturesConfig(methods=_methods(methods), seed=seed, standardize=standardize)
    if quick:
        cfg.seeds, cfg.train_examples, cfg.test_examples, cfg.epochs = 3, 10000, 2000, 5
    _override(cfg, seeds=seeds, train_examples=train_examples, test_examples=test_examples,
              epochs=epochs)
    dev, sources, train, test, out = _prepare_run(
        "experiment features", cfg, out, prior_dir, kernels, data_root, download, device,
        cfg.train_examples,
    )
    run_features(cfg, sources, train, test, out, dev, show_progress)
    typer.echo(f"results: {out / 'results.jsonl'}; summary: {out / 'summary.json'}; "
               f"figure: {out / 'features.png'}")


@app.command("convergence")
def convergence(
    out: Path = typer.Option(Path("runs/experiment-convergence"), "--out", "-o",
                             help="Run folder (created; rerun to resume)."),
    prior_dir: Path | None = PriorDir,
    kernels: Path | None = Kernels,
    methods: str = Methods,
    models: str = typer.Option("fconv,vae", "--models",
                               help="Comma-separated: fconv (classifier), vae (conv VAE)."),
    seeds: int | None = typer.Option(None, "--seeds", help="Nets per method [5; quick 3]."),
    steps: int | None = typer.Option(None, "--steps", help="Classifier steps [1000; quick 150]."),
    vae_steps: int | None = typer.Option(None, "--vae-steps",
                                         help="VAE steps [1000; quick 200]."),
    test_examples: int | None = typer.Option(
        None, "--test-examples", help="Class-balanced MNIST test subset [all; quick 500]."
    ),
    seed: int = typer.Option(0, "--seed", help="Base seed."),
    quick: bool = Quick,
    data_root: Path | None = DataRoot,
    download: bool = Download,
    device: str = Device,
    show_progress: bool = Progress,
) -> None:
    """Convergence from dwp / filters / xavier kernels (paper Fig. 4, Fig. 7) on MNIST.

    Test accuracy of the classifier and test ELBO of the conv VAE vs optimisation step
    (results.jsonl, summary.json, convergence.png) and VAE samples after 100..500 steps
    (vae_samples.png).
    """
    from dwp.experiments.convergence import (
        MODELS,
        ConvergenceConfig,
        diverged_cells,
        run_convergence,
    )

    model_list = tuple(m.strip() for m in models.split(",") if m.strip())
    bad = [m for m in model_list if m not in MODELS]
    if bad or not model_list:
        raise DwpError(f"--models: unknown {bad or 'empty'}; choose from {', '.join(MODELS)}")
    cfg = ConvergenceConfig(models=model_list, methods=_methods(methods), seed=seed)
    if quick:
        cfg.seeds, cfg.steps, cfg.vae_steps, cfg.test_examples = 3, 150, 200, 500
        cfg.batch_size, cfg.eval_every, cfg.vae_eval_every = 32, 15, 25
    _override(cfg, seeds=seeds, steps=steps, vae_steps=vae_steps, test_examples=test_examples)
    dev, sources, train, test, out = _prepare_run(
        "experiment convergence", cfg, out, prior_dir, kernels, data_root, download, device,
        None,
    )
    rows = run_convergence(cfg, sources, train, test, out, dev, show_progress)
    for line in diverged_cells(rows):
        typer.echo(f"warning: {line}; they are left out of the plot. From step 0, the initial "
                   "kernels are likely too large: check the prior's sample_norms in its "
                   "metrics.json (dwp train-prior --decoder-var-cap data keeps VAE samples "
                   "in the training kernels' range).", err=True)
    typer.echo(f"results: {out / 'results.jsonl'}; figures: {out / 'convergence.png'}, "
               f"{out / 'vae_samples.png'}")


@app.command("gap")
def gap(
    model: Path = typer.Option(
        ..., "--model", "-m",
        help="A 'dwp train-bnn --prior dwp' run folder, or its model.safetensors.",
    ),
    prior_dir: Path | None = typer.Option(
        None, "--prior-dir",
        help="The per-layer VAE priors the net was trained with "
             "(default: the one in the run's config.json).",
    ),
    out: Path = typer.Option(Path("runs/experiment-gap"), "--out", "-o",
                             help="Run folder (layers.jsonl, gap.json, gap.md; rerun resumes)."),
    k: int = typer.Option(10000, "--k", help="Importance samples per kernel (the paper: 10,000)."),
    max_kernels: int | None = typer.Option(
        None, "--max-kernels",
        help="Evaluate a seeded uniform subset of this many kernels per layer (sums are rescaled "
             "to the whole layer) [default: all kernels].",
    ),
    samples_per_kernel: int = typer.Option(
        1, "--samples-per-kernel", help="Fresh draws w ~ q per evaluated kernel."
    ),
    chunk: int = typer.Option(
        1 << 16, "--chunk", help="Decoder evaluations held in memory at once (lower: less memory)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the kernel subset and of all samples."),
    device: str = Device,
    show_progress: bool = Progress,
) -> None:
    """The gap between the ELBO and the auxiliary bound (paper Appendix B, Table 1).

    Per conv layer with a dwp prior: for kernels w ~ q, G = E_q( log p_IWAE(w) - L_aux(w; r) )
    in nats (IWAE with K samples of the net's reverse model r), for the net's r and for
    r(z|w) = p(z), per kernel and summed over the layer, with standard errors.
    """
    from dwp.experiments.gap import GapConfig, resolve_model, run_gap
    from dwp.runtime import prepare_run_dir, select_device

    cfg = GapConfig(k=k, max_kernels=max_kernels, samples_per_kernel=samples_per_kernel,
                    seed=seed, chunk=chunk)
    cfg.check()
    file, priors = resolve_model(model, as_path(prior_dir))
    dev = select_device(device)
    config = {**cfg.to_dict(), "model": str(file), "prior_dir": str(priors)}
    run = prepare_run_dir(as_path(out), "experiment gap", config)
    rec = run_gap(file, priors, cfg, run, dev, show_progress)
    tot = rec["total"]
    typer.echo(f"gap (nats, all layers): net's r {tot['gap_trained_r']['sum']:.4g} ± "
               f"{tot['gap_trained_r']['sum_se']:.2g}; r = p(z) {tot['gap_prior_r']['sum']:.4g} "
               f"± {tot['gap_prior_r']['sum_se']:.2g}")
    typer.echo(f"table: {run / 'gap.md'}; results: {run / 'gap.json'}")
