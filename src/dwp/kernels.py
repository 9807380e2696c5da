"""Collect the conv kernels of a source run into per-layer kernel sets (``dwp collect-kernels``).

Every conv layer's weight of every net, (out, in, k, k), becomes ``out * in`` single-channel
k x k kernels. Then, per layer:

1. **Split by net**: the run's nets are shuffled with ``seed`` and the last
   ``round(test_fraction * n)`` (at least 1 when there are >= 2 nets) go to ``test``; no net
   contributes to both sides. Nets are named by their index in the source series
   (``nets.json`` ``net_index``: ``--first-net`` onwards), so kernel sets of runs that split
   one series can be merged (:mod:`dwp.kernelmerge`).
2. **Prune**: kernels whose Frobenius (L2) norm is below ``threshold`` are dropped; they have no
   influence on predictions (L2-regularised training drives unused kernels to ~0) but make a
   generative model's job harder (paper, Section 4). ``DEFAULT_THRESHOLD`` is 1e-2: compare the
   norm statistics in ``NAME.json`` (``norms_before``) to choose another with ``--threshold``.
3. **Cap**: each split keeps at most ``cap`` kernels, a seeded uniform subsample (kept in their
   original order), so huge layers (a 256->512 5x5 layer of 100 nets has 13M kernels) stay
   manageable. ``DEFAULT_CAP`` = 200,000 per split; ``cap=None`` keeps all.

The output folder follows :mod:`dwp.kernelsets`: ``NAME.safetensors`` (``train`` (N, k, k),
``test`` (M, k, k), ``train_net`` / ``test_net`` int64 source-net indices), ``NAME.json``
(metadata) and ``NAME.png`` (random kernels on a shared symmetric colour scale).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dwp import __version__
from dwp.kernelsets import KERNEL_SET_KIND, check_kernel_set_out
from dwp.runtime import DwpError, atomic_path, atomic_write_json, mix_seed

DEFAULT_THRESHOLD = 1e-2
DEFAULT_CAP = 200_000
DEFAULT_TEST_FRACTION = 0.1


def conv_weight_keys(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """Map layer name -> stacked conv weight key (tensors of shape (n, out, in, k, k)).

    The layer name is the module's own name (``features.conv1.weight`` -> ``conv1``), or the
    dotted path with ``-`` where short names would collide. Order: as stored.
    """
    keys = [k for k, v in tensors.items() if k.endswith(".weight") and v.dim() == 5]
    short = [k[: -len(".weight")].split(".")[-1] for k in keys]
    if len(set(short)) != len(short):
        short = [k[: -len(".weight")].replace(".", "-") for k in keys]
    return dict(zip(short, keys, strict=True))


def flatten_kernels(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked weights (n, out, in, kh, kw) -> kernels (n*out*in, kh, kw), net ids (n*out*in,)."""
    if weight.dim() != 5:
        raise DwpError(
            f"stacked conv weights must have shape (nets, out, in, k, k), got {tuple(weight.shape)}"
        )
    n, o, i, kh, kw = weight.shape
    kernels = weight.reshape(n * o * i, kh, kw)
    nets = torch.arange(n).repeat_interleave(o * i)
    return kernels, nets


def split_nets(n: int, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of net indices ``0..n-1`` into (train, test), each sorted.

    ``test`` has ``round(test_fraction * n)`` nets, at least 1 if ``test_fraction > 0`` and
    ``n >= 2``, and never all of them.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise DwpError(f"test fraction must be in [0, 1), got {test_fraction}")
    n_test = round(test_fraction * n)
    if test_fraction > 0 and n >= 2:
        n_test = min(max(1, n_test), n - 1)
    else:
        n_test = 0
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, n, 7)))
    return sorted(perm[n_test:].tolist()), sorted(perm[:n_test].tolist())


def cap_indices(count: int, cap: int | None, seed: int) -> torch.Tensor:
    """Indices (sorted) of a seeded uniform subsample of at most ``cap`` of ``count`` items."""
    if cap is None or count <= cap:
        return torch.arange(count)
    if cap < 1:
        raise DwpError(f"cap must be a positive number of kernels, got {cap}")
    gen = torch.Generator().manual_seed(mix_seed(seed, count, cap))
    return torch.randperm(count, generator=gen)[:cap].sort().values


