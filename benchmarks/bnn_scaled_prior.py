"""Diagnostic: a paper-length N = 50 dwp run whose per-layer priors are rescaled by a fixed factor.

For a prior p over k x k kernels and s > 0, the rescaled prior p_s(w) = s^-d p(w / s) (d = k*k)
is the law of s * w for w ~ p. Its KL against q = N(mu, sigma^2) needs no new estimator:
KL(q || p_s) = KL(N(mu / s, sigma^2 / s^2) || p), since KL is invariant under applying the same
invertible map to both arguments. So ``ScaledKernelPrior`` wraps any dwp prior (the VAE's
auxiliary bound and its reverse model included) and only transforms the posterior parameters.

What it is for: the source nets' conv2 reads many more input channels than the target net's
(paper: 256 vs 32; our cpu3 source run: 64 vs 32), and weights that keep activations at a fixed
scale go as 1 / sqrt(fan-in). ``s = sqrt(fan_in_source / fan_in_target)`` is the data-free
correction for that mismatch (1 for conv1, whose fan-in is 1 x 7 x 7 in both). Comparing the
same seeds with and without it tells whether the *scale* of the learned prior is what holds
dwp back at N = 50 (see BENCHMARKS.md, "Like-for-like checks of the objective"). It is not
the paper's method, and s is fixed from the architectures, not chosen on any accuracy. MNIST
test set, 10-sample ensemble.

    python benchmarks/bnn_scaled_prior.py runs/prior-cpu3 --scale conv2=1.4142 --seed 0 \\
        --freeze-reverse --out runs/bnn-paperlen-dwp3-scaled-s0.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dwp.bnn import run_classification
from dwp.data import load_dataset
from dwp.priors import KernelPrior, load_prior_dir


class ScaledKernelPrior(KernelPrior):
    """p_s(w) = s^-d p(w / s): the prior ``base`` stretched by ``scale`` (shapes as ``base``)."""

    def __init__(self, base: KernelPrior, scale: float) -> None:
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        super().__init__(base.kernel_size)
        self.base = base
        self.scale = float(scale)
        self.family = f"{base.family}*{scale:g}"
        self.explicit = base.explicit

    def sample(self, n: int, kernel_size: int | None = None,
               generator: torch.Generator | None = None, **kw: Any) -> torch.Tensor:
        return self.scale * self.base.sample(n, kernel_size=kernel_size, generator=generator, **kw)

    def log_prob(self, w: torch.Tensor) -> torch.Tensor:
        d = w.shape[-1] * w.shape[-2]
        return self.base.log_prob(w / self.scale) - d * math.log(self.scale)

    def kl(self, mu: torch.Tensor, log_var: torch.Tensor,
           reverse: nn.Module | None = None) -> torch.Tensor:
        return self.base.kl(mu / self.scale, log_var - 2 * math.log(self.scale), reverse)

    def make_reverse(self) -> nn.Module | None:
        return self.base.make_reverse()

    def config(self) -> dict[str, Any]:
        return {"base": self.base.config(), "scale": self.scale}


def parse_scales(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            factor = float(value)
        except ValueError:
            factor = float("nan")
        if not name or not factor > 0:
            raise SystemExit(f"--scale expects LAYER=FACTOR with FACTOR > 0 "
                             f"(e.g. conv2=1.4142), got {item!r}")
        out[name] = factor
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prior_dir", type=Path, help="folder of per-layer priors (PRIOR/conv1, ...)")
    ap.add_argument("--scale", action="append", default=[], metavar="LAYER=FACTOR",
                    help="rescale that layer's prior (repeatable); other layers keep scale 1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--steps", type=int, default=10000)
    ap.add_argument("--kernel-subsample", type=int, default=128)
    ap.add_argument("--freeze-reverse", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, required=True, help="JSON record to write")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    scales = parse_scales(args.scale)
    priors = load_prior_dir(args.prior_dir)
    unknown = set(scales) - set(priors)
    if unknown:
        raise SystemExit(f"--scale names layers {sorted(unknown)} not in {args.prior_dir} "
                         f"(has {sorted(priors)})")
    priors = {name: ScaledKernelPrior(p, scales[name]) if name in scales else p
              for name, p in priors.items()}
    rec = run_classification("dwp", args.n, args.seed,
                             train_data=load_dataset("mnist", "train"),
                             test_data=load_dataset("mnist", "test"), steps=args.steps,
                             priors=priors, device=args.device,
                             kernel_subsample=args.kernel_subsample,
                             freeze_reverse=args.freeze_reverse)
    rec.update(prior_dir=str(args.prior_dir), prior_scales=scales,
               note="diagnostic: dwp priors rescaled by a fixed factor per layer "
                    "(benchmarks/bnn_scaled_prior.py)")
    rec.pop("layers", None)
    args.out.write_text(json.dumps(rec) + "\n")
    print(json.dumps({k: rec[k] for k in ("method", "seed", "accuracy", "nll", "seconds")}))


if __name__ == "__main__":
    main()
