"""Convolution as im2col + one matrix product, for many nets trained at once.

Under ``torch.func.vmap`` over stacked parameters (``dwp.batched``), PyTorch lowers a
convolution to one *grouped* convolution over all nets. cuDNN and oneDNN run grouped
convolutions with many large groups far below the speed of the same work as matrix products.
Written as im2col + matmul, the same convolution becomes, under vmap, one ``unfold`` over all
nets' images and one *batched* matrix product (``bmm``: one GEMM per net, M = B * H_out * W_out,
K = C_in * k * k, N = C_out), which cuBLAS runs near peak for the paper's source nets
(M = 256 * 49, K = 6400, N = 512 for the 256 -> 512 5x5 layer).

A convolution with one input channel per net (the first layer of a grey-image net) is the worst
case of the grouped form: on CUDA, PyTorch runs a grouped convolution with one input channel
per group with its generic depthwise kernels, which took 57% of a 10-net source step on an H100
(``benchmarks/profile_source_step.py``, 2026-11-28). As im2col + matmul that layer is small
and needs no input gradient. Implementations (``conv_impl``):

- ``"native"``: ``F.conv2d`` everywhere;
- ``"unfold"``: every plain convolution as im2col + matmul;
- ``"mixed"``: only convolutions with one input channel as im2col + matmul;
- ``"auto"``: ``"mixed"`` on CUDA, ``"native"`` elsewhere (see :func:`resolve_conv_impl`).

im2col is taken as strided windows of the input (``Tensor.unfold``: a view, then one copy), not
``F.unfold``, whose CUDA kernel is launched once per image.

:func:`conv2d_unfold` is the function, :class:`UnfoldConv2d` an ``nn.Conv2d`` that uses it
(same parameters, same state dict), :func:`use_unfold_convs_` switches a module's plain
convolutions to it. Results equal ``F.conv2d`` up to float rounding
(``tests/test_convimpl.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CONV_IMPLS = ("native", "unfold", "mixed", "auto")


def resolve_conv_impl(conv_impl: str, device: torch.device | str) -> str:
    """The implementation ``conv_impl`` means on ``device``: ``"auto"`` becomes ``"mixed"`` on
    CUDA and ``"native"`` elsewhere; the others are returned as they are."""
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"unknown convolution implementation {conv_impl!r}: use one of "
                         f"{', '.join(CONV_IMPLS)}")
    if conv_impl == "auto":
        return "mixed" if torch.device(device).type == "cuda" else "native"
    return conv_impl


def _out_size(size: int, k: int, stride: int, pad: int, dil: int) -> int:
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def im2col(
    x: torch.Tensor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """The patches of a zero-padded convolution's input, one row per output position.

    x (B, C, H, W) -> (cols (B * H' * W', C * kh * kw), (B, H', W')). Row order is (b, i, j),
    column order (c, di, dj), the order of a weight (O, C, kh, kw) flattened to (O, C kh kw).
    """
    b, c, h, w = x.shape
    kh, kw = kernel_size
    ho = _out_size(h, kh, stride[0], padding[0], dilation[0])
    wo = _out_size(w, kw, stride[1], padding[1], dilation[1])
    if padding[0] or padding[1]:
        x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    # strided windows: (B, C, H', W', span_h, span_w), a view; every dilation-th entry of a span
    win = x.unfold(2, dilation[0] * (kh - 1) + 1, stride[0])
    win = win.unfold(3, dilation[1] * (kw - 1) + 1, stride[1])
    if dilation[0] > 1 or dilation[1] > 1:
        win = win[..., :: dilation[0], :: dilation[1]]
    cols = win.permute(0, 2, 3, 1, 4, 5).reshape(b * ho * wo, c * kh * kw)
    return cols, (b, ho, wo)


def col2out(out: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Rows of :func:`im2col` times a weight, (B * H' * W', O), as a (B, O, H', W') output (a
    channels-last view, memory order B, H', W', O)."""
    b, ho, wo = shape
    return out.reshape(b, ho, wo, out.shape[-1]).permute(0, 3, 1, 2)


def conv2d_unfold(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
) -> torch.Tensor:
    """``F.conv2d`` (groups = 1, zero padding) as im2col + one matrix product.

    x (B, C, H, W), weight (O, C, kh, kw), bias (O,) or None -> (B, O, H', W'). The output is a
    channels-last view (memory order B, H', W', O), which pooling and pointwise layers take as
    is.
    """
    o = weight.shape[0]
    cols, shape = im2col(x, tuple(weight.shape[-2:]), stride, padding, dilation)
    w2 = weight.reshape(o, -1).t()
    out = cols @ w2 if bias is None else torch.addmm(bias, cols, w2)  # (B L, O)
    return col2out(out, shape)


class UnfoldConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` computed by :func:`conv2d_unfold` (same parameters and state dict).

    Grouped, string-padded or non-zero-padded convolutions fall back to ``F.conv2d``.
    """

    def _conv_forward(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if self.groups != 1 or isinstance(self.padding, str) or self.padding_mode != "zeros":
            return super()._conv_forward(input, weight, bias)
        return conv2d_unfold(input, weight, bias, self.stride, self.padding, self.dilation)


def use_unfold_convs_(module: nn.Module, single_channel_only: bool = False) -> nn.Module:
    """Switch the plain ``nn.Conv2d`` layers of ``module`` to :class:`UnfoldConv2d`, in place:
    all of them, or with ``single_channel_only`` those with one input channel.

    Parameters, buffers and names are unchanged (only the class of those submodules is), so
    state dicts and ``torch.func.functional_call`` work as before. Returns ``module``.
    """
    for m in module.modules():
        if type(m) is nn.Conv2d and (not single_channel_only or m.in_channels == 1):
            m.__class__ = UnfoldConv2d
    return module
