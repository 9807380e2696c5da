"""The trained priors committed under benchmarks/priors/ stay loadable and usable.

They are what the CPU classification results were measured with; committing them lets a later
session add seeds without retraining them (about 2 hours on 2 cores). These tests fail when a
change to the prior format, the VAE's architecture or the Bayesian layers breaks them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dwp.bayes import bayesianize, kl
from dwp.nets import FConvMNIST
from dwp.priors import KernelVAE, load_prior_dir

PRIORS = Path(__file__).resolve().parents[1] / "benchmarks" / "priors"
FOLDERS = sorted(p for p in PRIORS.iterdir() if p.is_dir()) if PRIORS.is_dir() else []


def test_there_are_committed_priors() -> None:
    assert FOLDERS, f"no prior folders under {PRIORS}"


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_committed_prior_loads_and_gives_a_finite_bound(folder: Path) -> None:
    priors = load_prior_dir(folder)  # checks each file's sha256
    assert set(priors) == {"conv1", "conv2"}
    assert isinstance(priors["conv1"], KernelVAE) and priors["conv1"].kernel_size == 7
    assert isinstance(priors["conv2"], KernelVAE) and priors["conv2"].kernel_size == 5

    # samples have the layer's shape and a finite bound; the prior term of the target net too
    g = torch.Generator().manual_seed(0)
    for name, prior in priors.items():
        w = prior.sample(256, generator=g)
        assert w.shape == (256, prior.kernel_size, prior.kernel_size)
        assert torch.isfinite(prior.log_prob(w)).all(), name

    torch.manual_seed(0)
    model = FConvMNIST(widths=(32, 128))
    bayesianize(model, priors, init="prior", freeze_reverse=True,
                generator=torch.Generator().manual_seed(0))
    term = kl(model, kernel_subsample=64)
    assert torch.isfinite(term) and term.requires_grad


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_committed_prior_has_its_recipe(folder: Path) -> None:
    meta = json.loads((folder / "recipe.json").read_text())
    assert meta["commands"] and all(c.startswith("dwp ") for c in meta["commands"])
    for layer in ("conv1", "conv2"):
        assert (folder / layer / "metrics.json").exists()
