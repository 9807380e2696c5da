"""Train many copies of one architecture at once, in one batched computation.

The parameters (and buffers, e.g. BatchNorm running statistics) of ``n`` copies of one
``nn.Module`` are stacked along a new leading *net* axis, and the module is evaluated for all
copies at once with ``torch.func.functional_call`` under ``torch.func.vmap`` (PyTorch lowers a
vmapped convolution to one grouped convolution, a vmapped linear layer to one batched matmul).
The nets never interact: the loss is the *sum* over nets of each net's own loss, so the gradient
of the stacked parameters holds each net's own gradient, and an element-wise optimiser (Adam)
on the stacked tensors performs exactly the per-net updates. Results equal training each net
alone up to float rounding (tested in ``tests/test_source_nets.py``).

Main pieces
-----------
:class:`BatchedModel`
    ``n`` copies of a module: ``params`` / ``buffers`` dicts of stacked tensors, each net built
    and initialised from its own seed. ``model(x)`` with ``x`` of shape (n, B, ...) (one batch
    per net) or shared (B, ...) returns (n, B, ...) outputs. ``model.net(i)`` gives back net
    ``i`` as an ordinary ``nn.Module``; ``model.subset(idx)`` a view on some nets.
:func:`epoch_orders`
    Per-net data order of an epoch, a pure function of (net seed, epoch) -- so a resumed run
    sees exactly the orders the uninterrupted run would have seen.
:class:`BatchedTrainer`
    Adam over the stacked parameters, linear learning-rate decay per epoch, L2 penalty, per-net
    losses and accuracies, chunking over nets when memory is short, ``state_dict`` /
    ``load_state_dict`` for checkpoints.
:func:`evaluate_accuracy`
    Per-net accuracy on a shared held-out set.

L2 regularisation
-----------------
Following the paper's code, L2 is a term ``l2 * sum(w**2)`` *added to the loss* (not Adam's
``weight_decay``; with Adam the two differ). By default it covers the parameters whose name
starts with ``features.`` (all conv and BatchNorm parameters of the paper's nets, not the
classifier), as in the paper's ``train-net.py``; pass ``l2_keys`` to change that.

Learning rate
-------------
``lr_e = lr * (1 - e / epochs)`` for epoch ``e = 0 .. epochs-1``: linear decay to 0, constant
within an epoch (the paper's ``lr_linear``).

Chunking
--------
``chunk_size`` nets go through each forward/backward together; a step loops over chunks and
then makes one optimiser step, so results do not depend on the chunk size. ``"auto"`` measures
the activation memory one net needs for one batch (autograd's saved tensors) and fits as many
nets as half the free memory (CUDA: ``torch.cuda.mem_get_info``; CPU: ``MemAvailable``)
allows, and keeps each chunk's activations under 2**31 elements (CUDA's 32-bit indexing limit
for convolutions); on a CUDA out-of-memory or index-overflow error during a step the chunk size is
halved and the step redone from scratch (no update was applied yet).

Example
-------
>>> from dwp.nets import FConvMNIST, xavier_init_
>>> model = BatchedModel(lambda: xavier_init_(FConvMNIST()), seeds=[0, 1, 2])
>>> trainer = BatchedTrainer(model, lr=1e-3, epochs=10, l2=1e-3)
>>> for epoch in range(10):  # doctest: +SKIP
...     stats = trainer.train_epoch(images, labels, epoch, batch_size=256)
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from dwp.convimpl import CONV_IMPLS, resolve_conv_impl, use_unfold_convs_
from dwp.precision import autocast_for, check_precision, flush_denormals, tf32_for
from dwp.runtime import DwpError, mix_seed

ModuleFactory = Callable[[], nn.Module]


def build_seeded(factory: ModuleFactory, seed: int) -> nn.Module:
    """Call ``factory()`` with torch's CPU RNG seeded by ``seed`` (global RNG state is restored).

    The module is built (and initialised) on CPU, so the result does not depend on the device.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


