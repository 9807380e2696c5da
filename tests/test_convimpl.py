"""dwp.convimpl: convolution as im2col + matmul, against F.conv2d."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import vmap

from dwp.convimpl import UnfoldConv2d, conv2d_unfold, resolve_conv_impl, use_unfold_convs_
from dwp.nets import FConvMNIST

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("stride", "padding", "dilation", "bias"),
    [((1, 1), (0, 0), (1, 1), True), ((2, 1), (1, 2), (1, 1), False),
     ((1, 2), (2, 1), (2, 1), True)],
)
def test_equals_conv2d_with_gradients(stride, padding, dilation, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 11, 9, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(5, 4, 3, 5, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, generator=g, requires_grad=True) if bias else None
    inputs = [t for t in (x, w, b) if t is not None]
    got = conv2d_unfold(x, w, b, stride, padding, dilation)
    ref = F.conv2d(x, w, b, stride, padding, dilation)
    torch.testing.assert_close(got, ref)
    upstream = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    g_got = torch.autograd.grad((got * upstream).sum(), inputs)
    g_ref = torch.autograd.grad((ref * upstream).sum(), inputs)
    for a, r in zip(g_got, g_ref, strict=True):
        torch.testing.assert_close(a, r)


def test_under_vmap_each_net_gets_its_own_kernels():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 2, 3, 10, 10, dtype=torch.float64, generator=g)  # 4 nets, batch 2
    w = torch.randn(4, 6, 3, 5, 5, dtype=torch.float64, generator=g)
    b = torch.randn(4, 6, dtype=torch.float64, generator=g)
    got = vmap(conv2d_unfold)(x, w, b)
    for i in range(4):
        torch.testing.assert_close(got[i], F.conv2d(x[i], w[i], b[i]))


def test_module_swap_keeps_parameters_and_outputs():
    torch.manual_seed(0)
    net = FConvMNIST((3, 4)).double()
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    before = net(x)
    keys = list(net.state_dict())
    use_unfold_convs_(net)
    assert isinstance(net.features.conv1, UnfoldConv2d)
    assert isinstance(net.features.conv2, UnfoldConv2d)
    assert list(net.state_dict()) == keys
    torch.testing.assert_close(net(x), before)


def test_grouped_and_padded_modes_fall_back_to_conv2d():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    for conv in (nn.Conv2d(4, 6, 3, groups=2), nn.Conv2d(4, 6, 3, padding="same"),
                 nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect")):
        conv = conv.double()
        ref = conv(x)
        use_unfold_convs_(conv)
        assert isinstance(conv, UnfoldConv2d)
        torch.testing.assert_close(conv(x), ref)


def test_single_channel_only_swaps_just_the_first_layer_and_auto_resolves_by_device():
    torch.manual_seed(0)
    net = FConvMNIST((3, 4)).double()
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    before = net(x)
    use_unfold_convs_(net, single_channel_only=True)
    assert isinstance(net.features.conv1, UnfoldConv2d)
    assert type(net.features.conv2) is nn.Conv2d
    torch.testing.assert_close(net(x), before)
    assert resolve_conv_impl("auto", "cuda") == "mixed"
    assert resolve_conv_impl("auto", torch.device("cpu")) == "native"
    assert resolve_conv_impl("unfold", "cuda") == "unfold"
    with pytest.raises(ValueError, match="unknown convolution implementation 'x'"):
        resolve_conv_impl("x", "cpu")


def test_input_without_gradient_gives_the_weight_gradient_of_conv2d():
    """The first layer's case: data in, only the kernels need a gradient."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64, generator=g)
    w = torch.randn(7, 1, 7, 7, dtype=torch.float64, generator=g, requires_grad=True)
    up = torch.randn(3, 7, 22, 22, dtype=torch.float64, generator=g)
    (g_got,) = torch.autograd.grad((conv2d_unfold(x, w) * up).sum(), w)
    (g_ref,) = torch.autograd.grad((F.conv2d(x, w) * up).sum(), w)
    torch.testing.assert_close(g_got, g_ref)
