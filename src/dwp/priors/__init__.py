"""Kernel priors behind one interface (``KernelPrior``), and their folders on disk.

A saved prior is a folder holding

- ``prior.safetensors``: the state dict (no pickle);
- ``prior.json``: ``family``, ``kernel_size``, ``latent_size``, ``config`` (constructor
  arguments), ``dwp_version``, ``sha256`` of the safetensors file (checked on load), plus
  whatever the writer adds (``training``: the training config, ``source``: the kernel set).

A *prior folder of a network* holds one such folder per conv layer (``PRIOR/conv1/``, ...);
``load_prior_dir`` returns them as ``{layer: prior}``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from dwp import __version__
from dwp.priors.base import KernelPrior, gaussian_entropy
from dwp.priors.gaussian import FittedGaussian, IsotropicGaussian, StandardNormal
from dwp.priors.loguniform import LogUniform
from dwp.priors.vae import KernelVAE
from dwp.runtime import DwpError, atomic_write_bytes, atomic_write_json

#: family name (as in ``prior.json`` and ``--family``) -> class.
FAMILIES: dict[str, type[KernelPrior]] = {
    cls.family: cls for cls in (StandardNormal, LogUniform, IsotropicGaussian, FittedGaussian,
                                KernelVAE)
}
FORMAT = "dwp-prior"
FORMAT_VERSION = 1


def get_family(name: str) -> type[KernelPrior]:
    """The prior class registered as ``name``; ``DwpError`` lists the known ones otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise DwpError(f"unknown prior family {name!r}; choose one of {sorted(FAMILIES)}") from None


def save_prior(
    prior: KernelPrior, folder: str | Path, extra_meta: dict[str, Any] | None = None
) -> Path:
    """Write ``prior`` to ``folder`` (prior.safetensors, then prior.json, both atomically)."""
    from safetensors.torch import save

    folder = Path(folder)
    state = {k: v.detach().to("cpu").contiguous() for k, v in prior.state_dict().items()}
    blob = save(state)
    atomic_write_bytes(folder / "prior.safetensors", blob)
    meta = dict(extra_meta or {})
    meta.update(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "family": prior.family,
            "kernel_size": prior.kernel_size,
            "latent_size": getattr(prior, "z_dim", None),
            "config": prior.config(),
            "dwp_version": __version__,
            "sha256": hashlib.sha256(blob).hexdigest(),
        }
    )
    atomic_write_json(folder / "prior.json", meta)
    return folder


def read_prior_meta(folder: str | Path) -> dict[str, Any]:
    """The ``prior.json`` of a saved prior folder."""
    path = Path(folder) / "prior.json"
    if not path.exists():
        raise DwpError(f"{folder} is not a saved prior (no prior.json): run 'dwp train-prior'")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DwpError(f"{path} is not valid JSON ({exc}); retrain the prior") from exc
    if meta.get("format") != FORMAT:
        raise DwpError(f"{path} is not a dwp prior file (format {meta.get('format')!r})")
    return meta


def load_prior(folder: str | Path, map_location: str | torch.device | None = None) -> KernelPrior:
    """Load a prior saved by ``save_prior``; the checksum is verified. Returned in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    folder = Path(folder)
    meta = read_prior_meta(folder)
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise DwpError(f"{folder} was written by a newer dwp ({meta.get('dwp_version')}): upgrade")
    cls = get_family(meta["family"])
    st_path = folder / "prior.safetensors"
    if not st_path.exists():
        raise DwpError(f"{st_path} is missing: the prior folder is incomplete, retrain it")
    blob = st_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
        raise DwpError(f"{st_path}: checksum mismatch (corrupted or replaced); retrain the prior")
    try:
        state = load(blob)
    except SafetensorError as exc:
        raise DwpError(f"{st_path}: unreadable safetensors file ({exc})") from exc
    prior = cls(**meta["config"])
    try:
        prior.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise DwpError(f"{st_path} does not match its config in prior.json ({exc})") from exc
    if map_location is not None:
        prior = prior.to(map_location)
    return prior.eval()


def load_prior_dir(
    folder: str | Path, map_location: str | torch.device | None = None
) -> dict[str, KernelPrior]:
    """``{layer: prior}`` for a folder of per-layer priors (or ``{name: prior}`` for one prior)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DwpError(f"prior folder {folder} does not exist: run 'dwp train-prior' first")
    layers = prior_layer_dirs(folder)
    if not layers:
        raise DwpError(f"{folder} holds no priors (no */prior.json): run 'dwp train-prior'")
    return {p.name: load_prior(p, map_location) for p in layers}


def prior_layer_dirs(folder: str | Path) -> list[Path]:
    """The prior folders inside ``folder``: ``[folder]`` if it holds one prior itself, else its
    subfolders with a ``prior.json``, sorted by name."""
    folder = Path(folder)
    if (folder / "prior.json").exists():
        return [folder]
    return sorted(p for p in folder.iterdir() if (p / "prior.json").exists())


__all__ = [
    "FAMILIES",
    "FittedGaussian",
    "IsotropicGaussian",
    "KernelPrior",
    "KernelVAE",
    "LogUniform",
    "StandardNormal",
    "gaussian_entropy",
    "get_family",
    "load_prior",
    "load_prior_dir",
    "prior_layer_dirs",
    "read_prior_meta",
    "save_prior",
]
