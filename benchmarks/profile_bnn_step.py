"""Where one Bayesian training step at N = 50 spends its time: the data term against the prior
term, each timed alone and together, with a profiler table of each.

The step is the one ``dwp train-bnn --prior dwp --freeze-reverse --kernel-subsample M`` takes:
FConvMNIST(32, 128) with variational conv layers (local reparameterisation for the likelihood),
the paper's VAE priors (7x7: z = 2, hidden 32; 5x5: z = 4, hidden 64; trained weights from
``--prior-dir``, else untrained ones, which cost the same), r frozen at the prior's encoder,
Adam. Three variants run on the same random batch, one after the other in one process:

- ``full``: forward, negative ELBO (data term + subsampled prior term), backward, Adam step;
- ``data``: the same without the prior term;
- ``prior``: the same without the data term.

For each it reports seconds per step, and for ``data`` and ``prior`` the multiply-adds of
their convolutions and the GFLOP/s they reach (forward + backward counted as 3x forward, less
the input gradient where none is needed), then the top operators by self time with input
shapes (``torch.profiler``). Writes one JSON file.

    python benchmarks/profile_bnn_step.py --prior-dir runs/prior-cpu3aug-3k --threads 2 \\
        --out benchmarks/results/profile-bnn-step-cpu.json
    python benchmarks/profile_bnn_step.py --steps 2 --warmup 1 --subsample 8   # a check
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def data_macs(n: int, widths: tuple[int, int] = (32, 128)) -> tuple[int, int]:
    """(forward, forward + backward) multiply-adds of the LRT data term for n images: both conv
    layers run twice (mean and variance); conv1 needs no input gradient, conv2 does."""
    w1, w2 = widths
    conv1 = n * 22 * 22 * w1 * 49
    conv2 = n * 7 * 7 * w2 * w1 * 25
    fwd = 2 * (conv1 + conv2)
    return fwd, 2 * conv1 * 2 + 2 * conv2 * 3


def vae_macs(vae: torch.nn.Module, k: int, m: int) -> int:
    """Forward multiply-adds of ``vae``'s encoder and decoder convolutions for m kernels k x k
    (counted with forward hooks on one kernel)."""
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            kh, kw = mod.kernel_size
            cin = mod.in_channels // mod.groups
            if isinstance(mod, torch.nn.Conv2d):
                total += out[0].numel() * cin * kh * kw
            else:  # every input position scatters into kh x kw outputs per channel
                total += inp[0][0].numel() * mod.out_channels * kh * kw

    handles = [mod.register_forward_hook(hook) for mod in vae.modules()]
    try:
        with torch.no_grad():
            vae.kl(torch.zeros(1, k, k), torch.zeros(1, k, k), None)
    finally:
        for h in handles:
            h.remove()
    return total * m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prior-dir", default=None, help="trained priors (default: untrained VAEs)")
    ap.add_argument("--subsample", type=int, default=128, help="conv2 kernels per step (m)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--profile-steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from dwp.bayes import bayesianize, kl
    from dwp.nets import FConvMNIST, xavier_init_
    from dwp.priors import KernelVAE, load_prior_dir

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    if args.prior_dir:
        priors = load_prior_dir(args.prior_dir, dev)
    else:
        priors = {"conv1": KernelVAE(7), "conv2": KernelVAE(5)}
    net = xavier_init_(FConvMNIST((32, 128))).to(dev)
    bayesianize(net, priors, init="prior", freeze_reverse=True)
    net.to(dev)
    x = torch.rand(50, 1, 28, 28, device=dev)
    y = torch.randint(0, 10, (50,), device=dev)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-4)
    gen = torch.Generator().manual_seed(0)

    def step(data: bool, prior: bool) -> None:
        opt.zero_grad(set_to_none=True)
        loss = x.new_zeros(())
        if data:
            loss = loss + F.cross_entropy(net(x), y, reduction="sum")
        if prior:
            loss = loss + kl(net, kernel_subsample=args.subsample, generator=gen)
        loss.backward()
        opt.step()

    def timed(data: bool, prior: bool) -> float:
        for _ in range(args.warmup):
            step(data, prior)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step(data, prior)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / args.steps

    from torch.profiler import ProfilerActivity, profile

    variants = {"full": (True, True), "data": (True, False), "prior": (False, True)}
    result: dict = {
        "device": str(dev), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(), "prior_dir": args.prior_dir,
        "kernel_subsample": args.subsample, "steps": args.steps, "variants": {},
    }
    fwd, total = data_macs(50)
    # the prior term runs conv1's 32 kernels exactly and m of conv2's 4,096; r is frozen, so
    # its encoder needs input gradients only (~2x forward), the decoder likewise
    prior_fwd = vae_macs(priors["conv1"], 7, 32) + vae_macs(priors["conv2"], 5, args.subsample)
    macs = {"data": (fwd, total), "prior": (prior_fwd, 2 * prior_fwd)}
    for name, (d, p) in variants.items():
        sec = timed(d, p)
        row: dict = {"seconds_per_step": sec, "paper_length_minutes": sec * 10_000 / 60}
        if name in macs:
            row["macs_forward"], row["macs_step"] = macs[name]
            row["gflops"] = 2 * macs[name][1] / sec / 1e9
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
            with profile(activities=acts, record_shapes=True) as prof:
                for _ in range(args.profile_steps):
                    step(d, p)
            key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
            table = prof.key_averages(group_by_input_shape=True).table(
                sort_by=key, row_limit=12, max_name_column_width=32, max_shapes_column_width=80)
            row["profile"] = table
            print(table)
        result["variants"][name] = row
        print(json.dumps({k: v for k, v in row.items() if k != "profile"} | {"variant": name}))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
