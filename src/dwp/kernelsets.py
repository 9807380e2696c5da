"""Kernel sets on disk: reading and writing the (N, k, k) arrays every prior is fitted on.

A *kernel set folder* (written by ``dwp collect-kernels``) holds, per conv layer ``NAME``:

- ``NAME.safetensors`` with tensors ``train`` (N, k, k) and ``test`` (M, k, k), float32, and
  ``train_net`` / ``test_net`` (int64, the source net each kernel came from);
- ``NAME.json``: metadata (source run, layer, kernel size, counts, pruning threshold, split);
- ``NAME.png``: a grid of random kernels.

Plain NumPy ``.npy`` arrays of shape (N, 1, k, k) or (N, k, k) are accepted wherever a kernel
set is expected (all of it is then ``train``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from dwp.runtime import DwpError, check_out_folder

KERNEL_SUFFIXES = (".safetensors", ".npy")


def as_kernels(array: np.ndarray | torch.Tensor, source: str = "kernels") -> torch.Tensor:
    """Validate and reshape kernels to a float32 tensor of shape (N, k, k).

    Accepts (N, k, k) or (N, 1, k, k). Raises ``DwpError`` naming ``source`` for a wrong rank,
    non-square kernels, an empty set, or NaN/inf entries.
    """
    t = torch.as_tensor(np.asarray(array) if not isinstance(array, torch.Tensor) else array)
    if t.ndim == 4 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim != 3:
        raise DwpError(
            f"{source}: kernels must have shape (N, k, k) or (N, 1, k, k), got {tuple(t.shape)}"
        )
    if t.shape[1] != t.shape[2]:
        raise DwpError(f"{source}: kernels must be square k x k, got {t.shape[1]} x {t.shape[2]}")
    if t.shape[0] == 0:
        raise DwpError(f"{source}: the kernel set is empty")
    if not t.is_floating_point():
        t = t.float()
    t = t.to(torch.float32)
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).flatten(1).any(1).sum())
        raise DwpError(f"{source}: {bad} kernels contain NaN or inf values; remove them first")
    return t.contiguous()


def load_kernel_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load one layer's kernel file: ``{"train": (N,k,k)[, "test": (M,k,k)]}``.

    ``.safetensors`` files may hold ``train``, ``test`` and ``*_net`` tensors; ``.npy`` files
    hold one array, returned as ``train``.
    """
    path = Path(path)
    if not path.exists():
        raise DwpError(f"kernel file {path} does not exist")
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DwpError(f"{path}: not a readable .npy array ({exc})") from exc
        return {"train": as_kernels(arr, str(path))}
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise DwpError(f"{path}: not a readable safetensors file ({exc})") from exc
        if "train" not in tensors:
            raise DwpError(f"{path}: no 'train' tensor (keys: {sorted(tensors)})")
        out = {}
        for key, value in tensors.items():
            out[key] = value if key.endswith("_net") else as_kernels(value, f"{path}[{key}]")
        return out
    raise DwpError(f"{path}: unknown kernel file type; expected one of {KERNEL_SUFFIXES}")


def find_layers(path: str | Path) -> dict[str, Path]:
    """Map layer name -> kernel file for a kernel-set folder or a single kernel file."""
    path = Path(path)
    if not path.exists():
        raise DwpError(f"kernel set {path} does not exist: run 'dwp collect-kernels' first")
    if path.is_file():
        return {path.stem: path}
    files = sorted(p for p in path.iterdir() if p.suffix in KERNEL_SUFFIXES and p.is_file())
    if not files:
        raise DwpError(f"{path} holds no kernel files ({', '.join(KERNEL_SUFFIXES)})")
    return {p.stem: p for p in files}


KERNEL_SET_KIND = "dwp-kernel-set"


def _is_kernel_set_file(path: Path) -> bool:
    """Whether ``path`` is a ``NAME.json`` or ``NAME.safetensors`` written for a kernel set."""
    try:
        if path.suffix == ".json":
            return json.loads(path.read_text()).get("kind") == KERNEL_SET_KIND
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                return (f.metadata() or {}).get("kind") == KERNEL_SET_KIND
    except (OSError, ValueError, AttributeError, RuntimeError):  # unreadable: not ours
        return False
    return False


def check_kernel_set_out(out: str | Path) -> None:
    """Refuse an ``--out`` that is a file or a folder holding anything but kernel sets.

    A new or empty folder, or one that ``collect-kernels`` / ``merge-kernels`` wrote (whose
    layers are then rewritten), is fine. Anything else would mix kernel files into unrelated
    files (a source run folder, say), and every ``.safetensors`` there would later be read as a
    layer. Hidden files are ignored. Raises ``DwpError`` naming what is in the way.
    """
    out = Path(out)
    entries = list(out.iterdir()) if out.is_dir() else []
    ours = {p for p in entries if p.is_file() and _is_kernel_set_file(p)}  # .json, .safetensors
    layers = {p.stem for p in ours}
    check_out_folder(
        out, lambda p: p in ours or (p.suffix == ".png" and p.is_file() and p.stem in layers),
        lambda shown: f"--out {out} holds files that are not kernel sets ({shown}): choose a "
        "new --out, or an empty folder",
    )


def read_metadata(kernel_file: str | Path) -> dict:
    """Return the JSON metadata beside a kernel file, or ``{}`` when there is none."""
    meta = Path(kernel_file).with_suffix(".json")
    if meta.exists():
        return json.loads(meta.read_text())
    return {}
