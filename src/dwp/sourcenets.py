"""Train the paper's *source* nets (many at once) and read a finished source run.

A source run folder (``dwp train-source --out RUN``) holds:

- ``config.json``: the command and its resolved config (written by ``prepare_run_dir``);
- ``metrics.jsonl``: one line per finished epoch: ``epoch`` (1-based), ``lr``, per-net
  ``loss`` / ``train_acc`` / ``heldout_acc`` lists, ``mean_heldout_acc``, ``seconds``;
- ``checkpoint.safetensors``: the last completed epoch (stacked parameters, buffers, Adam
  state, torch RNG state; ``epochs_done`` in its metadata); a rerun resumes from it. Removed
  once the final nets are saved;
- ``nets.safetensors``: the final nets, one stacked tensor per state-dict entry, shape
  (n_nets, *shape) (e.g. ``features.conv1.weight`` (n, 256, 1, 7, 7));
- ``nets.json``: architecture, widths, seeds, each net's index in the series (``net_index``,
  from ``--first-net``), dataset, per-net held-out accuracy and summary.

The held-out set is the dataset's ``test`` split (notMNIST: the seeded stratified 1,000; CIFAR-100:
the official test set); it is only reported, never used to choose anything.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from dwp import __version__
from dwp.batched import BatchedModel, BatchedTrainer, evaluate_accuracy
from dwp.convimpl import CONV_IMPLS
from dwp.nets import (
    CIFAR_SOURCE_WIDTHS,
    FCONV_SOURCE_WIDTHS,
    build_net,
    default_widths,
    xavier_init_,
)
from dwp.precision import check_precision, cudnn_autotune
from dwp.runtime import (
    DwpError,
    append_jsonl,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    mix_seed,
    prepare_run_dir,
    progress,
    read_jsonl,
    select_device,
)

COMMAND = "train-source"
NETS_FILE = "nets.safetensors"
NETS_META = "nets.json"
CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.jsonl"

# Paper defaults per source dataset (Appendix H.2 / H.3).
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "notmnist": {"arch": "fconv", "widths": FCONV_SOURCE_WIDTHS, "epochs": 100, "l2": 1e-3},
    "mnist": {"arch": "fconv", "widths": FCONV_SOURCE_WIDTHS, "epochs": 100, "l2": 1e-3},
    "fashion-mnist": {"arch": "fconv", "widths": FCONV_SOURCE_WIDTHS, "epochs": 100, "l2": 1e-3},
    "cifar100": {"arch": "cifar-source", "widths": CIFAR_SOURCE_WIDTHS, "epochs": 300, "l2": 1e-4},
    "cifar10": {"arch": "cifar-source", "widths": CIFAR_SOURCE_WIDTHS, "epochs": 300, "l2": 1e-4},
}


@dataclass
class SourceConfig:
    """Everything that determines a source run's result (plus device/progress, which don't)."""

    dataset: str = "notmnist"
    arch: str | None = None
    widths: list[int] | None = None
    width_factor: float = 1.0
    nets: int = 100
    first_net: int = 0
    epochs: int | None = None
    lr: float = 1e-3
    l2: float | None = None
    batch_size: int = 256
    seed: int = 0
    train_examples: int | None = None
    chunk_size: str = "auto"
    precision: str = "fp32"
    conv_impl: str = "auto"
    augment_shift: int = 0
    checkpoint_every: int = 1
    device: str = "auto"
    data_root: str | None = None
    download: bool = False
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def resolved(self) -> SourceConfig:
        """Fill dataset defaults for ``arch``, ``widths``, ``epochs``, ``l2``; validate."""
        if self.dataset not in DATASET_DEFAULTS:
            raise DwpError(
                f"unknown source dataset {self.dataset!r}: use one of {', '.join(DATASET_DEFAULTS)}"
            )
        d = DATASET_DEFAULTS[self.dataset]
        cfg = SourceConfig(**asdict(self))
        cfg.arch = cfg.arch or d["arch"]
        if cfg.widths:
            cfg.widths = list(cfg.widths)
        elif cfg.arch == d["arch"]:  # the dataset's source net: its source widths
            cfg.widths = list(d["widths"])
        else:  # another architecture: its own default widths
            cfg.widths = list(default_widths(cfg.arch))
        cfg.epochs = cfg.epochs if cfg.epochs is not None else d["epochs"]
        cfg.l2 = cfg.l2 if cfg.l2 is not None else d["l2"]
        for name, value in (("nets", cfg.nets), ("epochs", cfg.epochs), ("batch size",
                            cfg.batch_size), ("checkpoint-every", cfg.checkpoint_every)):
            if value < 1:
                raise DwpError(f"--{name.replace(' ', '-')} must be >= 1, got {value}")
        if cfg.first_net < 0:
            raise DwpError(f"--first-net must be >= 0, got {cfg.first_net}")
        if cfg.lr <= 0 or cfg.l2 < 0:
            raise DwpError(f"need --lr > 0 and --l2 >= 0, got lr={cfg.lr}, l2={cfg.l2}")
        check_precision(cfg.precision)
        if cfg.augment_shift < 0:
            raise DwpError(f"--augment-shift must be >= 0 pixels, got {cfg.augment_shift}")
        if cfg.conv_impl not in CONV_IMPLS:
            raise DwpError(f"--conv-impl must be one of {', '.join(CONV_IMPLS)}, "
                           f"got {cfg.conv_impl!r}")
        if cfg.chunk_size != "auto":
            try:
                if int(cfg.chunk_size) < 1:
                    raise ValueError
            except ValueError as exc:
                raise DwpError(
                    f"--chunk-size must be 'auto' or a positive integer, got {cfg.chunk_size!r}"
                ) from exc
        with torch.device("meta"):  # checks arch and widths without allocating the net
            build_net(cfg.arch, cfg.widths, width_factor=cfg.width_factor)
        return cfg

    def net_indices(self) -> list[int]:
        """Index of each net in the series ``seed`` defines: ``first_net, first_net + 1, ...``."""
        return list(range(self.first_net, self.first_net + self.nets))

    def net_seeds(self) -> list[int]:
        """Seed of each net (init and data order), derived from ``seed`` and the net's index.

        Net ``i`` of the series is the same net whatever run trains it, so ``--nets 50
        --first-net 0`` and ``--nets 50 --first-net 50`` train the 100 nets of ``--nets 100``
        (to float rounding) in two runs, e.g. on two machines.
        """
        return [mix_seed(self.seed, i) for i in self.net_indices()]

    def record(self) -> dict[str, Any]:
        """The config as written to ``config.json`` (``precision``, ``augment_shift`` and
        ``first_net`` only when not at their defaults, so run folders made before those options
        existed still resume; ``conv_impl`` may change on resumption anyway, see
        ``RESUME_FREE_KEYS``)."""
        out = asdict(self)
        out.pop("extra")
        if not out["first_net"]:
            out.pop("first_net")
        if out["precision"] == "fp32":
            out.pop("precision")
        if not out["augment_shift"]:
            out.pop("augment_shift")
        return out


def net_factory(arch: str, widths, in_channels: int, num_classes: int, width_factor: float = 1.0):
    """A zero-argument factory building one Xavier-initialised net (for ``BatchedModel``)."""
    return partial(_build_init, arch, tuple(widths), in_channels, num_classes, width_factor)


def _build_init(arch, widths, in_channels, num_classes, width_factor):
    return xavier_init_(
        build_net(arch, widths, in_channels=in_channels, num_classes=num_classes,
                  width_factor=width_factor)
    )


def _load_data(cfg: SourceConfig, device: torch.device):
    from dwp.data import class_balanced_subset, load_dataset

    train = load_dataset(cfg.dataset, "train", root=cfg.data_root, download=cfg.download)
    test = load_dataset(cfg.dataset, "test", root=cfg.data_root, download=cfg.download)
    if cfg.train_examples is not None:
        if cfg.train_examples > len(train):
            raise DwpError(
                f"--train-examples {cfg.train_examples} exceeds the {len(train)} training images"
            )
        train = train.subset(class_balanced_subset(train.labels, cfg.train_examples, cfg.seed))
    return (
        train.images.to(device), train.labels.to(device),
        test.images.to(device), test.labels.to(device), train.num_classes,
    )


def _save_checkpoint(out: Path, trainer: BatchedTrainer, epochs_done: int) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in trainer.state_dict().items()}
    tensors["rng/torch_cpu"] = torch.get_rng_state()
    with atomic_path(out / CHECKPOINT) as tmp:
        save_file(tensors, str(tmp), metadata={"epochs_done": str(epochs_done)})


def _load_checkpoint(out: Path, trainer: BatchedTrainer) -> int:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = out / CHECKPOINT
    if not path.exists():
        return 0
    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise DwpError(f"{path} is unreadable ({exc}): delete it to restart the run") from exc
    if "epochs_done" not in meta:
        raise DwpError(f"{path} lacks 'epochs_done' metadata: delete it to restart the run")
    rng = tensors.pop("rng/torch_cpu", None)
    trainer.load_state_dict(tensors)
    if rng is not None:
        torch.set_rng_state(rng)
    return int(meta["epochs_done"])


def _trim_metrics(out: Path, epochs_done: int) -> list[dict]:
    """Keep metric rows of completed (checkpointed) epochs only; rewrite the file."""
    rows = [r for r in read_jsonl(out / METRICS) if r.get("epoch", 0) <= epochs_done]
    atomic_write_text(out / METRICS, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    return rows


def train_source_nets(
    cfg: SourceConfig,
    out: str | Path,
    on_step: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Train ``cfg.nets`` source nets together; write the run folder ``out``; return nets.json.

    Resumes from ``out/checkpoint.safetensors`` when present (the config must match). A run
    already finished returns its ``nets.json`` without training. ``on_step(epoch, step)`` is
    called before every optimiser step (tests use it to simulate a crash).
    """
    cfg = cfg.resolved()
    out = Path(out)
    if (out / NETS_META).exists() and (out / NETS_FILE).exists():
        prepare_run_dir(out, COMMAND, cfg.record())  # refuses a different config
        return json.loads((out / NETS_META).read_text())
    device = select_device(cfg.device)
    x_tr, y_tr, x_te, y_te, num_classes = _load_data(cfg, device)
    prepare_run_dir(out, COMMAND, cfg.record())

    factory = net_factory(cfg.arch, cfg.widths, x_tr.shape[1], num_classes, cfg.width_factor)
    model = BatchedModel(factory, cfg.net_seeds(), device=device, conv_impl=cfg.conv_impl)
    chunk = cfg.chunk_size if cfg.chunk_size == "auto" else int(cfg.chunk_size)
    trainer = BatchedTrainer(model, lr=cfg.lr, epochs=cfg.epochs, l2=cfg.l2, chunk_size=chunk,
                             precision=cfg.precision, augment_shift=cfg.augment_shift)
    epochs_done = _load_checkpoint(out, trainer)
    rows = _trim_metrics(out, epochs_done)

    steps_per_epoch = -(-x_tr.shape[0] // cfg.batch_size)
    bar = progress(
        total=cfg.epochs * steps_per_epoch, desc=f"{cfg.nets} nets", enabled=cfg.progress,
        initial=epochs_done * steps_per_epoch, unit="step",
    )
    last_acc = rows[-1]["mean_heldout_acc"] if rows else float("nan")

    def step_hook(epoch: int, step: int) -> None:
        if on_step is not None:
            on_step(epoch, step)
        if step:
            bar.update(1)

    try:
        with cudnn_autotune(device):
            for epoch in range(epochs_done, cfg.epochs):
                bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", acc=f"{last_acc:.4f}",
                                chunk=trainer.chunk_size)
                t0 = time.perf_counter()
                stats = trainer.train_epoch(x_tr, y_tr, epoch, cfg.batch_size, on_step=step_hook)
                bar.update(1)
                acc = evaluate_accuracy(
                    model, x_te, y_te, cfg.batch_size, _int_or_none(trainer.chunk_size)
                ).tolist()
                last_acc = sum(acc) / len(acc)
                bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", acc=f"{last_acc:.4f}",
                                chunk=trainer.chunk_size)
                row = {
                    "epoch": epoch + 1, "lr": stats["lr"], "loss": stats["loss"],
                    "train_acc": stats["train_acc"], "heldout_acc": acc,
                    "mean_heldout_acc": last_acc, "seconds": time.perf_counter() - t0,
                    "chunk_size": trainer.chunk_size,
                }
                append_jsonl(out / METRICS, row)
                if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
                    _save_checkpoint(out, trainer, epoch + 1)
    finally:
        bar.close()

    acc = evaluate_accuracy(
        model, x_te, y_te, cfg.batch_size, _int_or_none(trainer.chunk_size)
    ).tolist()
    meta = {
        "kind": "dwp-source-nets",
        "dwp_version": __version__,
        "dataset": cfg.dataset,
        "heldout_split": "test",
        "arch": cfg.arch,
        "widths": list(getattr(factory(), "widths", cfg.widths)),
        "width_factor": cfg.width_factor,
        "in_channels": int(x_tr.shape[1]),
        "num_classes": int(num_classes),
        "nets": cfg.nets,
        "first_net": cfg.first_net,
        "net_index": cfg.net_indices(),
        "seeds": model.seeds,
        "epochs": cfg.epochs,
        "heldout_acc": acc,
        "mean_heldout_acc": sum(acc) / len(acc),
        "min_heldout_acc": min(acc),
        "config": cfg.record(),
    }
    save_nets(out, model, meta)
    (out / CHECKPOINT).unlink(missing_ok=True)
    return meta


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) else None


