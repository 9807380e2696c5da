"""Typer options shared by every command (one definition, reused)."""

from __future__ import annotations

from pathlib import Path

import typer

DataRoot = typer.Option(
    None,
    "--data-root",
    help="Folder holding the datasets (default: $DWP_DATA_ROOT, else "
         "$XDG_CACHE_HOME/dwp/datasets, ~/.cache/dwp/datasets when that is unset).",
    show_default=False,
)
Download = typer.Option(
    False, "--download", help="Fetch missing datasets with torchvision (needs internet)."
)
Device = typer.Option(
    "auto", "--device", help="'auto' (CUDA if present, else CPU), 'cpu', 'cuda' or 'cuda:N'."
)
Progress = typer.Option(True, "--progress/--no-progress", help="Show progress bars.")
BnnConvImpl = typer.Option(
    "mixed", "--conv-impl",
    help="How the variational convolutions compute: 'mixed' (one-input-channel layers as "
    "im2col + matrix products, the others with F.conv2d), 'native' (F.conv2d everywhere) or "
    "'unfold' (im2col everywhere). Same results up to float rounding.",
)

BnnPrecision = typer.Option(
    "fp32", "--precision",
    help="Arithmetic of the data term in training: fp32, tf32 (TensorFloat-32 on CUDA) or bf16 "
    "(autocast, for GPUs; slower on most CPUs). The prior term, the weights and Adam stay "
    "float32; evaluation is float32.",
)


def check_bnn_conv_impl(conv_impl: str) -> None:
    """Raise ``DwpError`` unless ``conv_impl`` is a value of ``--conv-impl`` (BNN commands)."""
    from dwp.bayes import BNN_CONV_IMPLS
    from dwp.runtime import DwpError

    if conv_impl not in BNN_CONV_IMPLS:
        raise DwpError(f"--conv-impl must be one of {', '.join(BNN_CONV_IMPLS)}, got "
                       f"{conv_impl!r}")


def check_at_least_one(**flags: float | None) -> None:
    """Raise ``DwpError`` naming the first flag whose value is given (not None) and < 1, e.g.
    ``check_at_least_one(ensemble=0)`` -> "--ensemble must be >= 1, got 0". Commands call it
    before their run folder is made, so a bad value leaves nothing behind."""
    from dwp.runtime import DwpError

    for name, value in flags.items():
        if value is not None and value < 1:
            raise DwpError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def check_lr(lr: float) -> None:
    """Raise ``DwpError`` unless the learning rate ``lr`` is positive."""
    from dwp.runtime import DwpError

    if not lr > 0:
        raise DwpError(f"--lr must be > 0, got {lr}")


def as_path(p: Path | None) -> Path | None:
    """Expand ``~`` in an optional path."""
    return None if p is None else Path(p).expanduser()
