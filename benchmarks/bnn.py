"""Speed and peak memory of Bayesian FConvMNIST(32, 128) training steps at N = 50 (full batch).

Each configuration runs in its own subprocess (so the peak resident memory, ``ru_maxrss``, is
its own): a few warm-up steps, then ``--steps`` timed steps of ``dwp.bnn.train_bnn``'s loop
(LRT forward, KL / auxiliary bound, backward, Adam). The deep weight prior uses the paper's VAE
architectures (7x7: z=2, 5x5: z=4; trained weights from ``--prior-dir`` if given, else
untrained ones, which cost the same). Prints one JSON line per configuration and writes
``benchmarks/results/bnn-speed.jsonl``; the projected time of a paper-length run
(10,000 steps at N = 50) is steps/s extrapolated.

``--conv-impls`` runs every configuration with each way of computing the variational
convolutions (``BayesConv2d.set_conv_impl``: ``mixed``, the default, computes the one-channel
first layer as im2col + matrix products; ``native`` uses ``F.conv2d`` everywhere), one after the
other in the same invocation, so their ratio is measured under the same conditions.

    python benchmarks/bnn.py --threads 2 --steps 20
    python benchmarks/bnn.py --threads 2 --steps 30 --configs 0 3 --conv-impls native mixed
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = [
    {"prior": "sn", "kernel_subsample": None},
    {"prior": "dwp", "kernel_subsample": None},
    {"prior": "dwp", "kernel_subsample": 512},
    {"prior": "dwp", "kernel_subsample": 128},
]


def one(cfg: dict, steps: int, threads: int, device: str, prior_dir: str | None,
        conv_impl: str = "mixed") -> dict:
    import torch

    from dwp.bayes import bayesianize, elbo_loss, kl
    from dwp.nets import FConvMNIST, xavier_init_
    from dwp.priors import KernelVAE, StandardNormal, load_prior_dir

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    if cfg["prior"] == "sn":
        priors = StandardNormal()
    elif prior_dir:
        priors = load_prior_dir(prior_dir, dev)
    else:
        priors = {"conv1": KernelVAE(7), "conv2": KernelVAE(5)}
    net = xavier_init_(FConvMNIST((32, 128))).to(dev)
    bayesianize(net, priors, init="xavier", conv_impl=conv_impl)
    net.to(dev)
    x = torch.rand(50, 1, 28, 28, device=dev)
    y = torch.randint(0, 10, (50,), device=dev)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    g = torch.Generator().manual_seed(0)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = elbo_loss(net(x), y, kl(net, cfg["kernel_subsample"], g), 50)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    rec = {
        **cfg, "conv_impl": conv_impl, "n": 50, "timed_steps": steps, "threads": threads,
        "device": str(dev),
        "seconds_per_step": dt, "steps_per_s": 1 / dt,
        "projected_10000_steps_min": 10000 * dt / 60,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M"), "trained_prior": bool(prior_dir),
        "load_avg_1min": os.getloadavg()[0],
    }
    if dev.type == "cuda":
        rec["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return rec


def main() -> None:
    from dwp.bayes import BNN_CONV_IMPLS

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--prior-dir", default=None)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bnn-speed.jsonl"))
    ap.add_argument("--configs", type=int, nargs="+", default=list(range(len(CONFIGS))),
                    help="indices into CONFIGS (default: all): "
                    + "; ".join(f"{i}: {c}" for i, c in enumerate(CONFIGS)))
    ap.add_argument("--conv-impls", nargs="+", default=["mixed"],
                    choices=BNN_CONV_IMPLS,
                    help="run every configuration with each of these (default: mixed)")
    ap.add_argument("--only", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--conv-impl", default="mixed", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only is not None:
        rec = one(CONFIGS[args.only], args.steps, args.threads, args.device, args.prior_dir,
                  args.conv_impl)
        print(json.dumps(rec))
        return
    from dwp.runtime import append_jsonl

    for i in args.configs:
        for impl in args.conv_impls:
            cmd = [sys.executable, __file__, "--only", str(i), "--steps", str(args.steps),
                   "--threads", str(args.threads), "--device", args.device,
                   "--conv-impl", impl]
            if args.prior_dir:
                cmd += ["--prior-dir", args.prior_dir]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rec = json.loads(res.stdout.strip().splitlines()[-1])
            print(json.dumps(rec), flush=True)
            append_jsonl(args.out, rec)


if __name__ == "__main__":
    main()
