"""Datasets as in-memory tensors: MNIST, notMNIST, Fashion-MNIST, CIFAR-10, CIFAR-100.

Convention (every loader): ``images`` float32 of shape (N, C, H, W) with values in [0, 1]
(no normalisation; models normalise if they want to), ``labels`` int64 of shape (N,).

Where data is read from (first match wins):

1. the ``root`` argument (the CLI's ``--data-root``), else
2. the ``DWP_DATA_ROOT`` environment variable, else
3. a per-user cache folder (``$XDG_CACHE_HOME/dwp/datasets``, default ``~/.cache/dwp/datasets``).

Inside the root, accepted layouts per dataset:

- ``mnist/``, ``notmnist/``, ``fashion-mnist/``: IDX files ``{train,t10k}-{images-idx3,labels-idx1}
  -ubyte[.gz]`` (the layout of the project's shared dataset folder);
- torchvision's own folders ``MNIST/raw/``, ``FashionMNIST/raw/``, ``cifar-10-batches-py/``,
  ``cifar-100-python/`` (what ``--download`` writes);
- ``cifar10/{train,test}.npz``, ``cifar100/{train,test}.npz`` with keys ``images`` (N, 32, 32, 3)
  uint8 and ``labels`` int64;
- Fashion-MNIST also from the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist``).

notMNIST has no official train/test split: when only one IDX pool exists (the 10k
``t10k-*`` files), it is split per class with ``numpy.random.default_rng(NOTMNIST_SPLIT_SEED)``
into 90 % train / 10 % test (9,000 / 1,000 of 10,000), the same on every machine.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dwp.runtime import DwpError

DATASETS = ("mnist", "notmnist", "fashion-mnist", "cifar10", "cifar100")
SPLITS = ("train", "test")
NOTMNIST_SPLIT_SEED = 0
NOTMNIST_TEST_FRACTION = 0.1
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

_IDX_FOLDERS = {
    "mnist": ("mnist", "MNIST/raw"),
    "notmnist": ("notmnist", "notMNIST", "notMNIST/raw"),
    "fashion-mnist": ("fashion-mnist", "FashionMNIST/raw", "fashion_mnist"),
}
_IDX_PREFIX = {"train": "train", "test": "t10k"}
_IMAGES_MAGIC = 0x00000803
_LABELS_MAGIC = 0x00000801


@dataclass
class ImageDataset:
    """An in-memory image classification dataset.

    Attributes
    ----------
    images : float32 tensor (N, C, H, W), values in [0, 1].
    labels : int64 tensor (N,).
    name, split : what it is.
    source : where it was read from (a path, or several joined by ", ").
    num_classes : number of classes (10 or 100).
    """

    images: torch.Tensor
    labels: torch.Tensor
    name: str
    split: str
    source: str
    num_classes: int

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> ImageDataset:
        """The examples at ``index`` (LongTensor), as a new dataset."""
        return ImageDataset(
            self.images[index], self.labels[index], self.name, self.split, self.source,
            self.num_classes,
        )

    def class_counts(self) -> list[int]:
        """Number of examples per class, length ``num_classes``."""
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()


# -- data root ---------------------------------------------------------------------------


def default_cache_root() -> Path:
    """The per-user cache folder used when neither a root nor ``DWP_DATA_ROOT`` is given."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dwp" / "datasets"


def resolve_data_root(root: str | Path | None = None) -> Path:
    """``root`` if given, else ``$DWP_DATA_ROOT``, else the per-user cache folder."""
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    env = os.environ.get("DWP_DATA_ROOT")
    if env:
        return Path(env).expanduser()
    return default_cache_root()


# -- IDX ---------------------------------------------------------------------------------


