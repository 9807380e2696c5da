"""The paper's CNN architectures (Atanov et al., 2019, Appendix G/H), width-scalable.

Module names follow the paper's PyTorch printouts (Appendix H.2/H.3) exactly, so state-dict
keys read ``features.conv1.weight``, ``classifier.weight`` and so on. All activations are
``LeakyReLU(0.01)``; all convolutions are unpadded with stride 1.

- :class:`FConvMNIST` (28x28 grey images): conv 7x7 -> LReLU -> maxpool 2 -> conv 5x5 -> LReLU
  -> maxpool 2 -> flatten -> linear. Target widths (32, 128): 115,658 parameters; source widths
  (256, 512): linear 4608 -> 10.
- :class:`CIFARSourceNet` (32x32 colour images, CIFAR-100 source): four convs with BatchNorm,
  then linear 512 -> 512 -> BN1d -> LReLU -> linear 512 -> classes.
- :class:`CIFARNet` (CIFAR-10 target): three convs, linear 6400 -> 512 -> 10: 5,759,498
  parameters.

Every conv width is scalable: pass explicit ``widths`` or a ``width_factor`` k that multiplies
the paper's widths (rounded, at least 1 channel), as the random-feature experiment needs.

The feature stacks list their layers in the paper's order (LReLU, then max-pool) but compute a
LeakyReLU followed by a max-pool as max-pool, then LeakyReLU (:class:`PoolFirstSequential`):
the two commute, as LeakyReLU is non-decreasing, so the output is the same to the bit, and the
activation runs on a quarter of the elements.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from dwp.runtime import DwpError

LEAK = 0.01

FCONV_TARGET_WIDTHS = (32, 128)
FCONV_SOURCE_WIDTHS = (256, 512)
CIFAR_SOURCE_WIDTHS = (128, 256, 256, 512)
CIFAR_TARGET_WIDTHS = (128, 256, 256)


def scale_widths(
    widths: Sequence[int], width_factor: float = 1.0, expected: int | None = None
) -> tuple[int, ...]:
    """Return ``widths`` multiplied by ``width_factor``, rounded, each at least 1.

    Raises ``DwpError`` for a wrong number of widths or non-positive values.
    """
    widths = tuple(int(w) for w in widths)
    if expected is not None and len(widths) != expected:
        raise DwpError(f"expected {expected} conv widths, got {len(widths)}: {widths}")
    if any(w < 1 for w in widths):
        raise DwpError(f"conv widths must be positive, got {widths}")
    if not width_factor > 0:
        raise DwpError(f"width factor must be positive, got {width_factor}")
    return tuple(max(1, round(w * width_factor)) for w in widths)


def _lrelu() -> nn.LeakyReLU:
    return nn.LeakyReLU(LEAK)


class PoolFirstSequential(nn.Sequential):
    """An ``nn.Sequential`` that runs each LeakyReLU directly followed by a MaxPool2d as the
    pool first, then the LeakyReLU.

    Max-pooling commutes with any non-decreasing element-wise function, so for a LeakyReLU with
    a non-negative slope ``maxpool(lrelu(x)) == lrelu(maxpool(x))`` exactly (floating-point
    rounding is monotone too), and the gradients agree (``tests/test_source_nets.py``). Pooling
    first applies the activation, forward and backward, to a quarter of the elements; after the
    source nets' first convolution, their largest activation. On CPU-2 the paper's order took
    0.97-1.15x the time of an Adam step of source nets, the most for narrow batched nets
    (BENCHMARKS.md, "Pool before LeakyReLU"). Module names, order and
    state dict are those of a plain ``nn.Sequential``: only ``forward`` differs.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x -> the layers applied in order (LeakyReLU + MaxPool2d pairs commuted)."""
        layers = list(self)
        i = 0
        while i < len(layers):
            layer = layers[i]
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            if (isinstance(layer, nn.LeakyReLU) and isinstance(nxt, nn.MaxPool2d)
                    and layer.negative_slope >= 0 and not nxt.return_indices):
                x = layer(nxt(x))
                i += 2
            else:
                x = layer(x)
                i += 1
        return x


class FConvMNIST(nn.Module):
    """The paper's MNIST / notMNIST net. Input (N, in_channels, 28, 28) -> logits (N, classes).

    Parameters
    ----------
    widths:
        Output channels of conv1 (7x7) and conv2 (5x5); (32, 128) target, (256, 512) source.
    in_channels, num_classes, image_size:
        Input channels, number of classes and input side length (28 for MNIST).
    width_factor:
        Multiplies ``widths`` (rounded, at least 1 channel).
    """

    def __init__(
        self,
        widths: Sequence[int] = FCONV_TARGET_WIDTHS,
        in_channels: int = 1,
        num_classes: int = 10,
        width_factor: float = 1.0,
        image_size: int = 28,
    ) -> None:
        super().__init__()
        w1, w2 = scale_widths(widths, width_factor, expected=2)
        side = ((image_size - 6) // 2 - 4) // 2
        if side < 1:
            raise DwpError(f"image size {image_size} is too small for FConvMNIST (needs >= 16)")
        self.widths = (w1, w2)
        self.features = PoolFirstSequential(
            OrderedDict(
                conv1=nn.Conv2d(in_channels, w1, 7),
                relu1=_lrelu(),
                mp1=nn.MaxPool2d(2),
                conv2=nn.Conv2d(w1, w2, 5),
                relu2=_lrelu(),
                mp2=nn.MaxPool2d(2),
                flatten=nn.Flatten(),
            )
        )
        self.classifier = nn.Linear(w2 * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) -> logits (N, num_classes)."""
        return self.classifier(self.features(x))