def norm_stats(norms: torch.Tensor) -> dict[str, float]:
    """Summary of kernel norms: mean, std, min, max and percentiles 1/5/25/50/75/95/99."""
    if norms.numel() == 0:
        return {}
    q = torch.tensor([0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99], dtype=torch.float64)
    vals = torch.quantile(norms.double()[: 16_000_000], q).tolist()
    out = {f"p{int(p * 100):02d}": v for p, v in zip(q.tolist(), vals, strict=True)}
    out.update(mean=norms.double().mean().item(), std=norms.double().std().item() if
               norms.numel() > 1 else 0.0, min=norms.min().item(), max=norms.max().item())
    return out


def roughness(kernels: torch.Tensor) -> float:
    """Pooled roughness of kernels (N, k, k): the sum over kernels of squared differences
    between horizontally and vertically adjacent entries, over the sum of squared entries.

    0 for constant kernels; for white noise its expectation is 4 (k - 1) / k (3.2 for 5x5,
    3.43 for 7x7). Lower means smoother, more structured kernels.
    """
    w = kernels.double()
    vertical = (w[:, 1:, :] - w[:, :-1, :]).square().sum()
    horizontal = (w[:, :, 1:] - w[:, :, :-1]).square().sum()
    diffs = vertical + horizontal
    return float(diffs / w.square().sum().clamp_min(1e-300))


def principal_variance(kernels: torch.Tensor, ranks: tuple[int, ...] = (4, 8)) -> dict[str, float]:
    """Fraction of the kernels' variance (about their mean) in the top principal directions:
    ``{"top4": ..., "top8": ...}`` for (N, k, k) kernels."""
    x = kernels.flatten(1).double()
    eig = torch.linalg.eigvalsh(torch.cov(x.T)).flip(0).clamp_min(0)
    total = eig.sum().clamp_min(1e-300)
    return {f"top{r}": float(eig[:r].sum() / total) for r in ranks}


