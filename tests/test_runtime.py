"""Shared conventions: atomic writes, run folders, device selection, JSONL."""

from __future__ import annotations

import json

import pytest
import torch

from dwp.runtime import (
    DwpError,
    append_jsonl,
    atomic_path,
    atomic_write_json,
    prepare_run_dir,
    read_jsonl,
    seed_everything,
    select_device,
)


def test_atomic_write_leaves_no_temp_files(tmp_path):
    p = atomic_write_json(tmp_path / "a" / "x.json", {"a": 1})
    assert json.loads(p.read_text()) == {"a": 1}
    assert sorted(x.name for x in p.parent.iterdir()) == ["x.json"]


def test_atomic_path_removes_partial_file_on_error(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"


def test_prepare_run_dir_refuses_other_config(tmp_path):
    prepare_run_dir(tmp_path / "run", "train-source", {"epochs": 3, "device": "cpu"})
    # Same config (device may differ) resumes fine.
    prepare_run_dir(tmp_path / "run", "train-source", {"epochs": 3, "device": "cuda"})
    with pytest.raises(DwpError, match="differs in: epochs"):
        prepare_run_dir(tmp_path / "run", "train-source", {"epochs": 4, "device": "cpu"})


def test_prepare_run_dir_refuses_a_folder_that_is_not_a_run(tmp_path):
    other = tmp_path / "priors"
    (other / "conv1").mkdir(parents=True)
    (other / "README.md").write_text("not a run")
    with pytest.raises(DwpError, match="not a dwp run folder.*README.md, conv1"):
        prepare_run_dir(other, "train-bnn", {"n": 50})
    assert not (other / "config.json").exists()
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(DwpError, match="is a file"):
        prepare_run_dir(afile, "train-bnn", {"n": 50})
    # an empty folder (or one holding only hidden files) is fine
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".DS_Store").write_text("")
    assert prepare_run_dir(empty, "train-bnn", {"n": 50}) == empty
    assert (empty / "config.json").exists()


def test_jsonl_ignores_torn_last_line(tmp_path):
    p = tmp_path / "r.jsonl"
    append_jsonl(p, {"a": 1})
    with open(p, "a") as fh:
        fh.write('{"a": 2')
    assert read_jsonl(p) == [{"a": 1}]


def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(DwpError, match="CUDA is not available"):
            select_device("cuda")
    with pytest.raises(DwpError, match="unknown device"):
        select_device("tpu9")


def test_seed_everything_is_reproducible():
    g1 = seed_everything(5)
    a = torch.randn(3), torch.randn(3, generator=g1)
    g2 = seed_everything(5)
    b = torch.randn(3), torch.randn(3, generator=g2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_python_dash_m_dwp_runs_the_cli():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "dwp", "--help"], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "train-source" in proc.stdout and "collect-kernels" in proc.stdout


def test_cli_main_passes_unexpected_errors_through_and_maps_abort(monkeypatch):
    import typer

    import dwp.cli

    def boom(**_):
        raise ValueError("boom")

    def abort(**_):
        raise typer.Abort()

    monkeypatch.setattr(dwp.cli, "app", boom)
    with pytest.raises(ValueError, match="boom"):  # not masked by the CLI's error handling
        dwp.cli.main(["--help"])
    monkeypatch.setattr(dwp.cli, "app", abort)
    assert dwp.cli.main(["--help"]) == 1
