"""Trained Bayesian CNNs on disk: :func:`save_bnn` writes one safetensors file with the
metadata to rebuild the model, :func:`load_bnn` rebuilds it, and :func:`load_run` rebuilds the
model of a whole ``dwp train-bnn`` run folder."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dwp.bayes import bayes_layers
from dwp.priorspec import canonical_spec, match_priors
from dwp.runtime import DwpError

BNN_FORMAT = "dwp-bnn"


def save_bnn(
    model: nn.Module,
    path: str | Path,
    *,
    method: str,
    widths: Sequence[int],
    in_channels: int,
    num_classes: int,
) -> None:
    """Save a trained FConvMNIST (Bayesian or not) as one safetensors file, atomically.

    The file holds the whole state dict (for variational layers: ``weight_mu``, ``log_sigma2``
    or ``alpha_logit``, ``bias``, the reverse model ``reverse.*`` and the prior ``prior.*``) and
    metadata (``format``, ``method``, ``widths``, ``in_channels``, ``num_classes``,
    ``posterior``) to rebuild it.
    """
    from safetensors.torch import save_model

    from dwp.runtime import atomic_path

    meta = {"format": BNN_FORMAT, "method": canonical_spec(method),
            "widths": json.dumps([int(w) for w in widths]), "in_channels": str(int(in_channels)),
            "num_classes": str(int(num_classes))}
    layers = bayes_layers(model)
    if layers:
        meta["posterior"] = layers[0][1].posterior
        meta["posteriors"] = json.dumps({name: layer.posterior for name, layer in layers})
    with atomic_path(path) as tmp:
        save_model(model, str(tmp), metadata=meta)


def load_bnn(
    path: str | Path, priors: Any = None, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, str]]:
    """Rebuild a model saved by :func:`save_bnn`: returns (model in eval mode, metadata).

    ``priors`` must be the priors it was trained with (as for
    :func:`dwp.bnn.run_classification`; they fix the layers' architecture, their weights are
    then read from the file); ``None`` for the deterministic baseline.
    """
    from safetensors import safe_open
    from safetensors.torch import load_model

    from dwp.bayes import bayesianize
    from dwp.nets import FConvMNIST

    path = Path(path)
    if not path.is_file():
        raise DwpError(f"no saved model at {path}: train one with 'dwp train-bnn' first")
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    if meta.get("format") != BNN_FORMAT:
        raise DwpError(f"{path} is not a model saved by dwp train-bnn (format "
                       f"{meta.get('format')!r})")
    method = canonical_spec(meta["method"])
    if (priors is None) != (method == "deterministic"):
        raise DwpError(f"{path} holds a {method} model: pass the priors it was trained with"
                       if priors is None else f"{path} holds a deterministic model: no priors")
    model = FConvMNIST(json.loads(meta["widths"]), in_channels=int(meta["in_channels"]),
                       num_classes=int(meta["num_classes"]))
    if priors is not None:
        priors = match_priors(model, priors)
        posteriors = json.loads(meta.get("posteriors", "{}"))  # {full layer name: posterior}
        if len(set(posteriors.values())) > 1 and isinstance(priors, dict):  # per-layer methods
            for key, prior in priors.items():
                post = next((v for k, v in posteriors.items()
                             if key in (k, k.rsplit(".", 1)[-1])), "gaussian")
                bayesianize(model, {key: prior}, init="xavier", posterior=post)
        else:
            bayesianize(model, priors, init="xavier", posterior=meta.get("posterior", "gaussian"))
    model.to(map_location)
    try:
        load_model(model, str(path), strict=True, device=str(map_location))
    except RuntimeError as exc:
        raise DwpError(f"{path} does not match the given priors: {str(exc).splitlines()[0]}") \
            from None
    return model.eval(), meta


def load_run(
    run: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a finished ``dwp train-bnn --out RUN`` folder.

    Reads ``RUN/config.json`` (the run's command-line settings), rebuilds the priors it names
    (``method``, ``prior_dir``, ``kernels``) and loads ``RUN/model.safetensors`` with
    :func:`load_bnn`. Returns (model in eval mode, the config dict: ``method``, ``n``,
    ``seed``, ``steps``, ``prior_dir``, ...).
    """
    from dwp.priorspec import resolve_priors

    run = Path(run)
    cfg_path, model_path = run / "config.json", run / "model.safetensors"
    if not cfg_path.is_file() or not model_path.is_file():
        raise DwpError(f"{run} is not a finished train-bnn run (needs config.json and "
                       f"model.safetensors): train one with 'dwp train-bnn --out {run}'")
    cfg = json.loads(cfg_path.read_text())["config"]
    priors = resolve_priors(cfg["method"], cfg.get("prior_dir"), cfg.get("kernels"),
                            map_location=map_location)
    model, _ = load_bnn(model_path, priors, map_location=map_location)
    return model, cfg
