"""The gap between the true ELBO and the auxiliary bound (paper Appendix B, Table 1).

For a layer with an implicit (VAE) prior p(w) = ∫ p(w|z) p(z) dz, variational inference
(Algorithm 1) replaces the intractable -KL(q || p) per kernel by the auxiliary bound

    L_aux(w; r) = E_{r(z|w)}[log p(w|z) + log p(z) - log r(z|w)] <= log p(w),

so the gap of the ELBO, summed over the kernels of a layer, is
G = Σ_i E_{q(w_i)}[log p(w_i) - L_aux(w_i; r)] >= 0. It is estimated, as in the paper, with the
IWAE bound at K samples of r(z|w) in place of log p(w) (a lower bound that tends to log p(w),
so the estimate is itself a lower bound on G in expectation):

    G_K = Σ_i E_q[ log (1/K) Σ_j e^{ℓ_j}  -  (1/K) Σ_j ℓ_j ],   ℓ_j = log p(w|z_j) p(z_j) / r(z_j|w)

for (a) the net's reverse model r (trained with q, or frozen at the prior's encoder) and (b)
r(z|w) ≡ p(z) (:class:`PriorReverse`). For (a) both terms use the same K samples, so every
per-kernel estimate is >= 0 (Jensen); for (b) log p(w) is the IWAE estimate with the net's r as
proposal (the better proposal), the auxiliary bound is from K independent samples of p(z).
The entropy of q cancels in the gap; the per-kernel auxiliary KL terms (-H(q) - L_aux) are
reported too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from dwp.priors.base import gaussian_entropy
from dwp.priors.vae import LOG_2PI, KernelVAE, gaussian_log_pdf
from dwp.runtime import DwpError


class PriorReverse(nn.Module):
    """r(z | w) ≡ p(z) = N(0, I): kernels (N, k, k) -> (zeros (N, z), zeros (N, z))."""

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.z_dim = int(z_dim)

    def forward(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zeros = w.new_zeros(w.shape[0], self.z_dim)
        return zeros, zeros


@torch.no_grad()
def importance_bounds(
    vae: KernelVAE,
    w: torch.Tensor,
    reverse: nn.Module,
    k: int,
    chunk: int = 1 << 16,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """IWAE estimate and auxiliary bound of log p(w) from the same K samples z_j ~ r(z | w).

    ``w`` (N, k, k), ``reverse`` maps kernels to (mean (N, z), log-variance (N, z)) of r.
    Returns ``(iwae, aux)``, each (N,) float64: log (1/K) Σ_j e^{ℓ_j} and (1/K) Σ_j ℓ_j with
    ℓ_j = log p(w|z_j) + log p(z_j) - log r(z_j|w); ``iwae >= aux`` row by row. At most
    ``chunk`` decoder evaluations are held in memory at once.
    """
    vae.check_kernels(w)
    if k < 1:
        raise DwpError(f"the IWAE estimate needs k >= 1 samples, got {k}")
    if chunk < 1:
        raise DwpError(f"chunk must be >= 1, got {chunk}")
    n = w.shape[0]
    nb = max(1, min(n, chunk // k))
    kb = max(1, min(k, chunk // nb))
    iwae, aux = [], []
    for i in range(0, n, nb):
        wb = w[i : i + nb]
        mu_z, lv_z = reverse(wb)
        std_z = torch.exp(0.5 * lv_z)
        lse = torch.full((wb.shape[0],), -math.inf, dtype=torch.float64, device=w.device)
        total = torch.zeros(wb.shape[0], dtype=torch.float64, device=w.device)
        for j in range(0, k, kb):
            m = min(kb, k - j)
            eps = torch.randn((m, *mu_z.shape), generator=generator, device=mu_z.device,
                              dtype=mu_z.dtype)
            z = mu_z + std_z * eps  # (m, nb, z)
            mu_w, lv_w = vae.decode(z.reshape(-1, z.shape[-1]))
            log_pw = gaussian_log_pdf(
                wb.expand(m, *wb.shape).reshape(-1, *wb.shape[1:]), mu_w, lv_w
            ).reshape(m, -1)
            log_pz = (-0.5 * (LOG_2PI + z.square())).sum(-1)
            log_r = (-0.5 * (LOG_2PI + lv_z + eps.square())).sum(-1)
            lw = (log_pw + log_pz - log_r).double()
            lse = torch.logaddexp(lse, torch.logsumexp(lw, dim=0))
            total += lw.sum(0)
        iwae.append(lse - math.log(k))
        aux.append(total / k)
    return torch.cat(iwae), torch.cat(aux)


@dataclass
class GapConfig:
    """Settings of a gap estimate: K, the kernel subset, w-samples per kernel, seed, chunk."""

    k: int = 10000
    max_kernels: int | None = None
    samples_per_kernel: int = 1
    seed: int = 0
    chunk: int = 1 << 16

    def check(self) -> None:
        if self.k < 1:
            raise DwpError(f"--k must be >= 1, got {self.k}")
        if self.max_kernels is not None and self.max_kernels < 2:
            raise DwpError(f"--max-kernels must be >= 2 (standard errors), got {self.max_kernels}")
        if self.samples_per_kernel < 1:
            raise DwpError(f"--samples-per-kernel must be >= 1, got {self.samples_per_kernel}")
        if self.chunk < 1:
            raise DwpError(f"--chunk must be >= 1, got {self.chunk}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _stat(x: torch.Tensor, n_total: int) -> dict[str, float | None]:
    """Mean and standard error over evaluated kernels, and the layer sum (mean x n_total)."""
    m = x.numel()
    mean = x.mean().item()
    se = (x.std(unbiased=True) / math.sqrt(m)).item() if m > 1 else None
    return {"per_kernel": mean, "se": se, "sum": mean * n_total,
            "sum_se": None if se is None else se * n_total}


def layer_gap(
    layer: nn.Module,
    cfg: GapConfig,
    generator: torch.Generator | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Gap estimates of one variational layer with a VAE prior (see the module docstring).

    ``layer`` is a ``dwp.bayes`` layer (``kernels()``, ``prior``, ``reverse``). Kernels: a
    seeded uniform subset of ``cfg.max_kernels`` (all by default), each with
    ``cfg.samples_per_kernel`` fresh draws w ~ q. Sums are rescaled to all kernels of the layer.
    """
    prior = layer.prior
    if not isinstance(prior, KernelVAE):
        raise DwpError(f"the gap is defined for implicit (VAE) priors; this layer has "
                       f"{getattr(prior, 'family', None)!r}")
    reverse = layer.reverse if layer.reverse is not None else prior.encoder
    mu, log_var = (t.detach() for t in layer.kernels())
    n_total = mu.shape[0]
    sel = torch.randperm(n_total, generator=torch.Generator().manual_seed(cfg.seed))
    if cfg.max_kernels is not None:
        sel = sel[: cfg.max_kernels]
    sel = sel.sort().values.to(mu.device)
    mu, log_var = mu[sel], log_var[sel]
    m, s = mu.shape[0], cfg.samples_per_kernel
    was = [reverse.training]
    reverse.eval()
    flat_reverse = PriorReverse(prior.z_dim)
    # batches of whole kernels so that one batch fits the chunk budget
    per_batch = max(1, cfg.chunk // (s * cfg.k))
    cols: dict[str, list[torch.Tensor]] = {"iwae": [], "aux": [], "iwae_p": [], "aux_p": []}
    try:
        for i in range(0, m, per_batch):
            mb, lb = mu[i : i + per_batch], log_var[i : i + per_batch]
            eps = torch.randn((s, *mb.shape), generator=generator, device=mb.device,
                              dtype=mb.dtype)
            w = (mb + torch.exp(0.5 * lb) * eps).reshape(-1, *mb.shape[1:])  # (s * b, k, k)
            iw, ax = importance_bounds(prior, w, reverse, cfg.k, cfg.chunk, generator)
            iw_p, ax_p = importance_bounds(prior, w, flat_reverse, cfg.k, cfg.chunk, generator)
            for key, v in (("iwae", iw), ("aux", ax), ("iwae_p", iw_p), ("aux_p", ax_p)):
                cols[key].append(v.reshape(s, -1).mean(0))  # average over the w draws
            if on_chunk is not None:
                on_chunk(mb.shape[0])
    finally:
        reverse.train(was[0])
    iwae, aux = torch.cat(cols["iwae"]), torch.cat(cols["aux"])
    iwae_p, aux_p = torch.cat(cols["iwae_p"]), torch.cat(cols["aux_p"])
    neg_h = -gaussian_entropy(log_var).double()
    return {
        "kernels": n_total,
        "evaluated": m,
        "kernel_size": list(mu.shape[1:]),
        "z_dim": prior.z_dim,
        "seed": cfg.seed,
        "gap_trained_r": _stat(iwae - aux, n_total),
        "gap_prior_r": _stat(iwae - aux_p, n_total),
        "log_p_iwae": _stat(iwae, n_total),
        "log_p_iwae_prior_proposal": _stat(iwae_p, n_total),
        "aux_trained_r": _stat(aux, n_total),
        "aux_prior_r": _stat(aux_p, n_total),
        # the per-kernel KL terms of the ELBO: -H(q) - (bound on log p(w))
        "kl_term_iwae": _stat(neg_h - iwae, n_total),
        "kl_term_aux_trained_r": _stat(neg_h - aux, n_total),
        "kl_term_aux_prior_r": _stat(neg_h - aux_p, n_total),
        "log_sigma2_mean": log_var.mean().item(),
    }


def model_gap(
    model: nn.Module,
    cfg: GapConfig,
    *,
    done: dict[str, dict[str, Any]] | None = None,
    on_layer: Callable[[str, dict[str, Any]], None] | None = None,
    show_progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """``{layer name: layer_gap record}`` for every variational layer with a VAE prior.

    ``done`` holds layers already estimated (skipped: resuming); ``on_layer(name, rec)`` is
    called after each new layer (to save it). Seeds: layer l uses ``cfg.seed + l``.
    """
    from dwp.bayes import bayes_layers
    from dwp.runtime import progress

    cfg.check()
    out = dict(done or {})
    layers = [(n, m) for n, m in bayes_layers(model) if isinstance(m.prior, KernelVAE)]
    if not layers:
        raise DwpError("the model has no variational layer with a VAE (dwp) prior: the gap is "
                       "only defined for implicit priors (train with --prior dwp)")
    for li, (name, layer) in enumerate(layers):
        if name in out:
            continue
        dev = layer.weight_mu.device
        g = torch.Generator(device=dev).manual_seed(cfg.seed + li)
        n = layer.kernels()[0].shape[0]
        total = n if cfg.max_kernels is None else min(n, cfg.max_kernels)
        t0 = time.perf_counter()
        with progress(total=total, desc=f"gap {name}", enabled=show_progress) as bar:
            rec = layer_gap(layer, replace(cfg, seed=cfg.seed + li), g, bar.update)
        rec["layer"] = name
        rec["seconds"] = time.perf_counter() - t0
        out[name] = rec
        if on_layer is not None:
            on_layer(name, rec)
    return out


def _fmt(s: dict[str, Any], key: str) -> str:
    se = s.get(f"{key}_se") if key == "sum" else s.get("se")
    v = s[key]
    return f"{v:.3g} ± {se:.2g}" if se is not None else f"{v:.3g}"


def gap_table(layers: dict[str, dict[str, Any]]) -> str:
    """Markdown table like the paper's Table 1: per layer, the gap (nats) with both r."""
    lines = [
        "| layer | kernels (evaluated / all) | gap, net's r (nats, layer sum) | "
        "gap, r = p(z) (nats, layer sum) | per kernel: net's r | per kernel: r = p(z) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in layers.items():
        a, b = r["gap_trained_r"], r["gap_prior_r"]
        lines.append(
            f"| {name} | {r['evaluated']} / {r['kernels']} | {_fmt(a, 'sum')} | {_fmt(b, 'sum')} "
            f"| {_fmt(a, 'per_kernel')} | {_fmt(b, 'per_kernel')} |"
        )
    return "\n".join(lines)


def resolve_model(model: str | Any, prior_dir: str | Any | None) -> tuple[Any, Any]:
    """(model file, prior folder) from a train-bnn run folder or a model file.

    A run folder gives ``RUN/model.safetensors`` and, unless ``prior_dir`` is given, the
    ``prior_dir`` recorded in ``RUN/config.json``.
    """
    import json
    from pathlib import Path

    path = Path(model).expanduser()
    run = path if path.is_dir() else path.parent
    file = path / "model.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise DwpError(f"no trained model at {file}: pass a 'dwp train-bnn' run folder (rerun "
                       f"train-bnn if it predates saved models) or its model.safetensors")
    if prior_dir is None:
        cfg_path = run / "config.json"
        if cfg_path.is_file():
            prior_dir = json.loads(cfg_path.read_text()).get("config", {}).get("prior_dir")
        if prior_dir is None:
            raise DwpError(f"cannot tell which priors {file} was trained with: pass --prior-dir")
    return file, Path(prior_dir).expanduser()


def run_gap(
    model: Any,
    prior_dir: Any,
    cfg: GapConfig,
    out: Any,
    device: torch.device | str = "cpu",
    show_progress: bool = False,
) -> dict[str, Any]:
    """Estimate the gap of a saved dwp net; writes ``OUT/layers.jsonl`` (one line per finished
    layer: rerunning resumes), ``OUT/gap.json`` and ``OUT/gap.md``. Returns the gap.json record.
    """
    from pathlib import Path

    from dwp.bnn_io import load_bnn
    from dwp.priorspec import resolve_priors
    from dwp.runtime import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl

    cfg.check()
    out = Path(out)
    priors = resolve_priors("dwp", prior_dir, map_location=device)
    net, meta = load_bnn(model, priors, map_location=device)
    jsonl = out / "layers.jsonl"
    done = {r["layer"]: r for r in read_jsonl(jsonl)} if jsonl.exists() else {}
    t0 = time.perf_counter()
    layers = model_gap(net, cfg, done=done, on_layer=lambda _n, r: append_jsonl(jsonl, r),
                       show_progress=show_progress)
    total = {
        key: {
            "sum": sum(r[key]["sum"] for r in layers.values()),
            "sum_se": math.sqrt(sum((r[key]["sum_se"] or 0.0) ** 2 for r in layers.values())),
        }
        for key in ("gap_trained_r", "gap_prior_r")
    }
    rec = {"model": str(model), "prior_dir": str(prior_dir), "method": meta.get("method"),
           "config": cfg.to_dict(), "device": str(device), "layers": list(layers.values()),
           "total": total, "seconds_this_call": time.perf_counter() - t0}
    atomic_write_json(out / "gap.json", rec)
    table = gap_table(layers)
    table += (f"\n| total | | {total['gap_trained_r']['sum']:.3g} ± "
              f"{total['gap_trained_r']['sum_se']:.2g} | {total['gap_prior_r']['sum']:.3g} ± "
              f"{total['gap_prior_r']['sum_se']:.2g} | | |")
    note = (f"\nK = {cfg.k} importance samples, {cfg.samples_per_kernel} draw(s) w ~ q per "
            f"kernel, seed {cfg.seed}; ± one standard error over kernels; layer sums are the "
            f"per-kernel mean x all kernels of the layer.\n")
    atomic_write_text(out / "gap.md", table + "\n" + note)
    return rec
