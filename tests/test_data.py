"""Data loaders on the real shared datasets, and every bad-input case on corrupted copies."""

from __future__ import annotations

import gzip
import shutil
import struct

import numpy as np
import pytest
import torch

from dwp.cli import main
from dwp.data import (
    class_balanced_subset,
    load_dataset,
    read_idx,
    resolve_data_root,
    stratified_split,
)
from dwp.runtime import DwpError

MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.fixture(scope="module")
def mnist(data_root):
    return load_dataset("mnist", "train", data_root), load_dataset("mnist", "test", data_root)


def test_mnist_counts_and_convention(mnist):
    train, test = mnist
    assert len(test) == 10_000 and test.class_counts() == MNIST_TEST_COUNTS
    assert len(train) == 60_000 and train.class_counts() == MNIST_TRAIN_COUNTS
    assert train.images.shape == (60_000, 1, 28, 28) and train.images.dtype == torch.float32
    assert train.labels.dtype == torch.int64
    assert 0.0 <= float(train.images.min()) and float(train.images.max()) <= 1.0
    assert float(train.images.max()) == 1.0


def _image_bytes(ds) -> set[bytes]:
    pixels = (ds.images * 255).round().to(torch.uint8).flatten(1).numpy()
    return {bytes(r) for r in pixels}


def test_mnist_train_and_test_share_no_image(mnist):
    train, test = mnist
    train_set, test_set = _image_bytes(train), _image_bytes(test)
    assert len(test_set) == 10_000
    assert not (train_set & test_set)


def test_notmnist_split_disjoint_stratified_deterministic(data_root):
    tr = load_dataset("notmnist", "train", data_root)
    te = load_dataset("notmnist", "test", data_root)
    assert (len(tr), len(te)) == (9_000, 1_000)
    assert tr.class_counts() == [900] * 10 and te.class_counts() == [100] * 10
    labels = read_idx(data_root / "notmnist" / "t10k-labels-idx1-ubyte.gz", "labels")
    tr_idx, te_idx = stratified_split(labels, "train"), stratified_split(labels, "test")
    assert not set(tr_idx.tolist()) & set(te_idx.tolist())
    assert sorted(tr_idx.tolist() + te_idx.tolist()) == list(range(10_000))
    assert torch.equal(tr.labels, torch.from_numpy(labels[tr_idx].astype(np.int64)))
    again = load_dataset("notmnist", "test", data_root)
    assert torch.equal(again.images, te.images) and torch.equal(again.labels, te.labels)


def test_cifar10_test(data_root):
    te = load_dataset("cifar10", "test", data_root)
    assert te.images.shape[1:] == (3, 32, 32)
    assert te.class_counts() == [1000] * 10
    c100 = load_dataset("cifar100", "train", data_root)
    assert c100.num_classes == 100 and c100.images.shape[1:] == (3, 32, 32)


def test_class_balanced_subset_deterministic_and_balanced(mnist):
    train, _ = mnist
    a = class_balanced_subset(train.labels, 50, seed=3)
    b = class_balanced_subset(train.labels, 50, seed=3)
    c = class_balanced_subset(train.labels, 50, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.bincount(train.labels[a], minlength=10).tolist() == [5] * 10
    assert len(set(a.tolist())) == 50
    # Pinned first indices: the same seed gives the same subset on every machine (numpy PCG64).
    rng = np.random.default_rng(3)
    y = train.labels.numpy()
    expected0 = rng.choice(np.flatnonzero(y == 0), size=5, replace=False)
    assert set(expected0.tolist()) <= set(a.tolist())


def test_subset_too_many_per_class_names_count():
    labels = torch.tensor([0] * 5 + [1] * 3)
    with pytest.raises(DwpError, match="class 1 has only 3"):
        class_balanced_subset(labels, 8, seed=0)
    with pytest.raises(DwpError, match="multiple of the 2 classes"):
        class_balanced_subset(labels, 5, seed=0)


# -- bad input ---------------------------------------------------------------------------


def _copy_mnist(data_root, tmp_path):
    dst = tmp_path / "mnist"
    shutil.copytree(data_root / "mnist", dst)
    for p in dst.iterdir():
        p.chmod(0o644)
    return dst


def _write_idx(path, magic, dims, body):
    header = struct.pack(">I" + "I" * len(dims), magic, *dims)
    with gzip.open(path, "wb") as fh:
        fh.write(header + body)


def test_missing_dataset_says_where_and_how(tmp_path):
    with pytest.raises(DwpError) as e:
        load_dataset("mnist", "test", tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "mnist") in msg and "--data-root" in msg
    assert "DWP_DATA_ROOT" in msg and "--download" in msg


def test_unknown_dataset_lists_known(tmp_path):
    with pytest.raises(DwpError, match="known datasets: mnist, notmnist, fashion-mnist"):
        load_dataset("svhn", "train", tmp_path)


def test_bad_gzip(tmp_path, data_root):
    d = _copy_mnist(data_root, tmp_path)
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(b"this is not gzip data at all")
    with pytest.raises(DwpError, match=r"t10k-images-idx3-ubyte.gz is not a valid gzip"):
        load_dataset("mnist", "test", tmp_path)


def test_truncated_gzip(tmp_path, data_root):
    d = _copy_mnist(data_root, tmp_path)
    p = d / "t10k-labels-idx1-ubyte.gz"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DwpError, match="not a valid gzip"):
        load_dataset("mnist", "test", tmp_path)


