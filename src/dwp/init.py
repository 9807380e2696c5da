"""Initialise the convolution kernels of any ``nn.Module`` from a kernel prior (paper Sec. 4.3).

Every ``nn.Conv2d`` / ``nn.ConvTranspose2d`` with a square k x k kernel has ``I x O`` kernel
slots (weight shape (O, I/groups, k, k) for Conv2d, (I, O/groups, k, k) for ConvTranspose2d).
:func:`init_from_prior` fills each slot independently with one k x k kernel drawn from

- ``source="dwp"``: a trained :class:`~dwp.priors.base.KernelPrior` (``prior.sample``);
- ``source="filters"``: a stored kernel set (N, k, k), drawn uniformly *with replacement*;
- ``source="xavier"``: Xavier/Glorot-normal, ``std = sqrt(2 / (fan_in + fan_out))`` with
  PyTorch's fan convention for the weight tensor (what ``nn.init.xavier_normal_`` does).

Which prior a layer gets
------------------------
``priors`` is one prior / kernel set, a sequence of them, or a dict keyed by *layer name*
(e.g. the names of ``dwp.priors.load_prior_dir``: ``"conv1"``, ``"features.conv2"``) or by
*kernel size* (int). Without ``mapping`` a layer takes, in order: the entry whose key equals its
full module name or its last name component and whose kernel size fits; else the one entry
whose kernel size equals its own (several -> ``DwpError``, pass ``mapping``); else nothing (the
layer keeps its weights and is listed in ``InitReport.skipped``).

``mapping`` makes the assignment explicit: ``{layer name or kernel size: prior key or prior}``.
A layer named in it (or whose kernel size is in it) gets that prior; other layers are skipped.
An entry that matches no layer, or whose prior's kernel size differs from the layer's, raises
``DwpError`` naming it. With ``source="xavier"`` ``priors`` is ignored and ``mapping`` (if given)
only selects the layers.

Randomness
----------
``generator`` (a CPU ``torch.Generator`` or an int seed; ``None``: torch's global RNG) draws one
64-bit seed per layer, in module order. Prior samples are made on the prior's device with a
generator seeded by it, filters and Xavier draws on CPU, and the result is copied to the layer's
device and dtype -- so for CPU priors the same seed gives the same weights on CPU and GPU.
Only ``weight`` tensors of initialised conv layers change; biases are zeroed only with
``include_bias=True``; nothing else is touched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dwp.kernelsets import as_kernels, find_layers, load_kernel_file
from dwp.priors.base import KernelPrior
from dwp.runtime import DwpError

SOURCES = ("dwp", "filters", "xavier")
CONV_TYPES = (nn.Conv2d, nn.ConvTranspose2d)
#: Kernels drawn from a prior per ``sample`` call (bounds the decoder's memory).
SAMPLE_CHUNK = 65536


@dataclass
class LayerInit:
    """What :func:`init_from_prior` did to one layer."""

    name: str
    kind: str
    kernel_size: int
    n_kernels: int
    source: str
    prior: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class InitReport:
    """Layers initialised (``layers``) and conv layers left as they were (``skipped``)."""

    source: str
    layers: list[LayerInit] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def initialised(self) -> list[str]:
        """Names of the layers whose kernels were replaced."""
        return [layer.name for layer in self.layers]

    @property
    def n_kernels(self) -> int:
        return sum(layer.n_kernels for layer in self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "layers": [layer.to_dict() for layer in self.layers],
            "skipped": [{"name": n, "reason": r} for n, r in self.skipped],
        }

    def __str__(self) -> str:
        lines = [f"init source={self.source}: {len(self.layers)} layers, {self.n_kernels} kernels"]
        for layer in self.layers:
            lines.append(
                f"  {layer.name} ({layer.kind}, {layer.kernel_size}x{layer.kernel_size}, "
                f"{layer.n_kernels} kernels) <- {layer.prior}"
            )
        for name, reason in self.skipped:
            lines.append(f"  {name}: kept ({reason})")
        return "\n".join(lines)


# -- kernel sources ------------------------------------------------------------------------------
class _Source:
    """One kernel source: a prior (dwp) or a kernel set (filters), with its kernel size."""

    def __init__(self, key: str, obj: Any, source: str) -> None:
        self.key = key
        self.source = source
        if source == "dwp":
            if not isinstance(obj, KernelPrior):
                raise DwpError(
                    f"prior {key!r} is a {type(obj).__name__}, not a KernelPrior: load it with "
                    "dwp.priors.load_prior_dir or use source='filters' for kernel sets"
                )
            self.obj = obj
            self.kernel_size = obj.kernel_size
        else:
            self.obj = _as_kernel_set(obj, key)
            self.kernel_size = int(self.obj.shape[-1])

    def fits(self, k: int) -> bool:
        return self.kernel_size is None or self.kernel_size == k

    def describe(self) -> str:
        if self.source == "dwp":
            return f"{self.obj.family} prior {self.key!r}"
        return f"kernel set {self.key!r} ({self.obj.shape[0]} kernels)"

    def draw(self, n: int, k: int, seed: int) -> torch.Tensor:
        """``n`` kernels (n, k, k), float32, on the source's device."""
        if self.source == "filters":
            gen = torch.Generator().manual_seed(seed)
            idx = torch.randint(self.obj.shape[0], (n,), generator=gen)
            return self.obj[idx]
        prior = self.obj
        dev = _module_device(prior)
        gen = torch.Generator(device=dev).manual_seed(seed)
        chunks = []
        with torch.no_grad():
            for start in range(0, n, SAMPLE_CHUNK):
                m = min(SAMPLE_CHUNK, n - start)
                w = prior.sample(m, kernel_size=k, generator=gen)
                if tuple(w.shape) != (m, k, k):
                    raise DwpError(
                        f"prior {self.key!r} returned samples of shape {tuple(w.shape)}, "
                        f"expected {(m, k, k)}"
                    )
                chunks.append(w.detach())
        return torch.cat(chunks)


