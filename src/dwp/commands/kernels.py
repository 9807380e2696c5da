"""``dwp collect-kernels RUN --out KERNELS``: per-layer kernel sets from a source run."""

from __future__ import annotations

from pathlib import Path

import typer

from dwp.commands.options import as_path
from dwp.kernels import DEFAULT_CAP, DEFAULT_TEST_FRACTION, DEFAULT_THRESHOLD, collect_kernels

COMMAND = {"short_help": "Gather the conv kernels of a source run into per-layer kernel sets."}


def collect_kernels_cmd(
    run: Path = typer.Argument(..., help="Finished 'dwp train-source' run folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Kernel-set folder to write."),
    threshold: float = typer.Option(
        DEFAULT_THRESHOLD, "--threshold",
        help="Drop kernels whose L2 norm is below this (0 keeps all). See norms_before in "
        "NAME.json to choose.",
    ),
    cap: int = typer.Option(
        DEFAULT_CAP, "--cap",
        help="Keep at most this many kernels per layer and split (seeded subsample); 0 = all.",
    ),
    test_fraction: float = typer.Option(
        DEFAULT_TEST_FRACTION, "--test-fraction",
        help="Fraction of the nets whose kernels form the test split (split by net).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the net split, the cap and the PNG."),
    layer: list[str] | None = typer.Option(
        None, "--layer", help="Only this layer (repeatable), e.g. --layer conv1."
    ),
) -> None:
    """Collect every conv layer's kernels from all nets of RUN as k x k kernel sets.

    An (out, in, k, k) weight gives out*in kernels. Per layer: split train/test by net (no net
    on both sides), drop kernels with norm < --threshold, cap each split at --cap kernels, and
    write OUT/NAME.safetensors (train, test, train_net, test_net), OUT/NAME.json (counts before
    and after pruning, norm statistics, split) and OUT/NAME.png (random kernels, shared
    symmetric colour scale).
    """
    summary = collect_kernels(
        as_path(run), as_path(out), threshold=threshold, cap=cap or None,
        test_fraction=test_fraction, seed=seed, layers=list(layer) if layer else None,
    )
    for name, rec in summary.items():
        tr, te = rec["train"], rec.get("test", {})
        typer.echo(
            f"{name} {rec['kernel_size'][0]}x{rec['kernel_size'][1]}: {rec['count_total']} "
            f"kernels, {rec['count_pruned']} pruned (norm < {rec['threshold']}); saved train "
            f"{tr['count_saved']} ({len(tr['nets'])} nets), test {te.get('count_saved', 0)} "
            f"({len(te.get('nets', []))} nets) -> {out}/{name}.safetensors"
        )