class BatchedModel:
    """``n`` copies of one architecture with stacked parameters and buffers.

    Parameters
    ----------
    factory:
        Builds (and initialises) one net; called once per seed under that seed.
    seeds:
        One integer per net; net ``i`` is ``factory()`` built under ``torch.manual_seed(seeds[i])``.
    device, dtype:
        Where the stacked tensors live.
    conv_impl:
        How the nets' ``nn.Conv2d`` layers compute: ``"native"`` (``F.conv2d``; under vmap one
        grouped convolution over the nets), ``"unfold"`` (im2col + matmul, under vmap one
        batched matrix product), ``"mixed"`` (im2col + matmul for convolutions with one input
        channel only) or ``"auto"`` (``"mixed"`` on CUDA, ``"native"`` elsewhere); see
        :mod:`dwp.convimpl`. Results agree up to float rounding. ``self.conv_impl`` holds the
        resolved choice.

    Attributes
    ----------
    params:
        ``{name: (n, *shape)}`` leaf tensors with ``requires_grad=True``.
    buffers:
        ``{name: (n, *shape)}`` (e.g. BatchNorm running statistics).
    """

    def __init__(
        self,
        factory: ModuleFactory,
        seeds: Sequence[int],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        *,
        sample_dim: int | None = None,
        conv_impl: str = "native",
        _stacked: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None,
    ) -> None:
        if conv_impl not in CONV_IMPLS:
            raise DwpError(f"unknown convolution implementation {conv_impl!r}: use one of "
                           f"{', '.join(CONV_IMPLS)}")
        self.factory = factory
        # "auto" is resolved here, for the device the parameters live on
        dev = _stacked[0][next(iter(_stacked[0]))].device if _stacked else torch.device(device)
        self.conv_impl = resolve_conv_impl(conv_impl, dev)
        self.seeds = [int(s) for s in seeds]
        if not self.seeds:
            raise DwpError("a batched model needs at least one net (seed)")
        template = factory()
        self.sample_dim = _infer_sample_dim(template) if sample_dim is None else sample_dim
        self.base = copy.deepcopy(template).to("meta")
        if self.conv_impl in ("unfold", "mixed"):
            use_unfold_convs_(self.base, single_channel_only=self.conv_impl == "mixed")
        if _stacked is not None:
            self.params, self.buffers = _stacked
            return
        nets = [build_seeded(factory, s) for s in self.seeds]
        params, buffers = stack_module_state(nets)
        self.params = {
            k: v.detach().to(device=device, dtype=dtype).requires_grad_(True)
            for k, v in params.items()
        }
        self.buffers = {
            k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
            for k, v in buffers.items()
        }

    # -- basic properties --------------------------------------------------------------------
    @property
    def n(self) -> int:
        """Number of nets."""
        return len(self.seeds)

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    def num_parameters_per_net(self) -> int:
        return sum(v[0].numel() for v in self.params.values())

    # -- forward -----------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        *,
        train: bool = True,
        shared: bool | None = None,
        params: dict[str, torch.Tensor] | None = None,
        buffers: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Run every net on its input.

        x: (n, B, *sample) -- one batch per net -- or (B, *sample) shared by all nets;
        ``shared=None`` decides by ``x.dim()`` against ``self.sample_dim`` (3 for images).
        ``train`` selects train/eval mode (BatchNorm batch statistics and running-stat
        updates). ``params``/``buffers`` override the stacked tensors (e.g. a chunk of nets);
        their leading size is the number of nets. Returns (n, B, *out).
        """
        params = self.params if params is None else params
        buffers = self.buffers if buffers is None else buffers
        n = next(iter(params.values())).shape[0]
        if shared is None:
            shared = x.dim() == self.sample_dim + 1
        if not shared and x.shape[0] != n:
            raise DwpError(f"per-net input has {x.shape[0]} batches for {n} nets")
        self.base.train(train)

        def one(p, b, xi):
            return functional_call(self.base, (p, b), (xi,))

        if n == 1:
            # One net (e.g. --chunk-size 1, or one-at-a-time benchmarks): a plain call, no vmap.
            # Under vmap one net still went through the batched convolution path: ~1.6x slower
            # on CPU (oneDNN), and on an H100 a step took 6.0 ms against a plain module's 2.4
            # (profile_source_step.py, 2026-11-28).
            first = {k: v[0] for k, v in params.items()}, {k: v[0] for k, v in buffers.items()}
            return one(*first, x if shared else x[0]).unsqueeze(0)
        in_x = None if shared else 0
        return vmap(one, in_dims=(0, 0, in_x), randomness="different")(params, buffers, x)

    __call__ = forward

    # -- selection, export -------------------------------------------------------------------
    def chunk(self, index: slice) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Views ``(params, buffers)`` of the nets in ``index`` (a slice); writes go through."""
        return (
            {k: v[index] for k, v in self.params.items()},
            {k: v[index] for k, v in self.buffers.items()},
        )

    def subset(self, idx: Sequence[int]) -> BatchedModel:
        """A new ``BatchedModel`` holding copies of the nets ``idx`` (in that order)."""
        ix = torch.as_tensor(list(idx), dtype=torch.long)
        params = {
            k: v.detach()[ix.to(v.device)].clone().requires_grad_(True)
            for k, v in self.params.items()
        }
        buffers = {k: v[ix.to(v.device)].clone() for k, v in self.buffers.items()}
        return BatchedModel(
            self.factory,
            [self.seeds[i] for i in idx],
            sample_dim=self.sample_dim,
            conv_impl=self.conv_impl,
            _stacked=(params, buffers),
        )

    def net(self, i: int) -> nn.Module:
        """Net ``i`` as an ordinary module (a copy, on this model's device)."""
        module = build_seeded(self.factory, self.seeds[i]).to(self.device)
        state = {k: v[i].detach().clone() for k, v in {**self.params, **self.buffers}.items()}
        module.load_state_dict(state)
        return module

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """All stacked tensors ``{name: (n, *shape)}`` (detached; params and buffers)."""
        out = {k: v.detach() for k, v in self.params.items()}
        out.update({k: v.detach() for k, v in self.buffers.items()})
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy stacked tensors (as from :meth:`state_tensors`) into this model, in place."""
        expected = set(self.params) | set(self.buffers)
        missing = expected - set(tensors)
        if missing:
            raise DwpError(f"stacked state lacks tensors {sorted(missing)[:5]}")
        with torch.no_grad():
            for k, v in {**self.params, **self.buffers}.items():
                if tuple(tensors[k].shape) != tuple(v.shape):
                    raise DwpError(
                        f"stacked tensor {k!r} has shape {tuple(tensors[k].shape)}, "
                        f"expected {tuple(v.shape)}"
                    )
                v.copy_(tensors[k].to(v.device))

    @classmethod
    def from_state_tensors(
        cls,
        factory: ModuleFactory,
        tensors: dict[str, torch.Tensor],
        seeds: Sequence[int] | None = None,
        device: torch.device | str = "cpu",
        conv_impl: str = "native",
    ) -> BatchedModel:
        """Rebuild a ``BatchedModel`` from saved stacked tensors (e.g. a safetensors file)."""
        template = factory()
        pnames = {k for k, _ in template.named_parameters()}
        bnames = {k for k, _ in template.named_buffers()}
        missing = (pnames | bnames) - set(tensors)
        if missing:
            raise DwpError(f"saved nets lack tensors {sorted(missing)[:5]} for this architecture")
        n = tensors[next(iter(pnames))].shape[0]
        seeds = list(range(n)) if seeds is None else list(seeds)
        params = {
            k: tensors[k].to(device).detach().clone().requires_grad_(True)
            for k, _ in template.named_parameters()
        }
        buffers = {k: tensors[k].to(device).clone() for k, _ in template.named_buffers()}
        return cls(factory, seeds, conv_impl=conv_impl, _stacked=(params, buffers))


# -- data order ------------------------------------------------------------------------------
def epoch_orders(seeds: Sequence[int], epoch: int, n_examples: int) -> torch.Tensor:
    """Per-net random order of ``n_examples`` for ``epoch``: LongTensor (n_nets, n_examples).

    Row ``i`` depends only on ``(seeds[i], epoch)``, so nets trained alone or in a batch, and
    runs resumed after an interruption, see the same orders.
    """
    rows = []
    for s in seeds:
        gen = torch.Generator().manual_seed(mix_seed(s, epoch, 0x5EED))
        rows.append(torch.randperm(n_examples, generator=gen))
    return torch.stack(rows)


def epoch_shifts(
    seeds: Sequence[int], epoch: int, n_examples: int, max_shift: int
) -> torch.Tensor:
    """Per-net random translations for ``epoch``: LongTensor (n_nets, n_examples, 2) of (dy, dx)
    in [-max_shift, max_shift], one per position of the epoch's order. Like
    :func:`epoch_orders`, row ``i`` depends only on ``(seeds[i], epoch)``."""
    rows = []
    for s in seeds:
        gen = torch.Generator().manual_seed(mix_seed(s, epoch, 0x5A1F7))
        rows.append(torch.randint(-max_shift, max_shift + 1, (n_examples, 2), generator=gen))
    return torch.stack(rows)


def shift_images(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Translate each image by whole pixels, filling with zeros.

    x (N, C, H, W), shifts (N, 2) integer (dy, dx): ``out[n, :, i, j] = x[n, :, i - dy, j - dx]``
    where that pixel exists, else 0. Returns (N, C, H, W).
    """
    n, c, h, w = x.shape
    m = int(shifts.abs().max()) if shifts.numel() else 0
    if m == 0:
        return x
    xp = F.pad(x, (m, m, m, m))
    wp = w + 2 * m
    dev = x.device
    rows = torch.arange(h, device=dev)[None, :, None] + m - shifts[:, 0, None, None]
    cols = torch.arange(w, device=dev)[None, None, :] + m - shifts[:, 1, None, None]
    idx = (rows * wp + cols).reshape(n, 1, h * w).expand(n, c, h * w)
    return xp.flatten(2).gather(2, idx).reshape(n, c, h, w)


