"""``dwp train-source``: train many source nets at once (the kernels a prior is learned from)."""

from __future__ import annotations

from pathlib import Path

import typer

from dwp.commands.options import DataRoot, Device, Download, Progress, as_path
from dwp.runtime import DwpError
from dwp.sourcenets import DATASET_DEFAULTS, SourceConfig, train_source_nets

# Registration settings: extra arguments are allowed so ``--widths 256 512`` works (click
# options take one value; the further widths arrive as extra arguments, see parse_widths).
COMMAND = {
    "short_help": "Train many source nets at once (the kernels priors are learned from).",
    "context_settings": {"allow_extra_args": True, "ignore_unknown_options": False},
}


def parse_widths(first: str | None, extra: list[str]) -> list[int] | None:
    """Widths from ``--widths 256 512`` / ``--widths 256,512`` (extra args hold the rest)."""
    if first is None:
        if extra:
            raise DwpError(f"unexpected arguments {extra}: this command takes options only")
        return None
    parts = [p for chunk in [first, *extra] for p in chunk.replace(",", " ").split()]
    try:
        widths = [int(p) for p in parts]
    except ValueError as exc:
        raise DwpError(f"--widths takes integers, e.g. --widths 256 512; got {parts}") from exc
    if any(w < 1 for w in widths):
        raise DwpError(f"--widths must be positive, got {widths}")
    return widths


def train_source(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (created; rerun to resume)."),
    dataset: str = typer.Option(
        "notmnist", "--dataset", help=f"Source dataset: {', '.join(DATASET_DEFAULTS)}."
    ),
    arch: str | None = typer.Option(
        None, "--arch",
        help="fconv (MNIST-like), cifar-source (CIFAR-100 source net) or cifar. "
        "Default: fconv for grey datasets, cifar-source for CIFAR.",
    ),
    widths: str | None = typer.Option(
        None, "--widths",
        help="Conv widths, e.g. --widths 256 512 (fconv; default) or 128 256 256 512 (cifar).",
        show_default=False,
    ),
    width_factor: float = typer.Option(1.0, "--width-factor", help="Multiply every conv width."),
    nets: int = typer.Option(100, "--nets", help="Number of source nets (each its own seed)."),
    first_net: int = typer.Option(
        0, "--first-net",
        help="Index of this run's first net in the series --seed defines: '--nets 50 "
        "--first-net 50' trains nets 50-99 of '--nets 100', so a long run can be split across "
        "machines (then 'dwp merge-kernels' joins their kernel sets).",
    ),
    epochs: int | None = typer.Option(
        None, "--epochs", help="Epochs (default: 100 notMNIST, 300 CIFAR-100, as in the paper)."
    ),
    lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate, decayed linearly to 0."),
    l2: float | None = typer.Option(
        None, "--l2",
        help="Weight of sum(w^2) over conv/BN params added to the loss "
        "(default: 1e-3 notMNIST, 1e-4 CIFAR-100).",
    ),
    batch_size: int = typer.Option(256, "--batch-size", help="Mini-batch size per net."),
    seed: int = typer.Option(0, "--seed", help="Base seed; net i gets a seed derived from it."),
    train_examples: int | None = typer.Option(
        None, "--train-examples",
        help="Train on a class-balanced subset of this size (default: the whole train split).",
    ),
    chunk_size: str = typer.Option(
        "auto", "--chunk-size",
        help="Nets per forward/backward: 'auto' fits the free memory, or an integer. "
        "Does not change results. On CPU at the paper's widths, 1 is fastest (a plain call "
        "instead of vmapped grouped convolutions).",
    ),
    precision: str = typer.Option(
        "fp32", "--precision",
        help="Forward/backward arithmetic: fp32, tf32 (CUDA TensorFloat-32) or bf16 (autocast; "
        "parameters and Adam stay float32). Much faster on GPUs; bf16 also ~1.6x on CPUs with "
        "AVX-512 BF16.",
    ),
    conv_impl: str = typer.Option(
        "auto", "--conv-impl",
        help="How convolutions compute: native (F.conv2d; many nets become one grouped "
        "convolution), unfold (im2col + one batched matrix product over the nets), mixed "
        "(unfold for convolutions with one input channel, native for the rest) or auto (mixed "
        "on CUDA, native elsewhere); see BENCHMARKS.md for which is faster where. Does not "
        "change results.",
    ),
    augment_shift: int = typer.Option(
        0, "--augment-shift",
        help="Translate training images by up to this many pixels (zero fill), a new draw "
        "per example and epoch. 0 (default) as in the paper; a stand-in for a larger source "
        "set (BENCHMARKS.md).",
    ),
    checkpoint_every: int = typer.Option(
        1, "--checkpoint-every", help="Write the resume checkpoint every N epochs."
    ),
    device: str = Device,
    data_root: Path | None = DataRoot,
    download: bool = Download,
    show_progress: bool = Progress,
) -> None:
    """Train source nets for kernel priors: many nets in one batched computation.

    Paper defaults: Adam, lr 1e-3 decayed linearly to 0, batch 256, L2 in the loss; notMNIST:
    FConvMNIST (256, 512), l2 1e-3, 100 epochs. CIFAR-100: the BN source net, l2 1e-4, 300
    epochs. Per-net held-out accuracy (the dataset's test split) is logged each epoch to
    OUT/metrics.jsonl; the final nets go to OUT/nets.safetensors + OUT/nets.json. A killed run
    resumes from its last completed epoch when rerun with the same flags.

    Example: dwp train-source --dataset notmnist --widths 256 512 --nets 100 --epochs 100
    --l2 1e-3 --out runs/source-notmnist
    """
    cfg = SourceConfig(
        dataset=dataset, arch=arch, widths=parse_widths(widths, list(ctx.args)),
        width_factor=width_factor, nets=nets, first_net=first_net, epochs=epochs, lr=lr, l2=l2,
        batch_size=batch_size, seed=seed, train_examples=train_examples,
        chunk_size=chunk_size, precision=precision, conv_impl=conv_impl,
        augment_shift=augment_shift, checkpoint_every=checkpoint_every,
        device=device,
        data_root=str(as_path(data_root)) if data_root else None, download=download,
        progress=show_progress,
    )
    meta = train_source_nets(cfg, as_path(out))
    acc = meta["heldout_acc"]
    typer.echo(
        f"{meta['nets']} nets, {meta['epochs']} epochs: held-out accuracy mean "
        f"{meta['mean_heldout_acc']:.4f}, min {min(acc):.4f}, max {max(acc):.4f} -> {out}"
    )
