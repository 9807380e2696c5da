"""Conventions shared by every command: device choice, seeding, run folders, atomic writes.

Nothing here holds global state; every helper takes what it needs as arguments.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dwp import __version__


class DwpError(Exception):
    """An error caused by the user's input: the CLI prints its message on one line, no traceback."""


def select_device(device: str | None = None) -> torch.device:
    """Return ``device`` as a ``torch.device``; ``None``/``"auto"`` picks CUDA if present, else CPU.

    Raises ``DwpError`` when CUDA is requested but not available.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise DwpError(f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:N' or 'auto'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DwpError(f"device {device!r} requested but CUDA is not available: use --device cpu")
    return dev


def mix_seed(*words: int) -> int:
    """Mix integers into one well-spread 63-bit seed (NumPy ``SeedSequence``): the seed of
    net ``i`` of a series is ``mix_seed(seed, i)``, of an epoch's data order
    ``mix_seed(net_seed, epoch, salt)``, so each depends on its words alone."""
    state = np.random.SeedSequence([int(w) % (2**63) for w in words]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) % (2**63)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU ``torch.Generator`` seeded with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    A killed process leaves either the old file or the new one, never a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON to ``path``."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, else delete it.

    For writers that want a file name (``safetensors.torch.save_file``, ``savefig``).
    The temporary name keeps the final suffix so writers that look at it still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def append_jsonl(path: str | Path, obj: dict[str, Any]) -> None:
    """Append one JSON object as a line to ``path`` (flushed and fsynced)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(obj, sort_keys=True, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file; a torn last line (from a killed writer) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def check_out_folder(
    out: Path, is_ours: Callable[[Path], bool], refusal: Callable[[str], str]
) -> None:
    """Refuse an output path that is a file, or a folder holding an entry ``is_ours`` rejects.

    Hidden entries (``.name``) are ignored; a missing or empty folder passes. ``refusal(shown)``
    builds the ``DwpError`` message from the first foreign names, e.g. ``"a, b, c, ..."``.
    """
    if out.exists() and not out.is_dir():
        raise DwpError(f"--out {out} is a file, not a folder: choose a new --out")
    if not out.is_dir():
        return
    foreign = [p.name for p in sorted(out.iterdir())
               if not p.name.startswith(".") and not is_ours(p)]
    if foreign:
        raise DwpError(refusal(", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")))


def prepare_run_dir(out: str | Path, command: str, config: dict[str, Any]) -> Path:
    """Create the run folder ``out`` and write ``config.json`` (command, config, dwp version).

    An existing run folder is reused (for resuming); its config must then match ``config``,
    otherwise ``DwpError`` says which keys differ. ``DwpError`` also refuses a path that is a
    file, and a folder that holds files but no ``config.json`` (not a dwp run folder: writing
    there would mix a run into unrelated files).
    """
    out = Path(out)
    cfg_path = out / "config.json"
    record = {"command": command, "config": config, "dwp_version": __version__}
    is_run = cfg_path.exists()
    check_out_folder(
        out, lambda _: is_run,
        lambda shown: f"--out {out} exists and is not a dwp run folder (it holds {shown} but no "
        "config.json): choose a new --out, or an empty folder",
    )
    if is_run:
        try:
            old = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as exc:
            raise DwpError(
                f"{cfg_path} is not valid JSON: delete the folder {out} and rerun"
            ) from exc
        old_cfg = old.get("config", {})
        new_cfg = json.loads(json.dumps(config, default=str))
        diff = sorted(k for k in set(old_cfg) | set(new_cfg) if old_cfg.get(k) != new_cfg.get(k))
        diff = [k for k in diff if k not in RESUME_FREE_KEYS]
        if old.get("command") != command or diff:
            raise DwpError(
                f"{out} holds a run of '{old.get('command')}' with a different config "
                f"(differs in: {', '.join(diff) or 'command'}): use another --out or delete it"
            )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cfg_path, record)
    return out


# Config keys that may change between a run and its resumption (they do not change results
# beyond float rounding).
RESUME_FREE_KEYS = frozenset(
    {"device", "progress", "data_root", "download", "chunk_size", "conv_impl"}
)


def progress(iterable=None, *, total=None, desc: str | None = None, enabled: bool = True, **kw):
    """A tqdm progress bar (disabled with ``enabled=False``); writes to stderr."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not enabled, dynamic_ncols=True, **kw)
