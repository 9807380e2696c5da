"""``dwp train-prior`` and ``dwp sample-prior``: fit kernel priors per layer, and look at them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import typer

from dwp.commands.options import Device, Progress, as_path, check_at_least_one, check_lr
from dwp.kernelsets import find_layers, load_kernel_file, read_metadata
from dwp.priors import FAMILIES, get_family, load_prior_dir, read_prior_meta, save_prior
from dwp.priors.fit import SAMPLE_TAIL_WARN, data_log_var, evaluate_prior, fit_prior
from dwp.runtime import (
    DwpError,
    atomic_write_json,
    atomic_write_text,
    prepare_run_dir,
    select_device,
)

TRAIN_COMMAND = {"short_help": "Fit a kernel prior (VAE, Gaussian, ...) per conv layer; score it."}
SAMPLE_COMMAND = {"short_help": "Plot kernels sampled from a prior beside real ones (+ latents)."}


def _parse_ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise DwpError(
            f"--iwae-k must be comma-separated integers like 1,100,1000, got {text!r}"
        ) from None
    if not ks or min(ks) < 1:
        raise DwpError(f"--iwae-k needs integers >= 1, got {text!r}")
    return ks


def _layer_kernels(
    name: str, path: Path, test_path: Path | None
) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """One layer's training kernels (N, k, k), its test kernels (M, k, k) or None, and where
    the test kernels come from; ``DwpError`` on unreadable files or mismatched sizes."""
    data = load_kernel_file(path)
    train = data["train"]
    test_w, test_src = data.get("test"), str(path) + "[test]"
    if test_path is not None:
        td = load_kernel_file(test_path)
        test_w, test_src = td.get("test", td["train"]), str(test_path)
    if test_w is not None and test_w.shape[-1] != train.shape[-1]:
        raise DwpError(
            f"{name}: test kernels are {test_w.shape[-1]}x{test_w.shape[-1]}, training "
            f"kernels {train.shape[-1]}x{train.shape[-1]}; give the same layer's kernels"
        )
    return train, test_w, test_src


def _test_files(kernels: Path, test: Path | None, layers: dict[str, Path]) -> dict[str, Path]:
    if test is None:
        return {}
    tl = find_layers(test)
    if len(layers) == 1 and len(tl) == 1:
        return {next(iter(layers)): next(iter(tl.values()))}
    missing = sorted(set(layers) - set(tl))
    if missing:
        raise DwpError(f"--test {test} lacks layers {missing} of {kernels}; give matching sets")
    return {name: tl[name] for name in layers}


def train_prior(
    kernels: Path = typer.Argument(
        ..., help="A kernel-set folder (every layer is trained) or one .safetensors/.npy file."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder PRIOR (PRIOR/LAYER/)."),
    test: Path | None = typer.Option(
        None, "--test", help="Held-out kernels (folder or file; its 'test' tensor if present, "
        "else all of it). Default: the 'test' tensor of each training file, if any."
    ),
    family: str = typer.Option(
        "vae", "--family", "-f", help=f"Prior family: one of {', '.join(sorted(FAMILIES))}."
    ),
    epochs: int = typer.Option(300, help="VAE training epochs (paper: 300)."),
    batch_size: int = typer.Option(128, help="VAE batch size (paper: 128)."),
    lr: float = typer.Option(1e-3, help="Adam learning rate, decayed linearly to 0 (paper: 1e-3)."),
    z_dim: int | None = typer.Option(None, help="VAE latent size (default: 2 for 7x7, 4 else)."),
    hidden: int | None = typer.Option(
        None, help="VAE hidden width (default: 32 for 7x7, 64 otherwise)."
    ),
    arch: str = typer.Option("auto", help="VAE architecture: auto, paper, generic, linear."),
    train_k: int = typer.Option(
        1, "--train-k", help="Importance samples in the VAE training objective: 1 = the ELBO "
        "(paper), K > 1 = the K-sample IWAE bound (tighter; about K times the decoder cost).",
    ),
    decoder_var_cap: str = typer.Option(
        "none", "--decoder-var-cap", help="Cap on the VAE decoder's per-entry variance: 'none' "
        "(the paper), 'data' (the training kernels' per-entry variance, so p(w|z) is never "
        "broader than the data; keeps the decoder variance from exploding where p(z) has mass "
        "but no training kernel was encoded) or a positive number.",
    ),
    iwae_k: str = typer.Option("1,100,1000", help="IWAE sample counts for test metrics."),
    iwae_max_kernels: int = typer.Option(
        2000, help="IWAE on at most this many random test kernels (0: all)."
    ),
    max_train_kernels: int = typer.Option(
        0, help="Fit on at most this many training kernels, a seeded random subset (0: all). "
        "For CPU runs on large 5x5 sets.",
    ),
    seed: int = typer.Option(0, help="Random seed (initialisation, batches, estimates)."),
    device: str = Device,
    show_progress: bool = Progress,
) -> None:
    """Fit a kernel prior per conv layer and score it on held-out kernels.

    Writes PRIOR/LAYER/ (prior.safetensors, prior.json, history.jsonl, metrics.json) and
    PRIOR/metrics.json: per layer train/test ELBO, test IWAE for each K and the test
    log-likelihood of a fitted full-covariance and isotropic Gaussian (nats per kernel).
    Layers already finished in PRIOR are skipped, so a rerun resumes.
    """
    get_family(family)
    # checked before the run folder is created, so none is left behind
    check_at_least_one(epochs=epochs, batch_size=batch_size, train_k=train_k, z_dim=z_dim,
                       hidden=hidden)
    for flag, value in (("--iwae-max-kernels", iwae_max_kernels),
                        ("--max-train-kernels", max_train_kernels)):
        if value < 0:
            raise DwpError(f"{flag} must be >= 0 (0: all), got {value}")
    check_lr(lr)
    cap = _parse_var_cap(decoder_var_cap)
    if cap != "none" and family != "vae":
        raise DwpError(f"--decoder-var-cap is for --family vae, not {family!r}: drop it")
    kernels = as_path(kernels)
    test = as_path(test)
    out = as_path(out)
    layers = find_layers(kernels)
    test_files = _test_files(kernels, test, layers)
    ks = _parse_ks(iwae_k)
    dev = select_device(device)
    config = {
        "kernels": str(kernels), "test": None if test is None else str(test), "family": family,
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "z_dim": z_dim, "hidden": hidden,
        "arch": arch, "iwae_k": list(ks), "iwae_max_kernels": iwae_max_kernels, "seed": seed,
        "max_train_kernels": max_train_kernels,
        "device": str(dev),
    }
    if train_k != 1:  # recorded only when set, so folders from before the flag still resume
        config["train_k"] = train_k
    if cap != "none":  # likewise
        config["decoder_var_cap"] = cap
    # every layer's kernels are read and checked before the run folder is created, so bad
    # input leaves none behind
    loaded = {name: _layer_kernels(name, path, test_files.get(name))
              for name, path in layers.items()}
    prepare_run_dir(out, "train-prior", config)
    all_metrics: dict[str, dict] = {}
    for name, path in layers.items():
        layer_dir = out / name
        done = layer_dir / "metrics.json"
        if done.exists() and (layer_dir / "prior.json").exists():
            typer.echo(f"{name}: already trained in {layer_dir}, skipping")
            all_metrics[name] = json.loads(done.read_text())
            continue
        train, test_w, test_src = loaded[name]
        if max_train_kernels and train.shape[0] > max_train_kernels:
            g = torch.Generator().manual_seed(seed)
            keep = torch.randperm(train.shape[0], generator=g)[:max_train_kernels]
            train = train[keep.sort().values]
        vae_kwargs = dict(epochs=epochs, batch_size=batch_size, lr=lr, z_dim=z_dim,
                          hidden=hidden, arch=arch, device=dev, seed=seed,
                          show_progress=show_progress, desc=name, train_k=train_k,
                          max_log_var=_cap_log_var(cap, train))
        prior, history = fit_prior(family, train, **(vae_kwargs if family == "vae" else {}))
        metrics = evaluate_prior(
            prior, train, test_w, iwae_ks=ks, iwae_max_kernels=iwae_max_kernels or None,
            seed=seed, device=dev,
        )
        metrics["test_source"] = None if test_w is None else test_src
        training = {k: v for k, v in config.items() if k not in ("kernels", "test", "device")}
        save_prior(
            prior.cpu(), layer_dir,
            {
                "layer": name,
                "training": training if family == "vae" else {"closed_form": family},
                "source": {"kernels": str(path), "n_train": int(train.shape[0]),
                           "test": metrics["test_source"], "metadata": read_metadata(path)},
            },
        )
        atomic_write_text(
            layer_dir / "history.jsonl", "".join(json.dumps(h) + "\n" for h in history)
        )
        atomic_write_json(done, metrics)
        all_metrics[name] = metrics
        typer.echo(_summary(name, metrics))
        dim = train.shape[-1] * train.shape[-2]
        if train.shape[0] <= dim:
            typer.echo(
                f"warning: {name}: {train.shape[0]} training kernels for {dim}-dimensional "
                "kernels: a full-covariance Gaussian fitted on them is singular (its 'mvn' "
                "score means little), and a prior fitted on so few kernels is unreliable. "
                "Collect kernels from more (or wider) source nets.", err=True,
            )
        if metrics.get("active_latent_dims") == 0:
            typer.echo(
                f"warning: {name}: the VAE uses none of its {metrics['latent_dims']} latent "
                "dimensions (posterior collapse), so it is one diagonal Gaussian, not a deep "
                "weight prior. Retrain it (another --seed, more --epochs, or --train-k 8) before "
                "using it.", err=True,
            )
        tail = (metrics.get("sample_norms") or {}).get("samples_above_2x_data_p99")
        if tail is not None and tail > SAMPLE_TAIL_WARN:
            sn = metrics["sample_norms"]
            typer.echo(
                f"warning: {name}: {tail:.1%} of the kernels sampled from this prior are more "
                f"than twice as large as 99% of its training kernels (sample norm p90 "
                f"{sn['sample_norm']['p90']:.3g}, p99 {sn['sample_norm']['p99']:.3g}; training "
                f"p99 {sn['data_norm']['p99']:.3g}). Its density may still score well, but "
                "initialising from its samples (init_from_prior, train-bnn --init prior) draws "
                "some kernels far too large; for a VAE the decoder variance grows where no "
                "training kernel was encoded. Retrain with --decoder-var-cap data (or more "
                "--epochs or source kernels), or initialise with --init prior-mean.", err=True,
            )
    atomic_write_json(out / "metrics.json", all_metrics)
    typer.echo(f"wrote {out}/metrics.json")


def _parse_var_cap(text: str) -> str | float:
    """``--decoder-var-cap``: 'none', 'data' or a positive variance."""
    if text in ("none", "data"):
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise DwpError(f"--decoder-var-cap must be 'none', 'data' or a positive number, got "
                       f"{text!r}")
    return value


def _cap_log_var(cap: str | float, train: torch.Tensor) -> float | None:
    """The decoder log-variance cap for one layer's training kernels (N, k, k)."""
    if cap == "none":
        return None
    return data_log_var(train) if cap == "data" else math.log(cap)


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _summary(name: str, m: dict) -> str:
    parts = [f"{name}: {m['family']} {m['kernel_size']}x{m['kernel_size']}",
             f"train {_fmt(m['train_elbo'])}", f"test {_fmt(m['test_elbo'])}"]
    if m.get("test_iwae"):
        parts.append("iwae " + " ".join(f"K={k}:{_fmt(v)}" for k, v in m["test_iwae"].items()))
    if m.get("latent_dims"):
        parts.append(f"active z {m['active_latent_dims']}/{m['latent_dims']}")
    if m.get("sample_norms"):
        sn = m["sample_norms"]
        parts.append(f"samples > train p99 {sn['samples_above_data_p99']:.1%} "
                     f"(> 2x: {sn['samples_above_2x_data_p99']:.1%})")
    if m.get("test_loglik"):
        parts.append(f"mvn {_fmt(m['test_loglik']['fitted_gaussian'])}")
        parts.append(f"iso {_fmt(m['test_loglik']['isotropic_gaussian'])}")
    return ", ".join(parts) + " (nats/kernel)"