def test_wrong_magic(tmp_path, data_root):
    d = _copy_mnist(data_root, tmp_path)
    _write_idx(d / "t10k-images-idx3-ubyte.gz", 0x0801, (4, 28, 28), bytes(4 * 784))
    with pytest.raises(DwpError, match="bad IDX magic number 0x00000801"):
        load_dataset("mnist", "test", tmp_path)


def test_header_size_mismatch(tmp_path, data_root):
    d = _copy_mnist(data_root, tmp_path)
    _write_idx(d / "t10k-images-idx3-ubyte.gz", 0x0803, (10, 28, 28), bytes(9 * 784))
    with pytest.raises(DwpError, match=r"header says 10 x 28 x 28 = 7840 bytes.*holds 7056"):
        load_dataset("mnist", "test", tmp_path)


def test_image_label_count_mismatch(tmp_path, data_root):
    d = _copy_mnist(data_root, tmp_path)
    _write_idx(d / "t10k-images-idx3-ubyte.gz", 0x0803, (3, 28, 28), bytes(3 * 784))
    with pytest.raises(DwpError, match="holds 3 images but .* holds 10000 labels"):
        load_dataset("mnist", "test", tmp_path)


def test_plain_idx_roundtrip(tmp_path):
    p = tmp_path / "x-labels-idx1-ubyte"
    p.write_bytes(struct.pack(">II", 0x0801, 3) + bytes([1, 2, 3]))
    assert read_idx(p, "labels").tolist() == [1, 2, 3]


def test_npz_missing_keys(tmp_path):
    (tmp_path / "cifar10").mkdir()
    np.savez(tmp_path / "cifar10" / "test.npz", images=np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(DwpError, match=r"missing keys \['labels'\]"):
        load_dataset("cifar10", "test", tmp_path)


def test_npz_count_mismatch(tmp_path):
    (tmp_path / "cifar10").mkdir()
    np.savez(
        tmp_path / "cifar10" / "test.npz",
        images=np.zeros((2, 32, 32, 3), np.uint8), labels=np.zeros(3, np.int64),
    )
    with pytest.raises(DwpError, match="2 images but 3 labels"):
        load_dataset("cifar10", "test", tmp_path)


def test_data_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("DWP_DATA_ROOT", str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "flag") == tmp_path / "flag"
    assert resolve_data_root(None) == tmp_path / "env"
    monkeypatch.delenv("DWP_DATA_ROOT")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert resolve_data_root(None) == tmp_path / "cache" / "dwp" / "datasets"


def test_cli_data_info(data_root, capsys):
    assert main(["data", "info", "--data-root", str(data_root), "-d", "mnist"]) == 0
    out = capsys.readouterr().out
    assert "/".join(map(str, MNIST_TEST_COUNTS)) in out
    assert "/".join(map(str, MNIST_TRAIN_COUNTS)) in out


def test_cli_data_info_absent(tmp_path, capsys):
    assert main(["data", "info", "--data-root", str(tmp_path), "-d", "cifar10"]) == 0
    out = capsys.readouterr().out
    assert "absent: cifar10 train" in out and "absent: cifar10 test" in out


def test_cli_unknown_dataset_is_one_line_error(capsys):
    assert main(["data", "info", "-d", "svhn"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dwp: error: unknown dataset 'svhn'") and "\n" not in err


def test_torchvision_folder_layout(tmp_path, data_root):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        # torchvision keeps the decompressed files; dwp reads either form.
        (raw / name[:-3]).write_bytes(gzip.decompress((data_root / "mnist" / name).read_bytes()))
    ds = load_dataset("mnist", "test", tmp_path)
    assert ds.source == str(raw) and ds.class_counts() == MNIST_TEST_COUNTS
