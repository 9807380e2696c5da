"""Classification metrics on predicted probabilities: accuracy, NLL, ECE, and ensembling."""

from __future__ import annotations

import torch

from dwp.runtime import DwpError


def _check(probs: torch.Tensor, labels: torch.Tensor) -> None:
    if probs.ndim != 2 or labels.ndim != 1 or probs.shape[0] != labels.shape[0]:
        raise DwpError(
            f"expected probabilities (N, C) and labels (N,), got {tuple(probs.shape)} and "
            f"{tuple(labels.shape)}"
        )


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows of ``probs`` (N, C) whose argmax equals ``labels`` (N,)."""
    _check(probs, labels)
    return (probs.argmax(1) == labels.to(probs.device)).double().mean().item()


def nll(probs: torch.Tensor, labels: torch.Tensor, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood -log p(y_i) in nats; ``probs`` (N, C), ``labels`` (N,)."""
    _check(probs, labels)
    p = probs.double().gather(1, labels.to(probs.device).long()[:, None]).squeeze(1)
    return (-torch.log(p.clamp_min(eps))).mean().item()


def ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error with ``n_bins`` equal-width confidence bins (Guo et al., 2017).

    sum_b |B_b| / N * |acc(B_b) - conf(B_b)|, with confidence = max probability; bins are
    (lo, hi] as in the usual implementation.
    """
    _check(probs, labels)
    conf, pred = probs.double().max(1)
    correct = (pred == labels.to(probs.device)).double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64, device=probs.device)
    total = torch.zeros((), dtype=torch.float64, device=probs.device)
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            frac = in_bin.double().mean()
            total = total + frac * (correct[in_bin].mean() - conf[in_bin].mean()).abs()
    return total.item()


def ensemble(prob_list: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """Average member probabilities: a list of (N, C) or a tensor (M, N, C) -> (N, C)."""
    stacked = torch.stack(list(prob_list)) if isinstance(prob_list, list) else prob_list
    if stacked.ndim != 3:
        raise DwpError(f"expected M x (N, C) member probabilities, got {tuple(stacked.shape)}")
    return stacked.mean(0)


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """``{"accuracy", "nll", "ece"}`` of probabilities (N, C) against labels (N,)."""
    return {"accuracy": accuracy(probs, labels), "nll": nll(probs, labels),
            "ece": ece(probs, labels)}