def _read_maybe_gzip(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DwpError(
                f"{path} is not a valid gzip file ({exc}); the file is corrupt or truncated: "
                f"delete it and copy or download it again"
            ) from exc
    return raw


def read_idx(path: str | Path, expect: str) -> np.ndarray:
    """Read an IDX file (``.gz`` or plain). ``expect`` is ``"images"`` (N, H, W) or ``"labels"``.

    Raises ``DwpError`` on a wrong magic number or a header/data size mismatch.
    """
    path = Path(path)
    data = _read_maybe_gzip(path)
    want_magic, ndim = (_IMAGES_MAGIC, 3) if expect == "images" else (_LABELS_MAGIC, 1)
    if len(data) < 4 + 4 * ndim:
        raise DwpError(f"{path}: file is too short to be an IDX {expect} file ({len(data)} bytes)")
    (magic,) = struct.unpack(">I", data[:4])
    if magic != want_magic:
        raise DwpError(
            f"{path}: bad IDX magic number 0x{magic:08x}, expected 0x{want_magic:08x} for "
            f"{expect}; is this the right file?"
        )
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    expected = int(np.prod(dims))
    body = data[4 + 4 * ndim :]
    if len(body) != expected:
        raise DwpError(
            f"{path}: header says {' x '.join(map(str, dims))} = {expected} bytes of {expect} but "
            f"the file holds {len(body)}; it is truncated or corrupt: copy or download it again"
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _find_idx_pair(folder: Path, prefix: str) -> tuple[Path, Path] | None:
    def find(stem: str) -> Path | None:
        for name in (f"{stem}.gz", stem):
            if (folder / name).is_file():
                return folder / name
        return None

    img = find(f"{prefix}-images-idx3-ubyte")
    lab = find(f"{prefix}-labels-idx1-ubyte")
    if img is None or lab is None:
        return None
    return img, lab


def _load_idx_pair(img_path: Path, lab_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(img_path, "images")
    labels = read_idx(lab_path, "labels")
    if images.shape[0] != labels.shape[0]:
        raise DwpError(
            f"{img_path} holds {images.shape[0]} images but {lab_path} holds {labels.shape[0]} "
            f"labels; the pair does not match: copy or download both again"
        )
    return images, labels


def _idx_candidate_folders(name: str, root: Path) -> list[Path]:
    folders = [root / sub for sub in _IDX_FOLDERS[name]]
    if name == "fashion-mnist":
        folders.append(DEBIAN_FASHION_MNIST)
    return folders


def _missing(name: str, looked: list[Path]) -> DwpError:
    where = ", ".join(str(p) for p in looked)
    hint = "" if name == "notmnist" else ", or add --download to fetch it"
    return DwpError(
        f"dataset {name!r} not found (looked in {where}): pass --data-root DIR or set "
        f"DWP_DATA_ROOT to a folder that holds it{hint}"
    )


def stratified_split(
    labels: np.ndarray, split: str, test_fraction: float = NOTMNIST_TEST_FRACTION,
    seed: int = NOTMNIST_SPLIT_SEED,
) -> np.ndarray:
    """Sorted indices of ``split`` ("train"/"test") of a seeded, class-stratified split.

    Per class, ``round(test_fraction * count)`` examples go to test. Train and test are
    disjoint by index. (The 10k notMNIST sample contains repeated images, e.g. one image
    141 times; such a repeat can fall on both sides, as in the original notMNIST.)
    """
    rng = np.random.default_rng(seed)
    test_idx = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n_test = int(round(len(members) * test_fraction))
        test_idx.append(rng.permutation(members)[:n_test])
    test = np.sort(np.concatenate(test_idx))
    if split == "test":
        return test
    mask = np.ones(len(labels), dtype=bool)
    mask[test] = False
    return np.flatnonzero(mask)


def _load_idx_dataset(name: str, split: str, root: Path, download: bool) -> ImageDataset:
    folders = _idx_candidate_folders(name, root)
    for folder in folders:
        pairs = {s: _find_idx_pair(folder, prefix) for s, prefix in _IDX_PREFIX.items()}
        pair = pairs[split]
        # notMNIST uses files as given only when both splits exist; else it splits one pool.
        if pair is not None and (name != "notmnist" or None not in pairs.values()):
            images, labels = _load_idx_pair(*pair)
            source = str(pair[0].parent)
            break
        if name == "notmnist":
            pool = pairs["test"] or pairs["train"]
            if pool is not None:
                images, labels = _load_idx_pair(*pool)
                idx = stratified_split(labels, split)
                images, labels = images[idx], labels[idx]
                source = f"{pool[0].parent} (seeded stratified split {split})"
                break
    else:
        if download and name in ("mnist", "fashion-mnist"):
            _torchvision_download(name, root)
            return _load_idx_dataset(name, split, root, download=False)
        raise _missing(name, folders)
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return ImageDataset(x, y, name, split, source, 10)


# -- CIFAR -------------------------------------------------------------------------------


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("images", "labels") if k not in f.files]
            if missing:
                raise DwpError(f"{path}: missing keys {missing} (has {f.files}); expected "
                               f"'images' (N, 32, 32, 3) uint8 and 'labels' (N,)")
            images, labels = f["images"], f["labels"]
    except (ValueError, OSError, zlib.error, EOFError) as exc:
        raise DwpError(f"{path}: not a readable .npz file ({exc}); copy it again") from exc
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DwpError(f"{path}: 'images' must be (N, H, W, 3), got {images.shape}")
    if images.shape[0] != labels.shape[0]:
        raise DwpError(
            f"{path}: {images.shape[0]} images but {labels.shape[0]} labels; copy it again"
        )
    return images, labels


def _load_cifar(name: str, split: str, root: Path, download: bool) -> ImageDataset:
    sub, tv_folder = ("cifar10", "cifar-10-batches-py") if name == "cifar10" else (
        "cifar100", "cifar-100-python")
    npz = root / sub / f"{split}.npz"
    if npz.is_file():
        images, labels = _load_npz(npz)
        source = str(npz)
    elif (root / tv_folder).is_dir() or download:
        from torchvision import datasets

        cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        try:
            ds = cls(str(root), train=(split == "train"), download=download)
        except RuntimeError as exc:
            raise DwpError(f"{root / tv_folder}: {exc}; pass --download to fetch it") from exc
        images, labels = np.asarray(ds.data), np.asarray(ds.targets)
        source = str(root / tv_folder)
    else:
        raise _missing(name, [npz, root / tv_folder])
    x = torch.from_numpy(images.astype(np.float32) / 255.0).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(labels.astype(np.int64))
    return ImageDataset(x, y, name, split, source, 10 if name == "cifar10" else 100)


def _torchvision_download(name: str, root: Path) -> None:
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}[name]
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as exc:  # network errors come in many types
        raise DwpError(f"downloading {name} into {root} failed: {exc}") from exc


# -- public API --------------------------------------------------------------------------


def load_dataset(
    name: str, split: str = "train", root: str | Path | None = None, download: bool = False
) -> ImageDataset:
    """Load ``name`` (one of ``DATASETS``), ``split`` ``"train"`` or ``"test"``, into memory.

    Returns an ``ImageDataset`` with images float32 (N, C, H, W) in [0, 1] and labels int64.
    ``download=True`` fetches MNIST, Fashion-MNIST or CIFAR with torchvision into the root when
    they are not found there (notMNIST cannot be downloaded this way).
    """
    key = name.lower().replace("_", "-")
    if key == "fashionmnist":
        key = "fashion-mnist"
    if key not in DATASETS:
        raise DwpError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise DwpError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    data_root = resolve_data_root(root)
    if key in _IDX_FOLDERS:
        return _load_idx_dataset(key, split, data_root, download)
    return _load_cifar(key, split, data_root, download)


def class_balanced_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Indices of ``n`` examples, ``n / num_classes`` drawn per class with ``seed``.

    Parameters
    ----------
    labels : int64 tensor (N,) of class indices (every class 0..C-1 present).
    n : total subset size; must be a multiple of the number of classes C.
    seed : seed of ``numpy.random.default_rng``; the same seed gives the same subset on
        every machine.

    Returns
    -------
    LongTensor (n,) of indices into ``labels``, sorted ascending.
    """
    y = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    classes = np.unique(y)
    c = len(classes)
    if n <= 0 or n % c:
        raise DwpError(f"subset size {n} must be a positive multiple of the {c} classes")
    per_class = n // c
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in classes:
        members = np.flatnonzero(y == cls)
        if len(members) < per_class:
            raise DwpError(
                f"asked for {per_class} examples per class but class {int(cls)} has only "
                f"{len(members)}; use n <= {c * min(np.bincount(y))}"
            )
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return torch.from_numpy(np.sort(np.concatenate(chosen))).long()
