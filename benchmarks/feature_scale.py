"""Scale of the frozen random features of ``dwp experiment features`` (paper Fig. 3), per method.

Why does Xavier beat dwp / filters at small widths on our CPU kernels? This script measures, for
each width factor k and method, on a class-balanced subset of MNIST *training* images (no test
data is read):

- ``w1_std`` / ``w2_std``: per-entry std of the conv1 / conv2 kernels as initialised, and
  ``xavier_w2_std`` the Xavier-normal std for that conv2 shape;
- ``b2_abs``: mean |bias| of conv2 (PyTorch's default bias init, untouched by every method);
- ``conv2_signal_std``: std over images and positions of conv2's pre-activation *without* its
  bias (how much the kernels respond to the input), and ``signal_to_bias`` its ratio to
  ``b2_abs``;
- ``feat_rms``: RMS of the flattened features the linear head sees, ``feat_std``: the mean over
  features of each feature's std over images, ``flat_frac``: fraction of features whose std over
  images is < 5 % of the median feature std of the same net (near-constant; scale-free);
- ``ridge_val_acc``: accuracy of a closed-form ridge-regression readout (one-vs-all, on features
  standardised with the fitting images' statistics) fitted on the first 2/3 of the images and
  scored on the last 1/3 -- both *training* images: a scale-free measure of how much
  linearly decodable information the frozen features carry.

Every number is averaged over ``--seeds`` nets (min / max also given for the ridge accuracy).

    python benchmarks/feature_scale.py --prior-dir runs/prior-notmnist \
        --kernels runs/kernels-notmnist-cpu --out benchmarks/results/feature-scale-cpu.json
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dwp.batched import BatchedModel
from dwp.data import class_balanced_subset, load_dataset
from dwp.experiments.common import init_factory, load_sources
from dwp.experiments.features import WIDTH_FACTORS, stacked_features
from dwp.nets import FConvMNIST
from dwp.runtime import atomic_write_json


@torch.no_grad()
def conv2_signal_std(model: BatchedModel, images: torch.Tensor) -> torch.Tensor:
    """Per-net std of conv2's bias-free pre-activation over images/positions: (n,)."""
    p = model.params
    out = []
    for i in range(model.n):
        h = F.conv2d(images, p["features.conv1.weight"][i], p["features.conv1.bias"][i])
        h = F.max_pool2d(F.leaky_relu(h, model.base.features.relu1.negative_slope), 2)
        out.append(F.conv2d(h, p["features.conv2.weight"][i]).std())
    return torch.stack(out)


@torch.no_grad()
def ridge_val_acc(x: torch.Tensor, y: torch.Tensor, lam: float = 1e-2) -> torch.Tensor:
    """Held-out accuracy of one-vs-all ridge regression on standardised features.

    x: (n, N, D) features of n nets; y: (N,). Fits on the first 2/3 of the N examples
    (standardised with their own mean/std), scores on the rest. Returns (n,).
    """
    n_fit = 2 * x.shape[1] // 3
    x = x.double()
    mu, sd = x[:, :n_fit].mean(1, keepdim=True), x[:, :n_fit].std(1, keepdim=True) + 1e-8
    x = (x - mu) / sd
    x = torch.cat([x, torch.ones_like(x[..., :1])], -1)
    xf, yf = x[:, :n_fit], y[:n_fit]
    t = F.one_hot(yf, 10).double().expand(x.shape[0], -1, -1)
    gram = xf.transpose(1, 2) @ xf
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype)
    w = torch.linalg.solve(gram + lam * n_fit * eye, xf.transpose(1, 2) @ t)
    return ((x[:, n_fit:] @ w).argmax(-1) == y[n_fit:]).double().mean(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prior-dir", type=Path, required=True)
    ap.add_argument("--kernels", type=Path, required=True)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--images", type=int, default=3000, help="MNIST training images used")
    ap.add_argument("--data-root", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/feature-scale-cpu.json"))
    args = ap.parse_args()

    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    methods = ("dwp", "filters", "xavier")
    sources = load_sources(methods, args.prior_dir, args.kernels)
    train = load_dataset("mnist", "train", args.data_root)
    train = train.subset(class_balanced_subset(train.labels, args.images, 0))
    seeds = list(range(args.seeds))
    rows = []
    for k in WIDTH_FACTORS:
        feats = {}
        for m in ("xavier", "dwp", "filters"):
            factory = init_factory(lambda k=k: FConvMNIST(width_factor=k), m, sources.get(m))
            model = BatchedModel(factory, seeds, device=torch.device("cpu"))
            x = stacked_features(model, train.images, 500, torch.device("cpu"))
            fstd = x.std(1)  # (n, D)
            flat = (fstd < 0.05 * fstd.median(1, keepdim=True).values).double().mean(1)
            sig = conv2_signal_std(model, train.images)
            w2 = model.params["features.conv2.weight"]
            fan_in, fan_out = w2.shape[2] * 25, w2.shape[1] * 25
            b2 = model.params["features.conv2.bias"].abs().mean(1)
            ridge = ridge_val_acc(x, train.labels)
            feats[m] = {
                "width_factor": k, "widths": list(model.base.widths), "method": m,
                "w1_std": float(model.params["features.conv1.weight"].std(dim=(1, 2, 3, 4))
                                .mean()),
                "w2_std": float(w2.std(dim=(1, 2, 3, 4)).mean()),
                "xavier_w2_std": (2.0 / (fan_in + fan_out)) ** 0.5,
                "b2_abs": float(b2.mean()),
                "conv2_signal_std": float(sig.mean()),
                "signal_to_bias": float((sig / b2).mean()),
                "feat_rms": float(x.pow(2).mean(dim=(1, 2)).sqrt().mean()),
                "feat_std": float(fstd.mean(1).mean()),
                "flat_frac": float(flat.mean()),
                "ridge_val_acc": float(ridge.mean()),
                "ridge_val_acc_min": float(ridge.min()),
                "ridge_val_acc_max": float(ridge.max()),
            }
        rows += [feats[m] for m in methods]
        for m in methods:
            r = feats[m]
            print(f"k={k:<7g} {m:8s} w2_std={r['w2_std']:.4f} (xavier {r['xavier_w2_std']:.4f}) "
                  f"signal={r['conv2_signal_std']:.4f} |b2|={r['b2_abs']:.4f} "
                  f"feat_rms={r['feat_rms']:.4f} feat_std={r['feat_std']:.4f} "
                  f"flat={r['flat_frac']:.2f} ridge={r['ridge_val_acc']:.3f}", flush=True)
    atomic_write_json(args.out, {
        "script": "benchmarks/feature_scale.py", "machine": f"CPU ({platform.processor()})",
        "torch_threads": torch.get_num_threads(), "seeds": args.seeds,
        "train_images": args.images, "prior_dir": str(args.prior_dir),
        "kernels": str(args.kernels), "seconds": round(time.perf_counter() - t0, 1),
        "rows": rows,
    })
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