def save_nets(out: Path, model: BatchedModel, meta: dict[str, Any]) -> None:
    """Write ``nets.safetensors`` (stacked tensors) then ``nets.json`` (its presence = done)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_tensors().items()}
    with atomic_path(out / NETS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"kind": "dwp-source-nets"})
    atomic_write_json(out / NETS_META, meta)


def load_source_run(run: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a finished source run: (stacked tensors ``{name: (n, ...)}``, ``nets.json``).

    Raises ``DwpError`` when the folder is missing, unfinished or unreadable.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    run = Path(run)
    if not run.is_dir():
        raise DwpError(f"source run {run} does not exist: run 'dwp train-source --out {run}' first")
    meta_path, nets_path = run / NETS_META, run / NETS_FILE
    if not meta_path.exists() or not nets_path.exists():
        hint = " (a checkpoint is there: rerun the same 'dwp train-source' command to finish)" \
            if (run / CHECKPOINT).exists() else ""
        raise DwpError(
            f"source run {run} is incomplete: it lacks {NETS_META} or {NETS_FILE}{hint}"
        )
    try:
        meta = json.loads(meta_path.read_text())
        tensors = load_file(str(nets_path))
    except (json.JSONDecodeError, SafetensorError, OSError) as exc:
        raise DwpError(f"source run {run}: unreadable {NETS_META}/{NETS_FILE} ({exc})") from exc
    return tensors, meta


def load_source_model(run: str | Path, device: str | torch.device = "cpu") -> BatchedModel:
    """The nets of a finished source run as a :class:`BatchedModel`."""
    tensors, meta = load_source_run(run)
    factory = net_factory(
        meta["arch"], meta["widths"], meta["in_channels"], meta["num_classes"], 1.0
    )
    return BatchedModel.from_state_tensors(factory, tensors, seeds=meta["seeds"], device=device)
