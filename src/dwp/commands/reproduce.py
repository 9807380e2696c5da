"""``dwp reproduce mnist``: the whole notMNIST -> MNIST pipeline of the paper in one command.

Every stage is an ordinary dwp command writing its own folder under ``OUT``; each is resumable,
so a killed ``reproduce`` picks up where it stopped when run again with the same flags.
``--quick`` swaps in a small configuration that finishes in minutes on a CPU (its numbers are a
smoke test of the pipeline, not a reproduction); ``--dry-run`` prints the commands.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import typer

from dwp.commands.options import DataRoot, Device, Download, Progress
from dwp.runtime import DwpError

COMMAND = {
    "help": "Run the paper's MNIST pipeline end to end: source nets -> kernels -> priors -> "
    "experiments."
}
STAGES = ("source", "kernels", "prior", "classification", "features", "convergence")


def mnist_stages(out: Path, quick: bool) -> list[tuple[str, list[str]]]:
    """The (stage name, dwp argument list) pairs of the MNIST pipeline, in order.

    Full configuration = the paper's (Appendix G/H): 100 notMNIST source nets of widths
    (256, 512), 100 epochs, L2 1e-3; 7x7 and 5x5 VAE priors (300 epochs); the classification grid
    N in {50, 100, 200, 500, 1000} x 5 methods x 10 seeds; Fig. 3 and Fig. 4 experiments.
    """
    src, ker, pri = out / "source", out / "kernels", out / "prior"
    if quick:
        source = ["--widths", "32", "64", "--nets", "8", "--epochs", "2"]
        kernels = ["--cap", "20000"]
        # 30 epochs on these near-noise kernels leave an uncapped VAE collapsed, with samples
        # ~10x too large (the convergence stage's dwp VAE then diverges); the cap fixes both
        prior = ["--epochs", "30", "--max-train-kernels", "5000", "--iwae-k", "1,100",
                 "--iwae-max-kernels", "200", "--decoder-var-cap", "data"]
        classification = ["--sizes", "50", "--methods", "dwp,standard-normal,log-uniform",
                          "--seeds", "0", "--steps", "300", "--kernel-subsample", "256",
                          "--test-examples", "2000"]
        experiments = ["--quick"]
    else:
        source = ["--widths", "256", "512", "--nets", "100", "--epochs", "100"]
        kernels, prior, experiments = [], [], []
        classification = ["--sizes", "50,100,200,500,1000", "--methods",
                          "dwp,standard-normal,log-uniform,fitted-gaussian,deterministic",
                          "--seeds", "0-9"]
    return [
        ("source", ["train-source", "--dataset", "notmnist", "--arch", "fconv", "--l2", "1e-3",
                    *source, "--out", str(src)]),
        ("kernels", ["collect-kernels", str(src), *kernels, "--out", str(ker)]),
        ("prior", ["train-prior", str(ker), "--family", "vae", *prior, "--out", str(pri)]),
        ("classification", ["experiment", "classification", "--prior-dir", str(pri),
                            "--kernels", str(ker), *classification,
                            "--out", str(out / "classification")]),
        ("features", ["experiment", "features", "--prior-dir", str(pri), "--kernels", str(ker),
                      *experiments, "--out", str(out / "features")]),
        ("convergence", ["experiment", "convergence", "--prior-dir", str(pri), "--kernels",
                         str(ker), *experiments, "--out", str(out / "convergence")]),
    ]


# Flags each stage accepts, beyond its own: which of the shared ones to pass on.
_TAKES_DATA = {"source", "classification", "features", "convergence"}
_TAKES_DEVICE = {"source", "prior", "classification", "features", "convergence"}


def reproduce(
    target: str = typer.Argument(
        ..., help="What to reproduce: 'mnist' (notMNIST priors, MNIST experiments)."
    ),
    out: Path = typer.Option(
        Path("runs/reproduce-mnist"), "--out", "-o", help="Folder for every stage's output."
    ),
    quick: bool = typer.Option(
        False, "--quick", help="Small configuration that runs in minutes on a CPU (a smoke "
        "test of the pipeline; its numbers are not the paper's)."
    ),
    stages: str = typer.Option(
        ",".join(STAGES), "--stages", help=f"Comma-separated subset of: {', '.join(STAGES)}."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the commands, run nothing."),
    data_root: Path | None = DataRoot,
    download: bool = Download,
    device: str = Device,
    show_progress: bool = Progress,
) -> None:
    """Run the paper's MNIST pipeline end to end, one dwp command per stage.

    source nets on notMNIST -> collect-kernels -> train-prior (VAE per layer) -> experiment
    classification (Fig. 2) -> experiment features (Fig. 3) -> experiment convergence (Fig. 4).
    Every stage resumes where it stopped when the same command is run again.
    """
    from dwp.cli import main  # late import: cli imports this module

    if target != "mnist":
        raise DwpError(f"unknown target {target!r}: only 'mnist' is available so far")
    wanted = [s.strip() for s in stages.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in STAGES]
    if unknown:
        raise DwpError(f"unknown stage(s) {unknown}: choose from {', '.join(STAGES)}")
    plan = [(name, args) for name, args in mnist_stages(Path(out), quick) if name in wanted]
    for name, args in plan:
        if name in _TAKES_DATA:
            if data_root is not None:
                args += ["--data-root", str(data_root)]
            if download:
                args += ["--download"]
        if name in _TAKES_DEVICE:
            args += ["--device", device]
        if not show_progress and name != "kernels":
            args += ["--no-progress"]
    for i, (name, args) in enumerate(plan, 1):
        line = "dwp " + shlex.join(args)
        typer.echo(f"[{i}/{len(plan)}] {name}: {line}", err=True)
        if quick and name == "classification" and not dry_run:
            typer.echo("note (--quick): the briefly trained source nets give near-noise "
                       "kernels, so the quick VAEs may use no latent dimension and be warned "
                       "about below; the full configuration trains real priors.", err=True)
        if dry_run:
            continue
        start = time.perf_counter()
        code = main(args)
        if code != 0:
            raise DwpError(f"stage '{name}' failed (exit {code}); fix it and rerun to resume")
        typer.echo(f"[{i}/{len(plan)}] {name}: done in {time.perf_counter() - start:.0f} s",
                   err=True)
    if not dry_run:
        typer.echo(f"all outputs under {out}")
