"""Source nets: architectures, batched training == one-by-one training, resume, CLI."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from dwp import batched as batched_mod
from dwp.batched import (
    BatchedModel,
    BatchedTrainer,
    auto_chunk_size,
    build_seeded,
    epoch_orders,
    evaluate_accuracy,
    linear_decay_lr,
    predict_logits,
)
from dwp.commands.source import parse_widths
from dwp.nets import CIFARNet, CIFARSourceNet, FConvMNIST, count_parameters, xavier_init_
from dwp.runtime import DwpError
from dwp.sourcenets import SourceConfig, load_source_model, train_source_nets


# -- architectures -----------------------------------------------------------------------------
def test_parameter_counts_match_the_paper():
    assert count_parameters(FConvMNIST()) == 115_658
    assert count_parameters(CIFARNet()) == 5_759_498
    source = FConvMNIST((256, 512))
    assert (source.classifier.in_features, source.classifier.out_features) == (4608, 10)
    assert CIFARSourceNet().classifier.fc1.in_features == 512


def test_module_names_follow_the_paper():
    names = [n for n, _ in FConvMNIST().features.named_children()]
    assert names == ["conv1", "relu1", "mp1", "conv2", "relu2", "mp2", "flatten"]
    src = CIFARSourceNet(width_factor=0.05)
    assert [n for n, _ in src.classifier.named_children()] == ["fc1", "bn1", "relu1", "linear"]
    assert isinstance(src.features.bn4, torch.nn.BatchNorm2d)
    assert FConvMNIST().features.relu1.negative_slope == 0.01


@pytest.mark.parametrize("factory", [
    lambda: FConvMNIST((6, 8)),
    lambda: CIFARSourceNet(width_factor=0.05, num_classes=7, hidden=8),
    lambda: CIFARNet(width_factor=0.05),
])
def test_pool_first_features_equal_the_paper_order(factory):
    """The feature stacks pool before their LeakyReLU; a plain nn.Sequential of the same
    layers (the paper's order) gives the same output to the bit and the same gradients."""
    torch.manual_seed(0)
    net = factory()
    plain = torch.nn.Sequential(*net.features)  # same modules, plain order
    assert type(net.features) is not torch.nn.Sequential
    side = 28 if isinstance(net, FConvMNIST) else 32
    x = torch.randn(4, net.features.conv1.in_channels, side, side)
    outs, grads = [], []
    for stack in (net.features, plain):
        net.zero_grad()
        out = stack(x)
        (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
        outs.append(out.detach())
        grads.append([p.grad.clone() for p in net.features.parameters()])
    assert torch.equal(outs[0], outs[1])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_pool_first_leaves_non_monotone_activations_in_order():
    """A LeakyReLU with a negative slope does not commute with max-pooling: kept in order."""
    from dwp.nets import PoolFirstSequential

    torch.manual_seed(0)
    layers = [torch.nn.LeakyReLU(-0.5), torch.nn.MaxPool2d(2)]
    x = torch.randn(2, 3, 8, 8)
    want = torch.nn.Sequential(*layers)(x)
    assert not torch.equal(want, layers[0](layers[1](x)))  # swapping would change the output
    assert torch.equal(PoolFirstSequential(*layers)(x), want)
    out, idx = PoolFirstSequential(torch.nn.LeakyReLU(0.01),
                                   torch.nn.MaxPool2d(2, return_indices=True))(x)
    assert idx.shape == out.shape


def test_width_factor_scales_convs_and_keeps_one_channel():
    assert FConvMNIST(width_factor=0.5).widths == (16, 64)
    assert FConvMNIST(width_factor=1e-3).widths == (1, 1)
    net = CIFARNet(width_factor=0.25)
    assert net.widths == (32, 64, 64)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert CIFARSourceNet(width_factor=0.1)(torch.zeros(2, 3, 32, 32)).shape == (2, 100)
    with pytest.raises(DwpError):
        FConvMNIST(widths=(8, 8, 8))


# -- batched training equals one-by-one training ----------------------------------------------
def _reference_train(factory, seed, x, y, epochs, batch_size, lr, l2):
    """Plain PyTorch: one nn.Module, torch.optim.Adam, l2 on features.* in the loss."""
    net = build_seeded(factory, seed)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = lr * (1 - epoch / epochs)
        order = epoch_orders([seed], epoch, x.shape[0])[0]
        for start in range(0, x.shape[0], batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad()
            loss = F.cross_entropy(net(x[idx]), y[idx])
            loss = loss + l2 * sum(p.pow(2).sum() for p in net.features.parameters())
            loss.backward()
            opt.step()
    return net


def _feeds_batchnorm(net, bias_key):
    """Whether the layer owning ``bias_key`` is directly followed by a BatchNorm layer."""
    parts = bias_key.split(".")
    if len(parts) < 3:
        return False
    parent, layer = ".".join(parts[:-2]), parts[-2]
    children = list(net.get_submodule(parent).named_children())
    names = [n for n, _ in children]
    pos = names.index(layer)
    return pos + 1 < len(children) and isinstance(
        children[pos + 1][1], (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)
    )


def _fconv_factory():
    return xavier_init_(FConvMNIST((3, 5)))


def _cifar_src_factory():
    return xavier_init_(CIFARSourceNet(width_factor=0.03, num_classes=5, hidden=8))


@pytest.mark.parametrize(
    ("factory", "shape", "classes", "chunk", "conv_impl"),
    [(_fconv_factory, (1, 28, 28), 10, 2, "native"),
     (_cifar_src_factory, (3, 32, 32), 5, None, "native"),
     # chunks of one net take the plain (non-vmap) path on CPU, BatchNorm buffers included
     (_fconv_factory, (1, 28, 28), 10, 1, "native"),
     (_cifar_src_factory, (3, 32, 32), 5, 1, "native"),
     # convolutions as im2col + batched matmul (dwp.convimpl)
     (_fconv_factory, (1, 28, 28), 10, 2, "unfold"),
     (_cifar_src_factory, (3, 32, 32), 5, None, "unfold"),
     # im2col + matmul for the one-input-channel conv1 only (what "auto" picks on CUDA)
     (_fconv_factory, (1, 28, 28), 10, 2, "mixed")],
)
def test_batched_training_equals_one_by_one(factory, shape, classes, chunk, conv_impl):
    torch.manual_seed(0)
    n_ex, batch, epochs, lr, l2 = 40, 16, 2, 3e-3, 1e-3  # 3 steps/epoch, last batch of 8
    x = torch.rand(n_ex, *shape)
    y = torch.randint(0, classes, (n_ex,))
    seeds = [11, 22, 33]
    model = BatchedModel(factory, seeds, conv_impl=conv_impl)
    trainer = BatchedTrainer(model, lr=lr, epochs=epochs, l2=l2, chunk_size=chunk)
    for epoch in range(epochs):
        trainer.train_epoch(x, y, epoch, batch_size=batch)
    for i, seed in enumerate(seeds):
        ref_net = _reference_train(factory, seed, x, y, epochs, batch, lr, l2)
        ref, got = ref_net.state_dict(), model.net(i).state_dict()
        assert set(ref) == set(got)
        # A bias right before BatchNorm has zero loss gradient in exact arithmetic; Adam turns
        # the rounding noise into lr-sized steps, so it (and the running mean it shifts) is
        # compared through the train-mode output, which does not depend on it.
        noisy = {k for k in ref if k.endswith(".bias") and _feeds_batchnorm(ref_net, k)}
        noisy |= {k.replace("conv", "bn").replace("fc1", "bn1").replace("bias", "running_mean")
                  for k in noisy}
        torch.testing.assert_close(model.net(i).train()(x[:8]),
                                   copy.deepcopy(ref_net).train()(x[:8]), rtol=1e-4, atol=1e-4)
        for key, value in ref.items():
            if key in noisy:
                continue
            if value.is_floating_point():
                torch.testing.assert_close(got[key], value, rtol=1e-4, atol=2e-5, msg=key)
            else:
                assert torch.equal(got[key], value), key
    # the nets really moved away from their different initialisations
    assert not torch.allclose(model.net(0).state_dict()["features.conv1.weight"],
                              build_seeded(factory, seeds[0]).features.conv1.weight)


def test_eval_accuracy_and_shared_forward_match_single_nets():
    torch.manual_seed(1)
    model = BatchedModel(_cifar_src_factory, [1, 2])
    x = torch.rand(12, 3, 32, 32)
    y = torch.randint(0, 5, (12,))
    shared = model(x, train=False)
    for i in range(2):
        net = model.net(i).eval()
        torch.testing.assert_close(shared[i], net(x), rtol=1e-4, atol=1e-5)
        expected = (net(x).argmax(1) == y).double().mean()
        assert evaluate_accuracy(model, x, y, batch_size=5)[i].item() == pytest.approx(expected)
    torch.testing.assert_close(predict_logits(model, x, batch_size=5, chunk_size=1), shared)
    assert torch.equal(evaluate_accuracy(model, x, y, 5, chunk_size=1),
                       evaluate_accuracy(model, x, y))


def test_epoch_orders_are_permutations_depending_on_seed_and_epoch():
    a = epoch_orders([1, 2], 0, 50)
    assert sorted(a[0].tolist()) == list(range(50))
    assert not torch.equal(a[0], a[1])
    assert torch.equal(a, epoch_orders([1, 2], 0, 50))
    assert not torch.equal(a, epoch_orders([1, 2], 1, 50))
    assert linear_decay_lr(1e-3, 0, 10) == 1e-3 and linear_decay_lr(1e-3, 5, 10) == 5e-4


def test_auto_chunk_keeps_activations_under_32bit_index_limit(monkeypatch):
    import dwp.batched as batched

    x = torch.rand(8, 1, 28, 28)
    model = BatchedModel(_fconv_factory, list(range(6)))
    # The largest activation of one net: conv1's output, batch 8 x 3 channels x 22 x 22.
    largest = 8 * 3 * 22 * 22
    monkeypatch.setattr(batched, "MAX_TENSOR_ELEMENTS", 2 * largest + 5)
    assert auto_chunk_size(model, x) == 2
    monkeypatch.setattr(batched, "MAX_TENSOR_ELEMENTS", largest - 1)
    assert auto_chunk_size(model, x) == 1  # never below one net


@pytest.mark.parametrize("message", [
    "CUDA out of memory. Tried to allocate 1 GiB",
    "Expected canUse32BitIndexMath(input) && canUse32BitIndexMath(output) to be true",
])
def test_auto_chunk_and_oom_fallback_keep_results(monkeypatch, message):
    torch.manual_seed(2)
    x = torch.rand(4, 8, 1, 28, 28)
    y = torch.randint(0, 10, (4, 8))
    model = BatchedModel(_fconv_factory, [0, 1, 2, 3])
    assert 1 <= auto_chunk_size(model, x[0]) <= 4
    ref = BatchedModel(_fconv_factory, [0, 1, 2, 3])
    BatchedTrainer(ref, chunk_size=None).step(x, y)

    trainer = BatchedTrainer(model, chunk_size=4)
    real = trainer._grads_for_chunks
    calls = []

    def flaky(xx, yy, chunk):
        calls.append(chunk)
        if chunk > 1:
            raise RuntimeError(message)
        return real(xx, yy, chunk)

    monkeypatch.setattr(trainer, "_grads_for_chunks", flaky)
    trainer.step(x, y)
    assert calls == [4, 2, 1] and trainer.chunk_size == 1
    for k in ref.params:
        torch.testing.assert_close(model.params[k], ref.params[k], rtol=1e-5, atol=1e-6)


def test_trainer_state_dict_roundtrip():
    x = torch.rand(2, 8, 1, 28, 28)
    y = torch.randint(0, 10, (2, 8))
    a = BatchedModel(_fconv_factory, [5, 6])
    ta = BatchedTrainer(a, chunk_size=None)
    ta.step(x, y)
    b = BatchedModel(_fconv_factory, [7, 8])
    tb = BatchedTrainer(b, chunk_size=None)
    tb.load_state_dict(ta.state_dict())
    ta.step(x, y)
    tb.step(x, y)
    for k in a.params:
        torch.testing.assert_close(a.params[k], b.params[k])
    with pytest.raises(DwpError):
        BatchedModel(_fconv_factory, []).n  # noqa: B018


def test_bf16_autocast_trains_close_to_fp32_with_float32_master_weights():
    """bf16 changes the arithmetic of forward/backward only: same data order and init, the nets
    end near the fp32 ones (bf16 has ~3 significant digits), parameters and Adam stay fp32."""
    torch.manual_seed(0)
    x, y = torch.rand(48, 1, 28, 28), torch.randint(0, 10, (48,))
    out = {}
    for precision in ("fp32", "bf16"):
        model = BatchedModel(_fconv_factory, [5, 6])
        trainer = BatchedTrainer(model, lr=3e-3, epochs=2, l2=1e-3, precision=precision)
        losses = [trainer.train_epoch(x, y, e, batch_size=16)["loss"] for e in range(2)]
        assert all(p.dtype == torch.float32 for p in model.params.values())
        out[precision] = (model.net(0).state_dict(), losses)
    start = build_seeded(_fconv_factory, 5).state_dict()
    ref, got = out["fp32"][0], out["bf16"][0]
    for key, value in ref.items():
        moved = (value - start[key]).abs().max()
        assert (got[key] - value).abs().max() < 0.25 * moved + 1e-3, key
    assert torch.allclose(torch.tensor(out["bf16"][1]), torch.tensor(out["fp32"][1]), rtol=0.05)
    with pytest.raises(DwpError, match="precision"):
        BatchedTrainer(model, precision="fp16")
    with pytest.raises(DwpError, match="precision"):
        SourceConfig(precision="half").resolved()
    assert "precision" not in SourceConfig().record()  # fp32 runs made before the flag resume
    assert SourceConfig(precision="bf16").record()["precision"] == "bf16"


def test_chunk_size_validation():
    model = BatchedModel(_fconv_factory, [0])
    with pytest.raises(DwpError):
        BatchedTrainer(model, chunk_size="half")
    with pytest.raises(DwpError):
        BatchedTrainer(model, chunk_size=0)


# -- the source-run command: resume, outputs, CLI -----------------------------------------------
def _cfg(data_root, **kw):
    base = dict(dataset="notmnist", widths=[3, 4], nets=2, epochs=3, batch_size=50,
                train_examples=100, data_root=str(data_root), device="cpu", progress=False,
                chunk_size="1")
    base.update(kw)
    return SourceConfig(**base)


def test_resume_after_interrupted_epoch_equals_uninterrupted(tmp_path, data_root):
    full = train_source_nets(_cfg(data_root), tmp_path / "full")

    class Crash(Exception):
        pass

    def crash(epoch, step):
        if epoch == 1 and step == 1:
            raise Crash

    with pytest.raises(Crash):
        train_source_nets(_cfg(data_root), tmp_path / "resumed", on_step=crash)
    assert (tmp_path / "resumed" / "checkpoint.safetensors").exists()
    assert not (tmp_path / "resumed" / "nets.json").exists()
    resumed = train_source_nets(_cfg(data_root), tmp_path / "resumed")

    a = load_file(str(tmp_path / "full" / "nets.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "nets.safetensors"))
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    assert resumed["heldout_acc"] == pytest.approx(full["heldout_acc"])
    rows = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").open()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert not (tmp_path / "resumed" / "checkpoint.safetensors").exists()
    meta = json.loads((tmp_path / "full" / "nets.json").read_text())
    assert len(meta["heldout_acc"]) == 2 and meta["widths"] == [3, 4]
    model = load_source_model(tmp_path / "full")
    assert model.n == 2 and model.params["features.conv1.weight"].shape == (2, 3, 1, 7, 7)
    # a finished run is not retrained; a different config is refused
    assert train_source_nets(_cfg(data_root), tmp_path / "full") == full
    with pytest.raises(DwpError, match="different config"):
        train_source_nets(_cfg(data_root, l2=0.5), tmp_path / "full")


def test_cli_train_source_takes_widths_as_several_values(tmp_path, data_root, capsys):
    from dwp.cli import main

    out = tmp_path / "run"
    code = main(["train-source", "--widths", "2", "3", "--nets", "2", "--epochs", "1",
                 "--train-examples", "50", "--batch-size", "25", "--data-root", str(data_root),
                 "--device", "cpu", "--no-progress", "--conv-impl", "unfold", "--out", str(out)])
    assert code == 0
    assert json.loads((out / "nets.json").read_text())["widths"] == [2, 3]
    assert json.loads((out / "config.json").read_text())["config"]["conv_impl"] == "unfold"
    assert "held-out accuracy" in capsys.readouterr().out


def test_parse_widths_and_bad_config():
    assert parse_widths("256", ["512"]) == [256, 512]
    assert parse_widths("256,512", []) == [256, 512]
    assert parse_widths(None, []) is None
    with pytest.raises(DwpError):
        parse_widths("a", [])
    with pytest.raises(DwpError):
        parse_widths(None, ["stray"])
    with pytest.raises(DwpError, match="unknown source dataset"):
        SourceConfig(dataset="svhn").resolved()
    with pytest.raises(DwpError, match="chunk-size"):
        SourceConfig(chunk_size="many").resolved()
    with pytest.raises(DwpError, match="conv-impl must be one of native, unfold, mixed, auto"):
        SourceConfig(conv_impl="winograd").resolved()
    with pytest.raises(DwpError, match="expected 2 conv widths"):  # before any folder is made
        SourceConfig(widths=[8]).resolved()
    with pytest.raises(DwpError, match="unknown architecture"):
        SourceConfig(arch="resnet").resolved()
    # widths default to the dataset's source net, or to another architecture's own widths
    assert SourceConfig(dataset="cifar100").resolved().widths == [128, 256, 256, 512]
    assert SourceConfig(dataset="cifar10", arch="cifar").resolved().widths == [128, 256, 256]
    assert SourceConfig(dataset="notmnist").resolved().widths == [256, 512]
    with pytest.raises(DwpError, match="unknown convolution implementation"):
        BatchedModel(_fconv_factory, [0], conv_impl="winograd")


def test_module_docs_name_the_l2_convention():
    assert "added to the loss" in batched_mod.__doc__


def test_shift_images_translates_with_zero_fill():
    from dwp.batched import shift_images

    x = torch.arange(2 * 2 * 5 * 6, dtype=torch.float64).reshape(2, 2, 5, 6) + 1
    shifts = torch.tensor([[1, -2], [0, 0]])
    out = shift_images(x, shifts)
    ref = torch.zeros_like(x[0])
    ref[:, 1:, :4] = x[0, :, :4, 2:]  # out[i, j] = x[i - 1, j + 2]
    torch.testing.assert_close(out[0], ref)
    torch.testing.assert_close(out[1], x[1])
    assert shift_images(x, torch.zeros(2, 2, dtype=torch.long)) is x


def test_augmented_nets_train_the_same_together_or_alone():
    """Shifts depend on each net's own seed only, so batching does not change them."""
    from dwp.batched import epoch_shifts

    torch.manual_seed(0)
    x, y = torch.rand(24, 1, 28, 28), torch.randint(0, 10, (24,))
    s = epoch_shifts([5, 6], 0, 24, 2)
    assert s.shape == (2, 24, 2) and s.abs().max() <= 2 and not torch.equal(s[0], s[1])
    torch.testing.assert_close(epoch_shifts([6], 0, 24, 2)[0], s[1])
    together = BatchedModel(_fconv_factory, [5, 6])
    BatchedTrainer(together, lr=3e-3, epochs=1, augment_shift=2).train_epoch(x, y, 0, 8)
    alone = BatchedModel(_fconv_factory, [6])
    BatchedTrainer(alone, lr=3e-3, epochs=1, augment_shift=2).train_epoch(x, y, 0, 8)
    plain = BatchedModel(_fconv_factory, [6])
    BatchedTrainer(plain, lr=3e-3, epochs=1).train_epoch(x, y, 0, 8)
    w = "features.conv1.weight"
    torch.testing.assert_close(together.params[w][1], alone.params[w][0], rtol=1e-4, atol=2e-6)
    assert not torch.allclose(plain.params[w][0], alone.params[w][0], atol=1e-6)
    with pytest.raises(DwpError, match="augment"):
        SourceConfig(augment_shift=-1).resolved()
