"""Numeric precision and cuDNN settings of a training run, as context managers.

``--precision`` is one of :data:`PRECISIONS`: ``fp32`` (plain float32), ``tf32``
(TensorFloat-32 matmuls and convolutions on CUDA, :func:`tf32_for`) or ``bf16`` (the forward
pass autocast to bfloat16, float32 master weights, :func:`autocast_for`).
:func:`cudnn_autotune` lets cuDNN pick its fastest convolution algorithms for fixed shapes.
:func:`flush_denormals` makes CPU arithmetic treat subnormal floats as zero during training.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from dwp.runtime import DwpError

PRECISIONS = ("fp32", "tf32", "bf16")


def check_precision(precision: str) -> None:
    """Raise ``DwpError`` unless ``precision`` is one of :data:`PRECISIONS`."""
    if precision not in PRECISIONS:
        raise DwpError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


@contextmanager
def autocast_for(precision: str, device: torch.device, cache: bool = True) -> Iterator[None]:
    """Autocast the block's forward pass to bfloat16 for ``"bf16"``; nothing otherwise.
    ``cache=False`` turns off autocast's cache of cast weights (as advised for blocks recorded
    into CUDA graphs)."""
    if precision == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache):
            yield
    else:
        yield


@contextmanager
def tf32_for(precision: str, device: torch.device) -> Iterator[None]:
    """Allow TensorFloat-32 CUDA matmuls/convolutions in the block (forward and backward) for
    ``"tf32"``; the previous flags are restored on exit. Nothing otherwise or on CPU."""
    if precision != "tf32" or device.type != "cuda":
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@contextmanager
def cudnn_autotune(device: torch.device) -> Iterator[None]:
    """Let cuDNN time its convolution algorithms for each new input shape (CUDA only; the
    previous setting is restored on exit). Worth it for long runs of fixed shapes, such as the
    grouped convolutions of many nets trained at once."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


def flushing_denormals() -> bool:
    """Whether CPU arithmetic flushes subnormal floats to zero now (``torch`` has no getter:
    a subnormal float32 is multiplied by one and compared with zero)."""
    return bool((torch.full((1,), 1e-39) * 1.0).item() == 0.0)


@contextmanager
def flush_denormals(device: torch.device) -> Iterator[None]:
    """Treat subnormal floats (|x| < 1.2e-38 in float32) as zero in CPU arithmetic inside the
    block (``torch.set_flush_denormal``); the previous mode is restored on exit. Nothing on
    other devices.

    Late in a long CPU training the loss is near zero on the training images and an L2
    penalty shrinks unused weights geometrically, so weights and Adam's moments pass through
    the subnormal range, where x86 arithmetic is many times slower: a deterministic
    FConvMNIST step at N = 100 took 0.36-0.62 s instead of 0.034 s (BENCHMARKS.md, "Subnormal
    floats"). Flushing them changes values only below 1.2e-38.
    """
    if device.type != "cpu":
        yield
        return
    before = flushing_denormals()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)
