"""``dwp data ...``: inspect the datasets dwp reads."""

from __future__ import annotations

from pathlib import Path

import typer

from dwp.commands.options import DataRoot
from dwp.data import DATASETS, SPLITS, load_dataset, resolve_data_root
from dwp.runtime import DwpError

app = typer.Typer(no_args_is_help=True)


def format_info_rows(rows: list[dict]) -> str:
    """Render dataset rows (name, split, count, shape, counts, source) as an aligned table."""
    header = ("dataset", "split", "count", "shape", "per-class counts", "read from")
    table = [header] + [
        (r["dataset"], r["split"], str(r["count"]), r["shape"], r["counts"], r["source"])
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    lines = []
    for row in table:
        cells = [row[i].ljust(widths[i]) for i in range(len(widths))] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


@app.command("info")
def info(
    data_root: Path | None = DataRoot,
    dataset: list[str] | None = typer.Option(
        None, "--dataset", "-d", help=f"Only these datasets (repeatable); any of {DATASETS}."
    ),
) -> None:
    """Print, per dataset and split: count, per-class counts, image shape, where it was read.

    Datasets that are not found get one line saying where dwp looked and how to provide them.
    """
    unknown = [d for d in dataset or () if d not in DATASETS]
    if unknown:
        raise DwpError(f"unknown dataset {unknown[0]!r}; known datasets: {', '.join(DATASETS)}")
    root = resolve_data_root(data_root)
    typer.echo(f"data root: {root}")
    rows, absent = [], []
    for name in dataset or DATASETS:
        for split in SPLITS:
            try:
                ds = load_dataset(name, split, root)
            except DwpError as exc:
                absent.append(f"{name} {split}: {exc}")
                continue
            counts = ds.class_counts()
            rows.append(
                {
                    "dataset": name,
                    "split": split,
                    "count": len(ds),
                    "shape": "x".join(map(str, ds.images.shape[1:])),
                    "counts": "/".join(map(str, counts))
                    if len(counts) <= 10
                    else f"{min(counts)}-{max(counts)} over {len(counts)} classes",
                    "source": ds.source,
                }
            )
    if rows:
        typer.echo(format_info_rows(rows))
    for line in absent:
        typer.echo(f"absent: {line}")