def linear_decay_lr(lr: float, epoch: int, epochs: int) -> float:
    """Learning rate of epoch ``epoch`` (0-based): ``lr * (1 - epoch / epochs)``."""
    return lr * max(0.0, 1.0 - epoch / epochs)


# -- memory ----------------------------------------------------------------------------------
def free_memory_bytes(device: torch.device) -> int:
    """Free memory on ``device``: CUDA ``mem_get_info``; CPU ``MemAvailable`` (or 4 GiB)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


def _forward_footprint(model: BatchedModel, x: torch.Tensor) -> tuple[int, int]:
    """(bytes autograd saves, elements of the largest saved tensor) for one net's forward on
    the batch ``x`` (B, ...), measured with ``torch.autograd.graph.saved_tensors_hooks``."""
    params, buffers = model.chunk(slice(0, 1))
    params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    buffers = {k: v.clone() for k, v in buffers.items()}
    total = 0
    largest = 0
    seen: set[int] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total, largest
        largest = max(largest, t.numel())
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model.forward(x.unsqueeze(0), params=params, buffers=buffers, shared=False)
    total += out.numel() * out.element_size() * 3  # logits, softmax grads
    total += sum(v.numel() * v.element_size() for v in params.values())
    return total, max(largest, out.numel())


# Kernels index tensors with 32-bit integers unless told otherwise: a grouped convolution over
# many nets whose input or output has 2**31 or more elements fails on CUDA
# ("canUse32BitIndexMath"). Chunks are kept below this.
MAX_TENSOR_ELEMENTS = 2**31 - 1


def auto_chunk_size(
    model: BatchedModel, x: torch.Tensor, memory_fraction: float = 0.5
) -> int:
    """How many nets fit in one forward/backward on batch ``x`` (B, ...), at least 1.

    Uses the activation memory one net needs (x 2 for the backward's temporaries) against
    ``memory_fraction`` of the free memory of the model's device, and keeps every activation
    of a chunk under :data:`MAX_TENSOR_ELEMENTS` elements (the 32-bit indexing limit).
    """
    per_net_bytes, largest = _forward_footprint(model, x)
    budget = memory_fraction * free_memory_bytes(model.device)
    by_memory = budget // max(2 * per_net_bytes, 1)
    by_index = MAX_TENSOR_ELEMENTS // max(largest, 1)
    return int(max(1, min(model.n, by_memory, by_index)))


def _too_large_for_chunk(exc: BaseException) -> bool:
    """Errors that a smaller chunk of nets avoids: out of memory, 32-bit index overflow."""
    return _is_oom(exc) or "canUse32BitIndexMath" in str(exc)


def _is_oom(exc: BaseException) -> bool:
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(exc, oom)) or "out of memory" in str(exc)


# -- training --------------------------------------------------------------------------------
def l2_penalty(params: dict[str, torch.Tensor], keys: Iterable[str]) -> torch.Tensor:
    """Per-net ``sum(w**2)`` over the parameters ``keys``: (n,)."""
    terms = [params[k].pow(2).flatten(1).sum(1) for k in keys]
    if not terms:
        n = next(iter(params.values())).shape[0]
        return next(iter(params.values())).new_zeros(n)
    return torch.stack(terms).sum(0)


class BatchedTrainer:
    """Adam + linear lr decay + L2-in-the-loss training of a :class:`BatchedModel`.

    Parameters
    ----------
    model:
        The nets to train (updated in place).
    lr, epochs:
        Initial learning rate and total epochs (the lr decays linearly to 0 over them).
    l2:
        Weight of ``sum(w**2)`` over ``l2_keys`` added to each net's loss.
    l2_keys:
        Parameter names the L2 term covers; default: names starting with ``features.``.
    chunk_size:
        Nets per forward/backward: an int, ``None`` (all nets) or ``"auto"``.
    loss_fn:
        ``(logits (n, B, C), targets (n, B)) -> per-net loss (n,)``; default mean cross-entropy.
    betas, eps:
        Adam's hyperparameters (PyTorch defaults).
    precision:
        Arithmetic of the forward/backward passes (parameters, gradients and Adam stay
        float32): ``"fp32"`` (default), ``"tf32"`` (CUDA matmuls/convolutions in TensorFloat-32;
        no effect on CPU) or ``"bf16"`` (``torch.autocast`` to bfloat16; the loss in float32).
    augment_shift:
        Train on images translated by up to this many pixels (zero fill), drawn anew for every
        example and epoch by :func:`epoch_shifts`; 0 (default, the paper) trains on the images
        as they are.
    """

    def __init__(
        self,
        model: BatchedModel,
        lr: float = 1e-3,
        epochs: int = 1,
        l2: float = 0.0,
        l2_keys: Sequence[str] | None = None,
        chunk_size: int | str | None = "auto",
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        precision: str = "fp32",
        augment_shift: int = 0,
    ) -> None:
        if augment_shift < 0:
            raise DwpError(f"augment_shift must be >= 0 pixels, got {augment_shift}")
        self.augment_shift = int(augment_shift)
        check_precision(precision)
        self.precision = precision
        if epochs < 1:
            raise DwpError(f"epochs must be >= 1, got {epochs}")
        if isinstance(chunk_size, str) and chunk_size != "auto":
            raise DwpError(f"chunk size must be a positive integer or 'auto', got {chunk_size!r}")
        if isinstance(chunk_size, int) and chunk_size < 1:
            raise DwpError(f"chunk size must be a positive integer or 'auto', got {chunk_size}")
        self.model = model
        self.lr = lr
        self.epochs = epochs
        self.l2 = l2
        if l2_keys is None:
            l2_keys = [k for k in model.params if k.startswith("features.")]
        self.l2_keys = list(l2_keys)
        self.chunk_size = chunk_size
        self.loss_fn = loss_fn or _mean_cross_entropy
        self.optimizer = torch.optim.Adam(
            list(model.params.values()), lr=lr, betas=betas, eps=eps
        )
        self._names = list(model.params)

    # -- one step ----------------------------------------------------------------------------
    def _resolve_chunk(self, x: torch.Tensor) -> int:
        if self.chunk_size == "auto":
            self.chunk_size = auto_chunk_size(self.model, x[0])
        return self.model.n if self.chunk_size is None else int(self.chunk_size)

    def _grads_for_chunks(
        self, x: torch.Tensor, y: torch.Tensor, chunk: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        losses, correct = [], []
        for p in model.params.values():
            p.grad = None
        for start in range(0, model.n, chunk):
            sl = slice(start, min(model.n, start + chunk))
            views, bufs = model.chunk(sl)
            leaves = {k: v.detach().requires_grad_(True) for k, v in views.items()}
            with tf32_for(self.precision, x.device):
                with autocast_for(self.precision, x.device):
                    logits = model.forward(x[sl], params=leaves, buffers=bufs, train=True,
                                           shared=False)
                logits = logits.float()
                data = self.loss_fn(logits, y[sl])
                loss = data + self.l2 * l2_penalty(leaves, self.l2_keys) if self.l2 else data
                loss.sum().backward()
            for k, p in model.params.items():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                if leaves[k].grad is not None:
                    p.grad[sl] = leaves[k].grad
            losses.append(data.detach())
            correct.append((logits.detach().argmax(-1) == y[sl]).sum(-1))
        return torch.cat(losses), torch.cat(correct)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step of every net on its own batch.

        x: (n, B, ...) inputs, y: (n, B) targets. Returns per-net data loss (n,) and number of
        correct predictions (n,) on this batch (before the update).
        """
        chunk = self._resolve_chunk(x)
        buffers_before = None
        while True:
            try:
                if self.model.buffers:
                    buffers_before = {k: v.clone() for k, v in self.model.buffers.items()}
                out = self._grads_for_chunks(x, y, chunk)
                break
            except (RuntimeError, MemoryError) as exc:
                if not _too_large_for_chunk(exc) or chunk == 1:
                    raise
                if buffers_before is not None:
                    with torch.no_grad():
                        for k, v in self.model.buffers.items():
                            v.copy_(buffers_before[k])
                chunk = max(1, chunk // 2)
                self.chunk_size = chunk
                if x.is_cuda:
                    torch.cuda.empty_cache()
        self.optimizer.step()
        return out

    # -- one epoch ---------------------------------------------------------------------------
    def set_epoch_lr(self, epoch: int) -> float:
        """Set (and return) the learning rate of ``epoch``."""
        lr = linear_decay_lr(self.lr, epoch, self.epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def train_epoch(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        epoch: int,
        batch_size: int = 256,
        on_step: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Train every net for one epoch over ``images`` (N, ...) / ``labels`` (N,).

        Net ``i`` visits the examples in the order ``epoch_orders(seeds, epoch, N)[i]`` in
        batches of ``batch_size`` (the last one may be smaller), translated by
        ``epoch_shifts`` when ``augment_shift`` is set. ``on_step(epoch, step)`` is
        called before each step (a progress or test hook). Returns per-net mean ``loss`` and
        ``train_acc`` lists and the ``lr`` used.
        """
        model = self.model
        n_examples = images.shape[0]
        lr = self.set_epoch_lr(epoch)
        orders = epoch_orders(model.seeds, epoch, n_examples).to(images.device)
        shifts = (epoch_shifts(model.seeds, epoch, n_examples, self.augment_shift)
                  .to(images.device) if self.augment_shift else None)
        loss_sum = torch.zeros(model.n, device=images.device, dtype=torch.float64)
        correct = torch.zeros(model.n, device=images.device, dtype=torch.long)
        with flush_denormals(images.device):
            for step, start in enumerate(range(0, n_examples, batch_size)):
                if on_step is not None:
                    on_step(epoch, step)
                idx = orders[:, start : start + batch_size]
                xb = images[idx]
                if shifts is not None:
                    sb = shifts[:, start : start + batch_size]
                    xb = shift_images(xb.flatten(0, 1), sb.flatten(0, 1)).view_as(xb)
                loss, corr = self.step(xb, labels[idx])
                loss_sum += loss.double() * idx.shape[1]
                correct += corr
        return {
            "lr": lr,
            "loss": (loss_sum / n_examples).tolist(),
            "train_acc": (correct.double() / n_examples).tolist(),
        }

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat ``{name: tensor}`` of the model's stacked tensors and Adam's state.

        Keys: ``model/<name>``, ``adam/exp_avg/<name>``, ``adam/exp_avg_sq/<name>``,
        ``adam/step/<name>`` (safetensors-ready).
        """
        out = {f"model/{k}": v.detach().contiguous() for k, v in self.model.state_tensors().items()}
        for name, p in self.model.params.items():
            st = self.optimizer.state.get(p)
            if not st:
                continue
            out[f"adam/exp_avg/{name}"] = st["exp_avg"].contiguous()
            out[f"adam/exp_avg_sq/{name}"] = st["exp_avg_sq"].contiguous()
            out[f"adam/step/{name}"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1)
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.model.load_state_tensors(
            {k[len("model/") :]: v for k, v in state.items() if k.startswith("model/")}
        )
        for name, p in self.model.params.items():
            if f"adam/exp_avg/{name}" not in state:
                continue
            self.optimizer.state[p] = {
                "step": state[f"adam/step/{name}"].reshape(()).to(torch.float32).clone(),
                "exp_avg": state[f"adam/exp_avg/{name}"].to(p.device).clone(),
                "exp_avg_sq": state[f"adam/exp_avg_sq/{name}"].to(p.device).clone(),
            }


def _mean_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-net mean cross-entropy: logits (n, B, C), targets (n, B) -> (n,)."""
    n, b, c = logits.shape
    return F.cross_entropy(logits.reshape(n * b, c), targets.reshape(n * b), reduction="none").view(
        n, b
    ).mean(1)


@torch.no_grad()
def predict_logits(
    model: BatchedModel,
    images: torch.Tensor,
    batch_size: int = 1000,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Eval-mode logits of every net on shared ``images`` (N, ...): (n, N, classes).

    ``chunk_size`` nets (default: all) and ``batch_size`` images go through at a time.
    """
    return torch.cat(
        [torch.cat(list(_eval_batches(model, images, batch_size, sl)), dim=1)
         for sl in _net_slices(model.n, chunk_size)]
    )


def _net_slices(n: int, chunk_size: int | str | None) -> list[slice]:
    c = n if not isinstance(chunk_size, int) else max(1, chunk_size)
    return [slice(i, min(n, i + c)) for i in range(0, n, c)]


def _eval_batches(model: BatchedModel, images: torch.Tensor, batch_size: int, sl: slice):
    params, buffers = model.chunk(sl)
    params = {k: v.detach() for k, v in params.items()}
    for start in range(0, images.shape[0], batch_size):
        xb = images[start : start + batch_size]
        yield model.forward(xb, params=params, buffers=buffers, train=False, shared=True)


@torch.no_grad()
def evaluate_accuracy(
    model: BatchedModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 1000,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Per-net accuracy on a shared held-out set ``images`` (N, ...), ``labels`` (N,): (n,).

    ``chunk_size`` nets (default: all) and ``batch_size`` images are evaluated at a time.
    """
    correct = torch.zeros(model.n, dtype=torch.long, device=labels.device)
    for sl in _net_slices(model.n, chunk_size):
        start = 0
        for logits in _eval_batches(model, images, batch_size, sl):
            yb = labels[start : start + logits.shape[1]].to(logits.device)
            correct[sl] += (logits.argmax(-1) == yb).sum(1).to(correct.device)
            start += logits.shape[1]
    return correct.double() / images.shape[0]


def _infer_sample_dim(module: nn.Module) -> int:
    """Dims of one input sample: 3 for a net starting with Conv2d, 1 for Linear, etc."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return {nn.Conv1d: 2, nn.Conv2d: 3, nn.Conv3d: 4}[type(m)]
        if isinstance(m, nn.Linear):
            return 1
    raise DwpError("cannot tell the input rank of this module: pass sample_dim explicitly")

