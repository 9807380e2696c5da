"""Typer options shared by every command (one definition, reused)."""

from __future__ import annotations

from pathlib import Path

import typer

DataRoot = typer.Option(
    None,
    "--data-root",
    help="Folder holding the datasets (default: $DWP_DATA_ROOT, else ~/.cache/dwp/datasets).",
    show_default=False,
)
Download = typer.Option(
    False, "--download", help="Fetch missing datasets with torchvision (needs internet)."
)
Device = typer.Option(
    "auto", "--device", help="'auto' (CUDA if present, else CPU), 'cpu', 'cuda' or 'cuda:N'."
)
Progress = typer.Option(True, "--progress/--no-progress", help="Show progress bars.")


def as_path(p: Path | None) -> Path | None:
    """Expand ``~`` in an optional path."""
    return None if p is None else Path(p).expanduser()