def _module_device(module: nn.Module) -> torch.device:
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return torch.device("cpu")


def _as_kernel_set(obj: Any, key: str) -> torch.Tensor:
    """A kernel set (N, k, k) float32 on CPU from a tensor/array or a kernel file path."""
    if isinstance(obj, (str, Path)):
        return load_kernel_file(obj)["train"]
    if isinstance(obj, KernelPrior):
        raise DwpError(f"{key!r} is a prior, not a kernel set: use source='dwp' for priors")
    return as_kernels(obj.detach().cpu() if isinstance(obj, torch.Tensor) else obj, key)


def load_kernel_sets(path: str | Path) -> dict[str, torch.Tensor]:
    """``{layer: train kernels (N, k, k)}`` of a kernel-set folder or a single kernel file."""
    return {name: load_kernel_file(p)["train"] for name, p in find_layers(path).items()}


def _normalise_sources(priors: Any, source: str) -> dict[str, _Source]:
    """Turn ``priors`` (one, a sequence, a dict, or a kernel-set folder) into named sources."""
    if priors is None:
        raise DwpError(f"source={source!r} needs priors (dwp) or kernel sets (filters), got None")
    if source == "filters" and isinstance(priors, (str, Path)) and Path(priors).is_dir():
        priors = load_kernel_sets(priors)
    if isinstance(priors, Mapping):
        items = [(str(k), v) for k, v in priors.items()]
    elif isinstance(priors, (KernelPrior, torch.Tensor, str, Path)) or hasattr(priors, "shape"):
        items = [("0", priors)]
    elif isinstance(priors, Sequence):
        items = [(str(i), p) for i, p in enumerate(priors)]
    else:
        raise DwpError(f"cannot use {type(priors).__name__} as priors: pass a prior or a dict")
    if not items:
        raise DwpError("no priors given: pass at least one prior or kernel set")
    return {k: _Source(k, v, source) for k, v in items}


# -- layers ----------------------------------------------------------------------------------
def _conv_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, CONV_TYPES)]


def _square_k(module: nn.Module) -> int | None:
    kh, kw = module.weight.shape[-2:]
    return int(kh) if kh == kw else None


def _xavier_std(weight: torch.Tensor) -> float:
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
    return math.sqrt(2.0 / float(fan_in + fan_out))


def _layer_seeds(n: int, generator: torch.Generator | int | None) -> list[int]:
    if isinstance(generator, int):
        generator = torch.Generator().manual_seed(generator)
    if generator is not None and generator.device.type != "cpu":
        raise DwpError("init_from_prior: pass a CPU torch.Generator or an int seed")
    draws = torch.randint(0, 2**62, (max(n, 1),), generator=generator, dtype=torch.int64)
    return [int(v) for v in draws[:n]]