def select_layer(
    weight: torch.Tensor,
    train_nets: list[int],
    test_nets: list[int],
    threshold: float,
    cap: int | None,
    seed: int,
    net_index: list[int] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split, prune and cap one layer's stacked weights (n, out, in, k, k).

    ``net_index[i]`` is the id of stacked net ``i`` (default ``i``), the id that
    ``train_nets`` / ``test_nets`` and the saved ``*_net`` tensors use.
    Returns (tensors for the kernel file, counts/statistics for its metadata).
    """
    kernels, nets = flatten_kernels(weight.detach().float().cpu())
    if net_index is not None:
        nets = torch.as_tensor(net_index, dtype=torch.int64)[nets]
    norms = kernels.flatten(1).norm(dim=1)
    keep = norms >= threshold
    tensors: dict[str, torch.Tensor] = {}
    info: dict[str, Any] = {
        "count_total": int(kernels.shape[0]),
        "count_pruned": int((~keep).sum()),
        "norms_before": norm_stats(norms),
        "norms_after": norm_stats(norms[keep]),
    }
    for split, members, salt in (("train", train_nets, 1), ("test", test_nets, 2)):
        if not members:
            continue
        in_split = torch.isin(nets, torch.tensor(members, dtype=nets.dtype))
        before = int(in_split.sum())
        idx = torch.nonzero(in_split & keep).squeeze(1)
        after_prune = int(idx.numel())
        idx = idx[cap_indices(after_prune, cap, mix_seed(seed, salt))]
        tensors[split] = kernels[idx].contiguous()
        tensors[f"{split}_net"] = nets[idx].to(torch.int64).contiguous()
        info[split] = {
            "nets": members,
            "count_before_pruning": before,
            "count_after_pruning": after_prune,
            "count_saved": int(idx.numel()),
        }
    return tensors, info


def save_kernel_grid(
    kernels: torch.Tensor, path: str | Path, n: int = 64, seed: int = 0, title: str = ""
) -> float:
    """PNG of ``n`` random kernels (N, k, k): torchvision ``make_grid`` + a diverging colormap.

    All kernels share one symmetric colour scale [-v, v], v = max |w| of the shown kernels
    (white = 0, red > 0, blue < 0; grey separators). Returns v.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    if kernels.shape[0] == 0:
        raise DwpError(f"no kernels to draw for {path}")
    gen = torch.Generator().manual_seed(mix_seed(seed, kernels.shape[0]))
    idx = torch.randperm(kernels.shape[0], generator=gen)[: min(n, kernels.shape[0])]
    shown = kernels[idx].float()
    vmax = float(shown.abs().max()) or 1.0
    nrow = int(np.ceil(np.sqrt(shown.shape[0])))
    grid = make_grid(shown.unsqueeze(1), nrow=nrow, padding=1, pad_value=float("nan"))[0]
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.6")
    fig, ax = plt.subplots(figsize=(6, 5.4))
    im = ax.imshow(grid.numpy(), cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)
    return vmax


def collect_kernels(
    run: str | Path,
    out: str | Path,
    threshold: float = DEFAULT_THRESHOLD,
    cap: int | None = DEFAULT_CAP,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 0,
    layers: list[str] | None = None,
    grid_kernels: int = 64,
) -> dict[str, dict[str, Any]]:
    """Write one kernel set per conv layer of the source run ``run`` into folder ``out``.

    Returns ``{layer: metadata}`` (the content of each ``NAME.json``). Raises ``DwpError`` for a
    missing or unfinished run, unknown ``layers`` or bad parameters.
    """
    from safetensors.torch import save_file

    from dwp.sourcenets import load_source_run

    if threshold < 0:
        raise DwpError(f"--threshold must be >= 0, got {threshold}")
    check_kernel_set_out(out)
    tensors, meta = load_source_run(run)
    convs = conv_weight_keys(tensors)
    if not convs:
        raise DwpError(f"source run {run} holds no conv weights (n, out, in, k, k)")
    if layers:
        unknown = sorted(set(layers) - set(convs))
        if unknown:
            raise DwpError(f"unknown layers {unknown}: the run has {', '.join(convs)}")
        convs = {k: v for k, v in convs.items() if k in layers}
    n = next(iter(tensors.values())).shape[0]
    net_index = [int(i) for i in meta.get("net_index", range(n))]
    if len(net_index) != n:
        raise DwpError(f"source run {run}: nets.json lists {len(net_index)} net indices for "
                       f"{n} stacked nets; the run folder is inconsistent")
    local_train, local_test = split_nets(n, test_fraction, seed)
    train_nets = [net_index[i] for i in local_train]
    test_nets = [net_index[i] for i in local_test]
    selected = {}  # every layer is selected (and checked) before anything is written
    for li, (name, key) in enumerate(convs.items()):
        weight = tensors[key]
        layer_tensors, info = select_layer(
            weight, train_nets, test_nets, threshold, cap, mix_seed(seed, li), net_index
        )
        if "train" not in layer_tensors or layer_tensors["train"].shape[0] == 0:
            raise DwpError(
                f"layer {name}: no kernel has norm >= {threshold}: lower --threshold"
            )
        if "test" in layer_tensors and layer_tensors["test"].shape[0] == 0:
            raise DwpError(f"layer {name}: every test kernel was pruned: lower --threshold")
        selected[name] = (key, weight.shape, layer_tensors, info)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name, (key, shape, layer_tensors, info) in selected.items():
        k = int(shape[-1])
        record = {
            "kind": KERNEL_SET_KIND,
            "dwp_version": __version__,
            "source_run": str(Path(run).resolve()),
            "source_dataset": meta.get("dataset"),
            "source_arch": meta.get("arch"),
            "source_widths": meta.get("widths"),
            "source_nets": n,
            "source_seeds": meta.get("seeds"),
            "source_config": meta.get("config"),
            "source_mean_heldout_acc": meta.get("mean_heldout_acc"),
            "layer": name,
            "weight_key": key,
            "weight_shape": list(shape[1:]),
            "kernel_size": [int(shape[-2]), k],
            "threshold": threshold,
            "cap": cap,
            "test_fraction": test_fraction,
            "seed": seed,
            "split": "by net",
            **info,
        }
        with atomic_path(out / f"{name}.safetensors") as tmp:
            save_file(layer_tensors, str(tmp), metadata={"kind": KERNEL_SET_KIND, "layer": name})
        vmax = save_kernel_grid(
            layer_tensors["train"], out / f"{name}.png", n=grid_kernels, seed=seed,
            title=f"{name}: random train kernels ({k}x{k}), shared scale",
        )
        record["png_scale"] = vmax
        atomic_write_json(out / f"{name}.json", record)
        summary[name] = record
    return summary
