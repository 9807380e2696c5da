"""Which prior each conv layer of a Bayesian CNN gets.

- :func:`canonical_method` / :func:`parse_prior_spec`: method names and their aliases (``dwp``,
  ``sn``, ``lu``, ``mvn``, ``deterministic``) and per-layer specs (``conv1=dwp,conv2=lu``);
- :func:`resolve_priors`: the ``KernelPrior`` objects a method or spec stands for (read from a
  prior folder, or fitted on a kernel set);
- :func:`default_init` / :func:`default_posterior`: each method's defaults, as the paper's code;
- :func:`match_priors`: per-layer priors keyed to a model's conv layers.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dwp.runtime import DwpError

METHODS = ("dwp", "standard-normal", "log-uniform", "fitted-gaussian", "deterministic")
METHOD_ALIASES = {
    "dwp": "dwp", "vae": "dwp", "sn": "standard-normal", "standard-normal": "standard-normal",
    "lu": "log-uniform", "log-uniform": "log-uniform", "loguniform": "log-uniform",
    "mvn": "fitted-gaussian", "fitted-gaussian": "fitted-gaussian",
    "det": "deterministic", "deterministic": "deterministic",
}


def canonical_method(name: str) -> str:
    """Map a method name or alias (dwp, sn, lu, mvn, det, ...) to one of ``METHODS``."""
    try:
        return METHOD_ALIASES[name.lower()]
    except KeyError:
        raise DwpError(
            f"unknown prior/method {name!r}: use one of dwp, sn, lu, mvn, deterministic"
        ) from None


def parse_prior_spec(spec: str) -> dict[str, str] | None:
    """Per-layer methods of a ``LAYER=METHOD,...`` spec; ``None`` for a plain method name.

    ``"conv1=dwp,conv2=lu"`` -> ``{"conv1": "dwp", "conv2": "log-uniform"}`` (layer names as in
    the model: ``conv1`` or ``features.conv1``; methods as :func:`canonical_method`, not
    ``deterministic``: leave a layer out to keep it an ordinary, unpenalised conv).
    """
    if "=" not in spec:
        return None
    out: dict[str, str] = {}
    for part in spec.split(","):
        layer, sep, name = (v.strip() for v in part.partition("="))
        if not sep or not layer or not name:
            raise DwpError(f"per-layer prior {part!r} in {spec!r}: write LAYER=METHOD, e.g. "
                           f"conv1=dwp,conv2=lu")
        if layer in out:
            raise DwpError(f"layer {layer!r} is given twice in {spec!r}")
        method = canonical_method(name)
        if method == "deterministic":
            raise DwpError(f"{part!r}: deterministic is not a prior; leave {layer} out of the "
                           f"spec to keep it an ordinary conv layer")
        out[layer] = method
    return out


def canonical_spec(spec: str) -> str:
    """:func:`canonical_method` for a plain name; ``conv1=dwp,conv2=log-uniform`` (aliases
    resolved, order kept) for a per-layer spec (:func:`parse_prior_spec`)."""
    layers = parse_prior_spec(spec)
    if layers is None:
        return canonical_method(spec)
    return ",".join(f"{k}={m}" for k, m in layers.items())


def default_posterior(method: str) -> str:
    """The posterior parameterisation a method uses unless told otherwise.

    ``"truncated-alpha"`` (sigma^2 = alpha mu^2, alpha < 1) for log-uniform, as the paper's
    code: with a free variance the log-uniform KL is minimised by switching every weight off
    (alpha -> infinity), which on 50 images wins over the data term and leaves a chance-level
    net. ``"gaussian"`` (free log sigma^2) for every other prior.
    """
    return "truncated-alpha" if canonical_method(method) == "log-uniform" else "gaussian"


def _layer_metrics(prior_dir: str | Path):
    """(layer name, metrics dict) for each layer of a prior folder with a readable
    ``metrics.json`` (written by ``dwp train-prior``); layers without one are left out."""
    from dwp.priors import prior_layer_dirs

    for d in prior_layer_dirs(prior_dir):
        try:
            yield d.name, json.loads((d / "metrics.json").read_text())
        except (OSError, ValueError):
            continue


def collapsed_vae_layers(prior_dir: str | Path) -> list[str]:
    """Layers of a prior folder whose saved metrics report no active latent dimension.

    Priors trained before that field existed, or without metrics, are not reported.
    """
    return [name for name, m in _layer_metrics(prior_dir) if m.get("active_latent_dims") == 0]


def oversized_sample_layers(prior_dir: str | Path, above: float) -> list[tuple[str, float]]:
    """(layer, fraction) for layers whose saved ``sample_norms`` (``dwp train-prior``) put more
    than ``above`` of the prior's samples over twice the training kernels' 99th-percentile
    norm. Priors saved before that field existed are not reported."""
    out = []
    for name, m in _layer_metrics(prior_dir):
        frac = (m.get("sample_norms") or {}).get("samples_above_2x_data_p99")
        if frac is not None and frac > above:
            out.append((name, float(frac)))
    return out


def resolve_priors(
    method: str,
    prior_dir: str | None = None,
    kernels: str | None = None,
    map_location: str | torch.device | None = None,
) -> Any:
    """The prior(s) of a method: one ``KernelPrior`` for all convs, or ``{layer: prior}``.

    ``dwp`` reads the per-layer VAE priors of ``prior_dir``; ``fitted-gaussian`` reads the
    fitted-Gaussian priors of ``prior_dir`` or fits them now on the kernel set ``kernels``
    (``train`` split). ``deterministic`` -> ``None``.
    """
    from dwp.priors import FittedGaussian, LogUniform, StandardNormal, load_prior_dir

    layers = parse_prior_spec(method)
    if layers is not None:
        return _resolve_layer_priors(layers, prior_dir, kernels, map_location)
    method = canonical_method(method)
    if method == "deterministic":
        return None
    if method == "standard-normal":
        return StandardNormal()
    if method == "log-uniform":
        return LogUniform()
    if method == "dwp":
        if prior_dir is None:
            raise DwpError("--prior dwp needs --prior-dir (a folder made by 'dwp train-prior')")
        priors = load_prior_dir(prior_dir, map_location)
        bad = {k: p.family for k, p in priors.items() if p.explicit}
        if bad:
            raise DwpError(f"{prior_dir} holds explicit priors {bad}, not deep weight priors "
                           f"(family vae): use --prior mvn/sn/lu for them or another --prior-dir")
        collapsed = collapsed_vae_layers(prior_dir)
        if collapsed:
            warnings.warn(
                f"{prior_dir}: the VAE of {', '.join(collapsed)} uses none of its latent "
                "dimensions (posterior collapse, see its metrics.json), so it acts as one "
                "diagonal Gaussian; such priors gave 0.13-0.25 accuracy at N = 50 "
                "(BENCHMARKS.md). Retrain it with 'dwp train-prior' (another --seed).",
                stacklevel=2,
            )
        return priors
    # fitted-gaussian
    if prior_dir is not None:
        priors = load_prior_dir(prior_dir, map_location)
        bad = {k: p.family for k, p in priors.items() if p.family != "mvn"}
        if bad:
            raise DwpError(f"{prior_dir} holds {bad}, not fitted Gaussians (family mvn): pass "
                           f"--kernels KERNELSET to fit them, or a prior dir of mvn priors")
        return priors
    if kernels is None:
        raise DwpError("--prior mvn needs --prior-dir (mvn priors) or --kernels (a kernel set)")
    from dwp.kernelsets import find_layers, load_kernel_file

    return {name: FittedGaussian.fit(load_kernel_file(path)["train"])
            for name, path in find_layers(kernels).items()}


def _resolve_layer_priors(
    layers: dict[str, str],
    prior_dir: str | None,
    kernels: str | None,
    map_location: str | torch.device | None,
) -> dict[str, Any]:
    """``{layer: prior}`` for a per-layer spec: each layer's prior from its method's source."""
    out: dict[str, Any] = {}
    for layer, method in layers.items():
        # a fitted Gaussian beside a dwp layer is fitted on --kernels, not read from --prior-dir
        src = None if method == "fitted-gaussian" and kernels is not None else prior_dir
        prior = resolve_priors(method, src, kernels, map_location)
        if isinstance(prior, dict):
            short = layer.rsplit(".", 1)[-1]
            if short not in prior:
                where = src if src is not None else kernels
                raise DwpError(f"{where} has no prior for layer {short!r} (it has "
                               f"{', '.join(sorted(prior))}) for {layer}={method}")
            prior = prior[short]
        out[layer] = prior
    return out


def default_init(method: str) -> str:
    """Posterior-mean initialisation of a method: a prior sample for dwp and fitted-gaussian
    (as the paper's code), Xavier otherwise."""
    return "prior" if canonical_method(method) in ("dwp", "fitted-gaussian") else "xavier"


def match_priors(model: nn.Module, priors: Any) -> Any:
    """Key per-layer priors by layer name when the names match the model's convs, else by k."""
    if priors is None or not isinstance(priors, dict):
        return priors
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m) is nn.Conv2d}
    names |= {n for n, m in model.named_modules() if type(m) is nn.Conv2d}
    if all(k in names for k in priors):
        return priors
    by_k: dict[int, Any] = {}
    for key, p in priors.items():
        if p.kernel_size is None or p.kernel_size in by_k:
            raise DwpError(f"cannot match prior {key!r} to a conv layer by name or kernel size: "
                           f"name the prior folders after the layers ({', '.join(sorted(names))})")
        by_k[p.kernel_size] = p
    return by_k
