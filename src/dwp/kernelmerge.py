"""Merge kernel sets of runs that split one source series (``dwp merge-kernels``).

A 100-net source run may not fit one machine's time budget. ``dwp train-source --nets 50
--first-net 0`` and ``--nets 50 --first-net 50`` train its two halves: the same 100 nets, since
net ``i``'s seed depends only on ``--seed`` and ``i``. ``dwp collect-kernels`` makes a kernel set
of each half (small enough to carry between machines, unlike the nets), and
:func:`merge_kernel_sets` joins them into the kernel set of the whole series:

- **checks**: every part must hold the same layers, kernel sizes and pruning threshold, and come
  from the same source series: the same dataset, architecture, widths and every training
  setting except those that do not change the nets (``nets``, ``first_net``, device, chunking,
  convolution implementation, progress, checkpointing). No source net may be in two parts;
- **per split** (``train``, ``test``; each part was already split by net), the parts' kernels are
  concatenated. When more than ``cap`` are saved, each part keeps a seeded uniform subsample
  whose size is proportional to its kernel count after pruning, the population its saved
  kernels were drawn from. So the result is a uniform subsample of the union, up to rounding;
- **metadata**: counts are summed, nets are the union, norm statistics are recomputed on the
  saved kernels (``norms_saved``; exact percentiles of all kernels need the nets themselves) and
  each part's own record is kept under ``parts``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dwp import __version__
from dwp.kernels import DEFAULT_CAP, cap_indices, norm_stats, save_kernel_grid
from dwp.kernelsets import (
    KERNEL_SET_KIND,
    check_kernel_set_out,
    find_layers,
    load_kernel_file,
    read_metadata,
)
from dwp.runtime import DwpError, atomic_path, atomic_write_json, mix_seed

# Source-run settings that do not change the trained nets (or that a split changes).
SERIES_FREE_KEYS = frozenset({
    "nets", "first_net", "device", "data_root", "download", "progress", "chunk_size",
    "conv_impl", "checkpoint_every",
})
# Per-layer settings every part must share.
LAYER_KEYS = ("layer", "weight_key", "weight_shape", "kernel_size", "threshold",
              "source_dataset", "source_arch", "source_widths")
# What each part's own record keeps under ``parts`` in the merged metadata.
PART_KEYS = ("source_run", "source_nets", "source_mean_heldout_acc", "count_total",
             "count_pruned", "norms_before", "norms_after", "cap", "seed", "test_fraction",
             "train", "test")


def proportional_quota(available: list[int], weights: list[int], cap: int) -> list[int]:
    """Split ``cap`` items over parts in proportion to ``weights``, part ``i`` giving at most
    ``available[i]``; what a part cannot give goes to the others (largest remainders).

    Returns one count per part; they sum to ``min(cap, sum(available))``.
    """
    if cap < 0:
        raise DwpError(f"cap must be >= 0, got {cap}")
    if cap >= sum(available):
        return list(available)
    quota = [0] * len(available)
    open_parts = [i for i, a in enumerate(available) if a > 0]
    left = cap
    while True:
        total = sum(weights[i] for i in open_parts)
        share = {i: left * (weights[i] / total if total > 0 else 1 / len(open_parts))
                 for i in open_parts}
        full = [i for i in open_parts if share[i] >= available[i]]
        if not full:
            break
        for i in full:
            quota[i] = available[i]
            left -= available[i]
            open_parts.remove(i)
    floors = {i: int(share[i]) for i in open_parts}
    by_remainder = sorted(open_parts, key=lambda i: (floors[i] - share[i], i))
    for i in by_remainder[: left - sum(floors.values())]:
        floors[i] += 1
    for i in open_parts:
        quota[i] = min(floors[i], available[i])
    return quota


def _series_config(meta: dict[str, Any]) -> dict[str, Any] | None:
    config = meta.get("source_config")
    if config is None:
        return None
    return {k: v for k, v in config.items() if k not in SERIES_FREE_KEYS}


def _check_parts(parts: list[Path], metas: list[dict[str, dict[str, Any]]]) -> None:
    """Raise ``DwpError`` unless the parts are kernel sets of one series, with no net shared."""
    first = metas[0]
    for part, meta in zip(parts[1:], metas[1:], strict=True):
        if set(meta) != set(first):
            raise DwpError(f"kernel sets {parts[0]} and {part} hold different layers "
                           f"({', '.join(first)} against {', '.join(meta)})")
        for name, rec in meta.items():
            for key in LAYER_KEYS:
                if rec.get(key) != first[name].get(key):
                    raise DwpError(
                        f"kernel sets {parts[0]} and {part} differ in {key} of layer {name} "
                        f"({first[name].get(key)!r} against {rec.get(key)!r}): only kernel sets "
                        "collected the same way from one source series can be merged"
                    )
            a, b = _series_config(first[name]), _series_config(rec)
            if a is not None and b is not None and a != b:
                diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                raise DwpError(
                    f"kernel sets {parts[0]} and {part} come from source runs with different "
                    f"settings ({', '.join(diff)}): only runs of one series (same flags but "
                    "--nets / --first-net) can be merged"
                )
    seen: dict[int, Path] = {}
    seen_seeds: dict[int, Path] = {}
    for part, meta in zip(parts, metas, strict=True):
        rec = next(iter(meta.values()))
        nets = [*rec.get("train", {}).get("nets", []), *rec.get("test", {}).get("nets", [])]
        for values, registry, what in ((nets, seen, "nets"),
                                       (rec.get("source_seeds") or [], seen_seeds, "net seeds")):
            shared = sorted({v for v in values if v in registry})
            if shared:
                raise DwpError(
                    f"kernel sets {registry[shared[0]]} and {part} share source {what} "
                    f"{shared[:5]}{' ...' if len(shared) > 5 else ''}: give each run of a "
                    "series its own --first-net (e.g. --nets 50 --first-net 0, then --first-net 50)"
                )
            registry.update(dict.fromkeys(values, part))


def _read_parts(parts: list[Path]) -> tuple[list[dict[str, Path]], list[dict[str, dict]]]:
    files, metas = [], []
    for part in parts:
        if not part.is_dir():
            raise DwpError(f"{part} is not a kernel-set folder: give the folders that "
                           "'dwp collect-kernels --out' wrote")
        layers = find_layers(part)
        meta = {}
        for name, path in layers.items():
            rec = read_metadata(path)
            if rec.get("kind") != KERNEL_SET_KIND:
                raise DwpError(f"{path} has no kernel-set metadata ({path.with_suffix('.json')}): "
                               "only kernel sets written by 'dwp collect-kernels' can be merged")
            meta[name] = rec
        files.append(layers)
        metas.append(meta)
    return files, metas


def _merge_split(
    tensors: list[dict[str, torch.Tensor]],
    records: list[dict[str, Any]],
    split: str,
    cap: int | None,
    seed: int,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """Concatenate one split of every part, capped by :func:`proportional_quota`."""
    have = [i for i, t in enumerate(tensors) if split in t]
    if not have:
        return None
    saved = [tensors[i][split].shape[0] for i in have]
    population = [records[i][split]["count_after_pruning"] for i in have]
    quota = saved if cap is None else proportional_quota(saved, population, cap)
    kernels, nets = [], []
    for j, (i, q) in enumerate(zip(have, quota, strict=True)):
        if q == 0:
            continue
        idx = cap_indices(saved[j], q, mix_seed(seed, j))
        kernels.append(tensors[i][split][idx])
        nets.append(tensors[i][f"{split}_net"][idx])
    out = {split: torch.cat(kernels).contiguous(), f"{split}_net": torch.cat(nets).contiguous()}
    info = {
        "nets": sorted(n for i in have for n in records[i][split]["nets"]),
        "count_before_pruning": sum(records[i][split]["count_before_pruning"] for i in have),
        "count_after_pruning": sum(population),
        "count_saved": int(out[split].shape[0]),
        "saved_per_part": list(quota),
    }
    return out, info


def merge_kernel_sets(
    parts: list[str | Path],
    out: str | Path,
    cap: int | None = DEFAULT_CAP,
    seed: int = 0,
    grid_kernels: int = 64,
) -> dict[str, dict[str, Any]]:
    """Merge the kernel-set folders ``parts`` (one source series) into the folder ``out``.

    Writes per layer ``NAME.safetensors`` (``train`` (N, k, k), ``test`` (M, k, k) and their
    ``*_net`` source-net indices), ``NAME.json`` and ``NAME.png``, as ``dwp collect-kernels``
    does. Returns ``{layer: metadata}``. Raises ``DwpError`` before writing anything when fewer
    than two parts are given, a part is not a collected kernel set, the parts are not of one
    series or share a net, or ``out`` is one of the parts.
    """
    from safetensors.torch import save_file

    parts = [Path(p) for p in parts]
    out = Path(out)
    if len(parts) < 2:
        raise DwpError("merge-kernels needs at least two kernel-set folders")
    if cap is not None and cap < 1:
        raise DwpError(f"--cap must be a positive number of kernels (or 0 for all), got {cap}")
    if any(out.resolve() == p.resolve() for p in parts):
        raise DwpError(f"--out {out} is one of the kernel sets to merge: choose a new folder")
    check_kernel_set_out(out)
    files, metas = _read_parts(parts)
    _check_parts(parts, metas)

    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for li, name in enumerate(metas[0]):
        records = [m[name] for m in metas]
        tensors = [load_kernel_file(f[name]) for f in files]
        layer_tensors: dict[str, torch.Tensor] = {}
        splits: dict[str, Any] = {}
        for salt, split in enumerate(("train", "test")):
            merged = _merge_split(tensors, records, split, cap, mix_seed(seed, li, salt))
            if merged is not None:
                layer_tensors.update(merged[0])
                splits[split] = merged[1]
        first = records[0]
        n_nets = sum(r.get("source_nets", 0) for r in records)
        accs = [(r.get("source_mean_heldout_acc"), r.get("source_nets", 0)) for r in records]
        saved = torch.cat([layer_tensors[s] for s in ("train", "test") if s in layer_tensors])
        record = {
            "kind": KERNEL_SET_KIND,
            "dwp_version": __version__,
            "merged_from": [str(p.resolve()) for p in parts],
            "source_run": [r.get("source_run") for r in records],
            **{k: first.get(k) for k in LAYER_KEYS if k != "layer"},
            "source_nets": n_nets,
            "source_seeds": [s for r in records for s in (r.get("source_seeds") or [])],
            "source_config": _series_config(first),
            "source_mean_heldout_acc": (
                sum(a * n for a, n in accs) / n_nets
                if n_nets and all(a is not None for a, _ in accs) else None
            ),
            "layer": name,
            "cap": cap,
            "seed": seed,
            "split": "by net",
            "count_total": sum(r["count_total"] for r in records),
            "count_pruned": sum(r["count_pruned"] for r in records),
            "norms_saved": norm_stats(saved.flatten(1).norm(dim=1)),
            **splits,
            "parts": [{k: r.get(k) for k in PART_KEYS} for r in records],
        }
        with atomic_path(out / f"{name}.safetensors") as tmp:
            save_file(layer_tensors, str(tmp), metadata={"kind": KERNEL_SET_KIND, "layer": name})
        k = first["kernel_size"]
        record["png_scale"] = save_kernel_grid(
            layer_tensors["train"], out / f"{name}.png", n=grid_kernels, seed=seed,
            title=f"{name}: random train kernels ({k[0]}x{k[1]}), {len(parts)} merged sets",
        )
        atomic_write_json(out / f"{name}.json", record)
        summary[name] = record
    return summary