def sample_prior(
    prior: Path = typer.Argument(..., help="A prior folder (PRIOR or PRIOR/LAYER)."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="PNG to write; with several layers FILE-LAYER.png each."
    ),
    n: int = typer.Option(64, "--n", help="Number of kernels to sample (and to show real)."),
    kernels: Path | None = typer.Option(
        None, "--kernels", help="Real kernels to show (default: the source recorded at training)."
    ),
    layer: str | None = typer.Option(None, "--layer", help="Only this layer."),
    seed: int = typer.Option(0, help="Random seed."),
    device: str = Device,
) -> None:
    """Draw kernels from a prior and save them beside real ones as a PNG.

    For a VAE with a 2-D latent space, also writes FILE-latent.png: encoder means of the real
    kernels coloured by kernel norm (paper Appendix D) and decoded kernels over a z grid.
    """
    from dwp.priors.plots import plot_latent, plot_samples, sample_for_plot

    prior_dir, out = as_path(prior), as_path(out)
    if n < 1:
        raise DwpError("--n must be >= 1")
    if out.suffix.lower() != ".png":
        raise DwpError(f"--out must end in .png, got {out}")
    dev = select_device(device)
    priors = load_prior_dir(prior_dir, map_location=dev)
    if layer is not None:
        if layer not in priors:
            raise DwpError(f"{prior_dir} has no layer {layer!r}; layers: {sorted(priors)}")
        priors = {layer: priors[layer]}
    for name, p in priors.items():
        meta_dir = prior_dir if (prior_dir / "prior.json").exists() else prior_dir / name
        meta = read_prior_meta(meta_dir)
        real = _real_kernels(kernels, name, meta)
        target = out if len(priors) == 1 else out.with_name(f"{out.stem}-{name}{out.suffix}")
        gen = torch.Generator().manual_seed(seed)
        shown = None
        if real is not None:
            p.check_kernels(real, "real kernels")
            idx = torch.randperm(real.shape[0], generator=gen)[:n]
            shown = real[idx]
        samples, means = sample_for_plot(p, n, seed)
        plot_samples(samples, shown, target, title=f"{name}: {p.family} prior", means=means)
        typer.echo(f"wrote {target}")
        if getattr(p, "z_dim", None) == 2 and real is not None:
            lat = target.with_name(f"{target.stem}-latent.png")
            sub = real[torch.randperm(real.shape[0], generator=gen)[:5000]]
            plot_latent(p, sub, lat, title=f"{name}: latent space of the {p.family} prior")
            typer.echo(f"wrote {lat}")


def _real_kernels(kernels: Path | None, name: str, meta: dict) -> torch.Tensor | None:
    if kernels is not None:
        layers = find_layers(as_path(kernels))
        path = layers.get(name) or (next(iter(layers.values())) if len(layers) == 1 else None)
        if path is None:
            raise DwpError(f"--kernels {kernels} has no layer {name!r}; layers: {sorted(layers)}")
    else:
        src = (meta.get("source") or {}).get("kernels")
        if not src or not Path(src).exists():
            return None
        path = Path(src)
    return load_kernel_file(path)["train"]
