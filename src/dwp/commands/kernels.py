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
        typer.echo(
            f"{name} {rec['kernel_size'][0]}x{rec['kernel_size'][1]}: {rec['count_total']} "
            f"kernels, {rec['count_pruned']} pruned (norm < {rec['threshold']}); "
            f"{_saved(rec)} -> {out}/{name}.safetensors"
        )


def _saved(rec: dict) -> str:
    """'saved train N (n nets), test M (m nets)' from a kernel set's metadata."""
    tr, te = rec["train"], rec.get("test", {})
    return (f"saved train {tr['count_saved']} ({len(tr['nets'])} nets), test "
            f"{te.get('count_saved', 0)} ({len(te.get('nets', []))} nets)")


MERGE_COMMAND = {"short_help": "Join kernel sets of runs that split one source series."}


def merge_kernels_cmd(
    parts: list[Path] = typer.Argument(
        ..., help="Kernel-set folders written by 'dwp collect-kernels' (two or more)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Kernel-set folder to write."),
    cap: int = typer.Option(
        DEFAULT_CAP, "--cap",
        help="Keep at most this many kernels per layer and split: each part gives a seeded "
        "subsample in proportion to its kernel count after pruning; 0 = all.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the cap's subsample and the PNG."),
) -> None:
    """Merge the kernel sets of source runs that split one series of nets.

    A long source run can be split across machines: 'dwp train-source --nets 50 --first-net 0'
    on one and '--first-net 50' (same other flags) on another train the 100 nets of '--nets
    100'. Collect each run's kernels there, bring the kernel sets back, and merge them here.
    The parts must come from one series (same dataset, architecture, widths and training
    settings), share their layers and pruning threshold, and share no net. Each part's own
    split by net is kept. OUT gets NAME.safetensors, NAME.json (summed counts, each part's
    record under 'parts') and NAME.png per layer, as 'dwp collect-kernels' writes.

    Example: dwp merge-kernels runs/kernels-a runs/kernels-b --out runs/kernels-notmnist
    """
    from dwp.kernelmerge import merge_kernel_sets

    summary = merge_kernel_sets(
        [as_path(p) for p in parts], as_path(out), cap=cap or None, seed=seed
    )
    for name, rec in summary.items():
        typer.echo(f"{name}: {len(parts)} sets, {rec['source_nets']} nets; {_saved(rec)} -> "
                   f"{out}/{name}.safetensors")
