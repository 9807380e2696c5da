"""Convolution as im2col + one matrix product, for many nets trained at once.

Under ``torch.func.vmap`` over stacked parameters (``dwp.batched``), PyTorch lowers a
convolution to one *grouped* convolution over all nets. cuDNN and oneDNN run grouped
convolutions with many large groups far below the speed of the same work as matrix products.
Written as im2col + matmul, the same convolution becomes, under vmap, one ``unfold`` over all
nets' images and one *batched* matrix product (``bmm``: one GEMM per net, M = B * H_out * W_out,
K = C_in * k * k, N = C_out), which cuBLAS runs near peak for the paper's source nets
(M = 256 * 49, K = 6400, N = 512 for the 256 -> 512 5x5 layer).

:func:`conv2d_unfold` is the function, :class:`UnfoldConv2d` an ``nn.Conv2d`` that uses it
(same parameters, same state dict), :func:`use_unfold_convs_` switches a module's plain
convolutions to it. Results equal ``F.conv2d`` up to float rounding
(``tests/test_convimpl.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CONV_IMPLS = ("native", "unfold")


def _out_size(size: int, k: int, stride: int, pad: int, dil: int) -> int:
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


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
    b, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    ho = _out_size(h, kh, stride[0], padding[0], dilation[0])
    wo = _out_size(w, kw, stride[1], padding[1], dilation[1])
    cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)
    cols = cols.transpose(1, 2).reshape(b * ho * wo, c * kh * kw)  # (B L, C k k)
    w2 = weight.reshape(o, c * kh * kw).t()
    out = cols @ w2 if bias is None else torch.addmm(bias, cols, w2)  # (B L, O)
    return out.reshape(b, ho, wo, o).permute(0, 3, 1, 2)


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


def use_unfold_convs_(module: nn.Module) -> nn.Module:
    """Switch every plain ``nn.Conv2d`` in ``module`` to :class:`UnfoldConv2d`, in place.

    Parameters, buffers and names are unchanged (only the class of those submodules is), so
    state dicts and ``torch.func.functional_call`` work as before. Returns ``module``.
    """
    for m in module.modules():
        if type(m) is nn.Conv2d:
            m.__class__ = UnfoldConv2d
    return module
