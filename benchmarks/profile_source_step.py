"""Where one source-net training step spends its time: variants timed side by side, plus a
profiler table of the batched step.

On the H200 (2026-11-27) 10 paper-width nets trained at ~43 TFLOP/s, a few per cent of the
chip's bf16 peak, and one net alone ran at the same rate per net. This script times, in one
process on the same random batch, one Adam step (forward + backward + update) of:

- ``plain-fp32`` / ``plain-tf32`` / ``plain-bf16`` / ``plain-bf16-cl``: one ``nn.Module`` net
  (fp32, TensorFloat-32, bf16 autocast, bf16 autocast + channels_last);
- ``batched-bf16-1`` / ``batched-bf16-N``: ``dwp.batched`` (vmap over stacked parameters,
  grouped convolutions) with 1 and N nets, bf16 autocast;
- ``unfold-bf16-1`` / ``unfold-bf16-N``: the same with convolutions as im2col + one batched
  matrix product (``BatchedModel(conv_impl="unfold")``, ``dwp.convimpl``);
- ``mixed-bf16-N``: im2col + matmul for the one-input-channel conv1 only, grouped convolution
  for conv2 (``conv_impl="mixed"``, what ``"auto"`` picks on CUDA);
- ``batched-fp32-N``: the batched step in float32 (what CPU source runs use);
- ``...-paperorder``: the same net with LeakyReLU before max-pool, the paper's order, against
  dwp's pool-first feature stack (``dwp.nets.PoolFirstSequential``; same outputs);

reports seconds per step, per net, and the achieved TFLOP/s (from the nets' multiply-adds), and
writes the top CUDA (or CPU) kernels of the batched step from ``torch.profiler``.

    python benchmarks/profile_source_step.py --device cuda --nets 10 --out OUT.json
    python benchmarks/profile_source_step.py --device cpu --widths 8 16 --nets 2 --batch 16 \\
        --steps 2 --warmup 1          # a check of the script
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dwp.batched import BatchedModel, BatchedTrainer
from dwp.nets import FConvMNIST, xavier_init_
from dwp.precision import cudnn_autotune


def conv_macs_per_image(widths: tuple[int, int]) -> int:
    """Multiply-adds of one FConvMNIST forward on a 28x28 image (convs and classifier)."""
    w1, w2 = widths
    return 22 * 22 * w1 * 49 + 7 * 7 * w2 * w1 * 25 + w2 * 9 * 10


def time_steps(step, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per call of ``step()`` after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def fconv(widths, paper_order: bool = False) -> FConvMNIST:
    """A Xavier-initialised FConvMNIST; ``paper_order`` runs its features as a plain
    ``nn.Sequential`` (LeakyReLU, then max-pool) instead of dwp's pool-first stack."""
    net = xavier_init_(FConvMNIST(tuple(widths)))
    if paper_order:
        net.features.__class__ = torch.nn.Sequential
    return net