class CIFARSourceNet(nn.Module):
    """The paper's CIFAR-100 source net (Appendix H.3, printed there as ``CIFARNet``).

    conv 7x7 (3->128) BN LReLU maxpool, conv 5x5 (->256) BN LReLU, conv 5x5 (->256) BN LReLU,
    conv 5x5 (->512) BN LReLU, flatten, linear (->512) BN1d LReLU, linear (->classes).
    Input (N, 3, 32, 32) -> logits (N, num_classes).
    """

    def __init__(
        self,
        widths: Sequence[int] = CIFAR_SOURCE_WIDTHS,
        in_channels: int = 3,
        num_classes: int = 100,
        width_factor: float = 1.0,
        hidden: int = 512,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        w1, w2, w3, w4 = scale_widths(widths, width_factor, expected=4)
        side = (image_size - 6) // 2 - 12
        if side < 1:
            raise DwpError(f"image size {image_size} is too small for CIFARSourceNet (needs >= 28)")
        self.widths = (w1, w2, w3, w4)
        self.features = PoolFirstSequential(
            OrderedDict(
                conv1=nn.Conv2d(in_channels, w1, 7),
                bn1=nn.BatchNorm2d(w1),
                relu1=_lrelu(),
                maxpool=nn.MaxPool2d(2),
                conv2=nn.Conv2d(w1, w2, 5),
                bn2=nn.BatchNorm2d(w2),
                relu2=_lrelu(),
                conv3=nn.Conv2d(w2, w3, 5),
                bn3=nn.BatchNorm2d(w3),
                relu3=_lrelu(),
                conv4=nn.Conv2d(w3, w4, 5),
                bn4=nn.BatchNorm2d(w4),
                relu4=_lrelu(),
                flatten=nn.Flatten(),
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(w4 * side * side, hidden),
                bn1=nn.BatchNorm1d(hidden),
                relu1=_lrelu(),
                linear=nn.Linear(hidden, num_classes),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) -> logits (N, num_classes)."""
        return self.classifier(self.features(x))


class CIFARNet(nn.Module):
    """The paper's CIFAR-10 target net (Appendix H.3, printed there as ``CIFARNetNew``).

    conv 7x7 (3->128) LReLU maxpool, conv 5x5 (->256) LReLU, conv 5x5 (->256) LReLU, flatten,
    linear (6400->512) LReLU, linear (->classes). Input (N, 3, 32, 32) -> logits (N, classes).
    """

    def __init__(
        self,
        widths: Sequence[int] = CIFAR_TARGET_WIDTHS,
        in_channels: int = 3,
        num_classes: int = 10,
        width_factor: float = 1.0,
        hidden: int = 512,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        w1, w2, w3 = scale_widths(widths, width_factor, expected=3)
        side = (image_size - 6) // 2 - 8
        if side < 1:
            raise DwpError(f"image size {image_size} is too small for CIFARNet (needs >= 24)")
        self.widths = (w1, w2, w3)
        self.features = PoolFirstSequential(
            OrderedDict(
                conv1=nn.Conv2d(in_channels, w1, 7),
                relu1=_lrelu(),
                maxpool=nn.MaxPool2d(2),
                conv2=nn.Conv2d(w1, w2, 5),
                relu2=_lrelu(),
                conv3=nn.Conv2d(w2, w3, 5),
                relu3=_lrelu(),
                flatten=nn.Flatten(),
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(w3 * side * side, hidden),
                relu1=_lrelu(),
                linear=nn.Linear(hidden, num_classes),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) -> logits (N, num_classes)."""
        return self.classifier(self.features(x))


def xavier_init_(module: nn.Module) -> nn.Module:
    """The paper code's default init: Xavier-normal weights for every Conv2d and Linear.

    Biases and BatchNorm parameters keep PyTorch's defaults. Returns ``module``.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(m.weight)
    return module


ARCHS = {"fconv": FConvMNIST, "cifar-source": CIFARSourceNet, "cifar": CIFARNet}


def _arch_class(arch: str) -> type[nn.Module]:
    """The class of an architecture name; ``DwpError`` for an unknown one."""
    if arch not in ARCHS:
        raise DwpError(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHS)}")
    return ARCHS[arch]


def default_widths(arch: str) -> tuple[int, ...]:
    """The conv widths an architecture takes when none are given (its ``widths`` default)."""
    return tuple(inspect.signature(_arch_class(arch)).parameters["widths"].default)


def build_net(
    arch: str,
    widths: Sequence[int] | None = None,
    in_channels: int | None = None,
    num_classes: int | None = None,
    width_factor: float = 1.0,
) -> nn.Module:
    """Build an architecture by name (``fconv``, ``cifar-source``, ``cifar``).

    ``None`` arguments take the architecture's defaults. Raises ``DwpError`` for an unknown name.
    """
    cls = _arch_class(arch)
    kw: dict = {"width_factor": width_factor}
    if widths is not None:
        kw["widths"] = tuple(widths)
    if in_channels is not None:
        kw["in_channels"] = in_channels
    if num_classes is not None:
        kw["num_classes"] = num_classes
    return cls(**kw)


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())