def _resolve_explicit(
    mapping: Mapping, sources: dict[str, _Source] | None, layers, source: str
) -> dict[str, _Source | None]:
    """Layer name -> source for an explicit ``mapping``; checks every entry matches a layer."""
    names = {n for n, _ in layers}
    sizes = {_square_k(m) for _, m in layers}
    for key in mapping:
        if isinstance(key, str) and key not in names:
            raise DwpError(
                f"mapping names layer {key!r}, which is not a Conv2d/ConvTranspose2d of the "
                f"model (conv layers: {', '.join(sorted(names)) or 'none'})"
            )
        if isinstance(key, int) and key not in sizes:
            raise DwpError(
                f"mapping gives a prior for {key}x{key} kernels but the model has no such conv "
                f"layer (kernel sizes: {sorted(s for s in sizes if s)})"
            )
        if not isinstance(key, (str, int)):
            raise DwpError(f"mapping keys are layer names or kernel sizes, got {key!r}")

    def lookup(value: Any, key: Any) -> _Source | None:
        if source == "xavier":
            return None
        if isinstance(value, (KernelPrior, torch.Tensor)) or hasattr(value, "shape"):
            return _Source(str(key), value, source)
        if sources is None or str(value) not in sources:
            known = ", ".join(sorted(sources or {})) or "none"
            raise DwpError(f"mapping entry {key!r} -> {value!r}: no such prior (priors: {known})")
        return sources[str(value)]

    out: dict[str, _Source | None] = {}
    for name, module in layers:
        k = _square_k(module)
        key = name if name in mapping else (k if k in mapping else None)
        if key is None:
            continue
        src = lookup(mapping[key], key)
        if src is not None and (k is None or not src.fits(k)):
            have = "non-square" if k is None else f"{k}x{k}"
            raise DwpError(
                f"mapping gives layer {name!r} ({have} kernels) the {src.describe()} for "
                f"{src.kernel_size}x{src.kernel_size} kernels: its kernel size matches no "
                "layer it was mapped to; map a prior of the right size"
            )
        out[name] = src
    return out


def _resolve_auto(sources: dict[str, _Source], name: str, k: int) -> tuple[_Source | None, str]:
    last = name.rsplit(".", 1)[-1]
    for key in (name, last):
        src = sources.get(key)
        if src is not None and src.fits(k):
            return src, ""
    fitting = [s for s in sources.values() if s.fits(k)]
    distinct = {id(s.obj): s for s in fitting}
    if len(distinct) == 1:
        return fitting[0], ""
    if len(distinct) > 1:
        raise DwpError(
            f"layer {name!r} ({k}x{k}) fits several priors ({', '.join(s.key for s in fitting)}) "
            "and none is named after it: pass mapping={layer: prior key}"
        )
    return None, f"no prior for {k}x{k} kernels"


# -- the public function -------------------------------------------------------------------------
def init_from_prior(
    model: nn.Module,
    priors: Any = None,
    source: str = "dwp",
    mapping: Mapping[str | int, Any] | None = None,
    generator: torch.Generator | int | None = None,
    include_bias: bool = False,
) -> InitReport:
    """Fill the conv kernels of ``model`` (in place) from ``priors``; see the module docstring.

    Parameters
    ----------
    model:
        Any module; its Conv2d / ConvTranspose2d layers with square kernels are candidates.
    priors:
        ``source="dwp"``: a ``KernelPrior``, a sequence of them, or ``{name or k: prior}``.
        ``source="filters"``: a kernel set (N, k, k) / (N, 1, k, k) tensor or array, a kernel
        file path, a kernel-set folder, or a dict of those. Ignored for ``"xavier"``.
    source:
        ``"dwp"``, ``"filters"`` or ``"xavier"``.
    mapping:
        Optional explicit ``{layer name or kernel size: prior key or prior object}``.
    generator:
        CPU ``torch.Generator`` or int seed; ``None`` uses torch's global RNG.
    include_bias:
        Also set the biases of the initialised layers to zero.

    Returns
    -------
    InitReport
        Initialised layers (name, type, kernel size, number of kernels, prior) and skipped ones.
    """
    if source not in SOURCES:
        raise DwpError(f"unknown init source {source!r}: choose one of {', '.join(SOURCES)}")
    layers = _conv_layers(model)
    if source == "xavier" or (priors is None and mapping is not None):
        sources = None
    else:
        sources = _normalise_sources(priors, source)
    explicit = None
    if mapping is not None:
        explicit = _resolve_explicit(mapping, sources, layers, source)
    seeds = _layer_seeds(len(layers), generator)
    report = InitReport(source=source)
    for (name, module), seed in zip(layers, seeds, strict=True):
        weight = module.weight
        k = _square_k(module)
        kind = type(module).__name__
        if k is None:
            report.skipped.append((name, f"non-square kernel {tuple(weight.shape[-2:])}"))
            continue
        if explicit is not None and name not in explicit:
            report.skipped.append((name, "not in mapping"))
            continue
        n = weight.shape[0] * weight.shape[1]
        if source == "xavier":
            gen = torch.Generator().manual_seed(seed)
            new = torch.randn(tuple(weight.shape), generator=gen) * _xavier_std(weight)
            label = "xavier-normal"
        else:
            src = explicit[name] if explicit is not None else None
            if src is None:
                src, reason = _resolve_auto(sources, name, k)
                if src is None:
                    report.skipped.append((name, reason))
                    continue
            new = src.draw(n, k, seed).reshape(weight.shape)
            label = src.describe()
        with torch.no_grad():
            weight.copy_(new.to(device=weight.device, dtype=weight.dtype))
            if include_bias and module.bias is not None:
                module.bias.zero_()
        report.layers.append(LayerInit(name, kind, k, n, source, label))
    return report
