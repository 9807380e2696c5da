"""Figures of kernel priors: sampled vs real kernel grids, and the 2-D latent space (App. D)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from dwp.priors.base import KernelPrior
from dwp.priors.vae import KernelVAE
from dwp.runtime import atomic_path


def kernel_grid(w: torch.Tensor, nrow: int | None = None) -> torch.Tensor:
    """Tile kernels (n, k, k) into one (H, W) image, separated by NaN (drawn as background)."""
    from torchvision.utils import make_grid

    n = w.shape[0]
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    return make_grid(w.detach().float().cpu()[:, None], nrow=nrow, padding=1,
                     pad_value=float("nan"))[0]


def _show(ax, img: torch.Tensor, vmax: float, title: str) -> None:
    import matplotlib

    cmap = matplotlib.colormaps["gray"].with_extremes(bad="#d0d0ff")
    ax.imshow(img.numpy(), cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest")
    ax.set_title(title)
    ax.axis("off")


def _scale(real: torch.Tensor | None, samples: torch.Tensor) -> float:
    ref = real if real is not None else samples
    return float(torch.quantile(ref.abs().flatten().float()[:1_000_000], 0.99)) or 1.0


def plot_samples(
    samples: torch.Tensor,
    real: torch.Tensor | None,
    out: str | Path,
    title: str = "",
    means: torch.Tensor | None = None,
) -> Path:
    """Save a PNG of sampled kernels (n, k, k) beside real ones, on one shared grey scale.

    ``means`` (optional, VAE): the decoder means E[w|z] of the same z's, shown in between.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vmax = _scale(real, samples)
    panels = [(samples, f"samples w ~ p(w) ({samples.shape[0]})")]
    if means is not None:
        panels.append((means, "decoder means E[w|z], same z"))
    if real is not None:
        panels.append((real, f"real kernels ({real.shape[0]})"))
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5 * len(panels), 5.6), squeeze=False, layout="constrained"
    )
    for ax, (w, name) in zip(axes[0], panels, strict=True):
        _show(ax, kernel_grid(w), vmax, name)
    fig.suptitle(f"{title}  (grey scale: ±{vmax:.3g})")
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return Path(out)


@torch.no_grad()
def plot_latent(
    vae: KernelVAE, real: torch.Tensor, out: str | Path, grid: int = 12, span: float = 2.5,
    title: str = "",
) -> Path:
    """Appendix D: encoder means of real kernels coloured by kernel norm, and decoded z grid.

    Only for ``z_dim == 2``. The right panel decodes the means of p(w|z) on a ``grid`` x ``grid``
    lattice over [-span, span]^2 (z_1 left to right, z_2 bottom to top).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if vae.z_dim != 2:
        raise ValueError("plot_latent needs a 2-D latent space")
    dev = vae.device
    real = real.to(dev)
    mu_z = torch.cat([vae.encode(real[i : i + 8192])[0] for i in range(0, real.shape[0], 8192)])
    norms = real.flatten(1).norm(dim=1)
    lin = torch.linspace(-span, span, grid, device=dev)
    z2, z1 = torch.meshgrid(lin.flip(0), lin, indexing="ij")  # rows: z_2 from top (high) down
    decoded, _ = vae.decode(torch.stack([z1.flatten(), z2.flatten()], 1))
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.6), layout="constrained")
    sc = axes[0].scatter(*mu_z.cpu().T.numpy(), c=norms.cpu().numpy(), s=3, cmap="viridis")
    fig.colorbar(sc, ax=axes[0], label="kernel L2 norm")
    axes[0].set_xlabel("$z_1$ (mean of r(z|w))")
    axes[0].set_ylabel("$z_2$")
    axes[0].set_title(f"latent means of {real.shape[0]} real kernels")
    axes[0].set_aspect("equal", adjustable="datalim")
    vmax = _scale(real.cpu(), decoded.cpu())
    _show(axes[1], kernel_grid(decoded, nrow=grid), vmax,
          f"decoder means over z in [-{span}, {span}]²")
    fig.suptitle(title)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return Path(out)


def sample_for_plot(
    prior: KernelPrior, n: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(n kernels from ``prior``, their decoder means for a VAE else None), seeded, on CPU."""
    dev = next(iter(prior.buffers()), None)
    dev = dev.device if dev is not None else next(prior.parameters(), torch.empty(0)).device
    with torch.no_grad():
        samples = prior.sample(n, generator=torch.Generator(device=dev).manual_seed(seed))
        means = None
        if isinstance(prior, KernelVAE):
            gen = torch.Generator(device=dev).manual_seed(seed)  # the same z's
            means = prior.sample(n, generator=gen, noise=False).cpu()
    return samples.cpu(), means
