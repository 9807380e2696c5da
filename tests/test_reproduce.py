"""`dwp reproduce`: the stage plan and its errors (the stages themselves are tested elsewhere)."""

from __future__ import annotations

from pathlib import Path

from dwp.cli import main
from dwp.commands.reproduce import STAGES, mnist_stages


def test_full_plan_uses_paper_settings(tmp_path):
    plan = dict(mnist_stages(tmp_path, quick=False))
    assert list(plan) == list(STAGES)
    src = plan["source"]
    assert src[src.index("--nets") + 1] == "100" and src[src.index("--epochs") + 1] == "100"
    assert src[src.index("--widths") + 1 : src.index("--widths") + 3] == ["256", "512"]
    assert src[src.index("--l2") + 1] == "1e-3"
    cls = plan["classification"]
    assert cls[cls.index("--sizes") + 1] == "50,100,200,500,1000"
    assert cls[cls.index("--seeds") + 1] == "0-9"
    # Each stage reads the previous stage's folder.
    assert str(tmp_path / "source") in plan["kernels"]
    assert str(tmp_path / "kernels") in plan["prior"]
    assert str(tmp_path / "prior") in plan["classification"]


def test_dry_run_prints_every_stage_and_runs_nothing(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["reproduce", "mnist", "--quick", "--dry-run", "--out", str(out),
                 "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    for i, stage in enumerate(STAGES, 1):
        assert f"[{i}/{len(STAGES)}] {stage}: dwp " in err
    assert not Path(out).exists()


def test_unknown_target_and_stage(capsys):
    assert main(["reproduce", "cifar", "--dry-run"]) == 2
    assert "unknown target 'cifar'" in capsys.readouterr().err
    assert main(["reproduce", "mnist", "--stages", "source,gap", "--dry-run"]) == 2
    assert "unknown stage(s) ['gap']" in capsys.readouterr().err