def plain_step(widths, x, y, precision: str, channels_last: bool, paper_order: bool = False):
    """A closure doing one Adam step of one plain net."""
    net = fconv(widths, paper_order).to(x.device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    dtype = torch.bfloat16 if precision == "bf16" else None

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            logits = net(x)
        F.cross_entropy(logits.float(), y).backward()
        opt.step()

    return step


def batched_step(widths, x, y, nets: int, conv_impl: str = "native", precision: str = "bf16",
                 paper_order: bool = False):
    """A closure doing one step of ``nets`` nets through dwp.batched."""
    model = BatchedModel(lambda: fconv(widths, paper_order), list(range(nets)),
                         device=x.device, conv_impl=conv_impl)
    trainer = BatchedTrainer(model, l2=1e-3, chunk_size="auto", precision=precision)
    xb, yb = x.expand(nets, *x.shape), y.expand(nets, *y.shape)
    return lambda: trainer.step(xb, yb)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", type=int, nargs=2, default=[256, 512])
    ap.add_argument("--nets", type=int, default=10)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=1,
                    help="rounds over all variants, each timing --steps steps; the median "
                         "round is reported (more than 1 keeps every variant in memory)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--variants", nargs="+", default=None,
                    help="time only these variants (names as printed, N = --nets); default all")
    ap.add_argument("--profile-impls", nargs="*", default=["native", "mixed", "unfold"],
                    help="conv_impl values whose batched step gets a profiler table")
    ap.add_argument("--out", type=Path, default=None, help="JSON results (and OUT.txt table)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.rand(args.batch, 1, 28, 28, device=dev)
    y = torch.randint(0, 10, (args.batch,), device=dev)
    flop_per_net_step = 3 * 2 * conv_macs_per_image(args.widths) * args.batch  # fwd + bwd

    variants = {
        "plain-fp32": (lambda: plain_step(args.widths, x, y, "fp32", False), 1),
        "plain-tf32": (lambda: plain_step(args.widths, x, y, "tf32", False), 1),
        "plain-bf16": (lambda: plain_step(args.widths, x, y, "bf16", False), 1),
        "plain-bf16-cl": (lambda: plain_step(args.widths, x, y, "bf16", True), 1),
        "batched-bf16-1": (lambda: batched_step(args.widths, x, y, 1), 1),
        f"batched-bf16-{args.nets}": (lambda: batched_step(args.widths, x, y, args.nets),
                                      args.nets),
        "unfold-bf16-1": (lambda: batched_step(args.widths, x, y, 1, "unfold"), 1),
        f"unfold-bf16-{args.nets}": (lambda: batched_step(args.widths, x, y, args.nets,
                                                          "unfold"), args.nets),
        f"mixed-bf16-{args.nets}": (lambda: batched_step(args.widths, x, y, args.nets,
                                                         "mixed"), args.nets),
        "plain-fp32-paperorder": (lambda: plain_step(args.widths, x, y, "fp32", False, True), 1),
        "plain-bf16-paperorder": (lambda: plain_step(args.widths, x, y, "bf16", False, True), 1),
        f"mixed-bf16-{args.nets}-paperorder": (
            lambda: batched_step(args.widths, x, y, args.nets, "mixed", paper_order=True),
            args.nets),
        f"batched-fp32-{args.nets}": (
            lambda: batched_step(args.widths, x, y, args.nets, precision="fp32"), args.nets),
        f"batched-fp32-{args.nets}-paperorder": (
            lambda: batched_step(args.widths, x, y, args.nets, precision="fp32",
                                 paper_order=True), args.nets),
    }
    if args.variants:
        unknown = set(args.variants) - set(variants)
        if unknown:
            ap.error(f"unknown variants {sorted(unknown)}; choose from {list(variants)}")
        variants = {k: v for k, v in variants.items() if k in args.variants}
    results = {}
    tf32_saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with cudnn_autotune(dev):
        steps_of, times = {}, {name: [] for name in variants}
        for rnd in range(args.repeats):  # rounds over all variants: load drifts hit all alike
            for name, (make, _) in variants.items():
                tf32 = name == "plain-tf32"
                torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
                if name not in steps_of:
                    steps_of[name] = make()
                times[name].append(time_steps(steps_of[name], args.steps,
                                              args.warmup if rnd == 0 else 0, dev))
                if args.repeats == 1:
                    del steps_of[name]  # one round: free each variant's memory as before
        for name, (_, nets) in variants.items():
            sec = sorted(times[name])[len(times[name]) // 2]  # median over rounds
            results[name] = {"s_per_step": sec, "s_per_net_step": sec / nets,
                             "tflops": flop_per_net_step * nets / sec / 1e12}
            print(f"{name:28s} {sec * 1e3:9.2f} ms/step {sec / nets * 1e3:9.2f} ms/net "
                  f"{results[name]['tflops']:8.2f} TFLOP/s", flush=True)
        steps_of.clear()
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32_saved

        acts = [torch.profiler.ProfilerActivity.CPU]
        if dev.type == "cuda":
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        sort = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
        tables = []
        for impl in args.profile_impls:
            step = batched_step(args.widths, x, y, args.nets, impl)
            time_steps(step, 1, args.warmup, dev)
            with torch.profiler.profile(activities=acts) as prof:
                time_steps(step, 3, 0, dev)
            tables.append(f"## {args.nets} nets, conv_impl={impl}, 3 steps\n"
                          + prof.key_averages().table(sort_by=sort, row_limit=25))
    table = "\n\n".join(tables)
    print(table)
    record = {"device": str(dev), "device_name": torch.cuda.get_device_name(dev)
              if dev.type == "cuda" else "cpu", "torch": torch.__version__,
              "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "gflop_per_net_step": flop_per_net_step / 1e9, "results": results}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        args.out.with_suffix(".txt").write_text(table + "\n")


if __name__ == "__main__":
    main()
