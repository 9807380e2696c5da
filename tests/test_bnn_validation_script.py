"""The validation split of benchmarks/bnn_validation.py (disjoint from the run's images)."""

from __future__ import annotations

import pytest
import torch

from dwp.data import class_balanced_subset


def test_validation_indices_exclude_training_subset_and_are_fixed(benchmark_script):
    mod = benchmark_script("bnn_validation")
    labels = torch.arange(1000) % 10
    subset = class_balanced_subset(labels, 50, seed=3)
    a = mod.validation_indices(labels, 400, subset)
    b = mod.validation_indices(labels, 400, class_balanced_subset(labels, 50, seed=4))
    assert not torch.isin(a, subset).any()
    assert 400 - 50 <= a.numel() <= 400 and torch.equal(a, a.unique())
    # the same fixed draw for every run, up to the excluded training images
    common = torch.isin(a, b).sum().item()
    assert common >= 400 - 2 * 50
    with pytest.raises(Exception, match="val-examples"):
        mod.validation_indices(labels, 0, subset)


def test_spearman_known_values(benchmark_script):
    rho = benchmark_script("bnn_validation").spearman
    assert rho([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rho([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # d = (0, 0, 1, -1): rho = 1 - 6 * 2 / (4 * 15) = 0.8 (no ties)
    assert rho([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(0.8)
