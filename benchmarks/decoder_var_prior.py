"""Copy a prior folder with a floor or a cap on VAE layers' decoder log-variance (not in the paper).

The VAE priors fitted here give p(w | z) per-entry standard deviations about half the size of
the kernels' entries (conv2: median decoder log-variance -10.75 against a per-entry kernel power
of -9.2), so the prior term pulls each kernel hard towards a decoder mean (BENCHMARKS.md,
"Diagnosis"). A floor f on the decoder log-variance (``KernelVAE(min_log_var=f)``: the
log-variance becomes f + softplus(v - f)) bounds that pull while keeping the learned decoder
means. A cap c (``max_log_var``: c - softplus(c - v)) does the opposite: it sharpens p(w | z)
where the decoder is broad. The new prior is still a proper density; no retraining is involved.

    python benchmarks/decoder_var_prior.py benchmarks/priors/notmnist-cpu3aug \
        --floor conv2=-9.5 --out runs/prior-floor-9.5
    python benchmarks/decoder_var_prior.py benchmarks/priors/notmnist-cpu3aug \
        --cap conv2=-11 --out runs/prior-cap-11

Layers not named are copied unchanged. Each changed layer's ``prior.json`` keeps the original's
metadata and adds ``derived_from`` (folder, sha256, floor, cap). The output folder is written
under a temporary name and renamed when complete, and an existing one is refused.
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
from pathlib import Path

from dwp.priors import KernelVAE, load_prior, prior_layer_dirs, read_prior_meta, save_prior
from dwp.runtime import DwpError


def parse_layer_values(items: list[str], flag: str) -> dict[str, float]:
    """``["conv2=-9.5", ...]`` -> ``{"conv2": -9.5}``; ``DwpError`` on a malformed item."""
    values: dict[str, float] = {}
    for item in items:
        layer, sep, value = item.partition("=")
        try:
            f = float(value)
        except ValueError:
            f = math.nan
        if not sep or not layer or not math.isfinite(f):
            raise DwpError(f"{flag} {item!r}: write LAYER=LOG_VARIANCE, e.g. conv2=-9.5")
        values[layer] = f
    return values


def decoder_var_prior_dir(
    src: Path, out: Path, floors: dict[str, float] | None = None,
    caps: dict[str, float] | None = None,
) -> Path:
    """Write ``out``: the layer priors of ``src``, those named in ``floors`` / ``caps`` with that
    decoder log-variance floor (``min_log_var``) / cap (``max_log_var``)."""
    floors, caps = floors or {}, caps or {}
    layers = {p.name: p for p in prior_layer_dirs(src)}
    if not layers:
        raise DwpError(f"{src} holds no priors (no */prior.json)")
    unknown = sorted((set(floors) | set(caps)) - set(layers))
    if unknown:
        raise DwpError(f"{src} has no layer {unknown}; its layers are {sorted(layers)}")
    if out.exists():
        raise DwpError(f"{out} exists: choose another --out or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, folder in layers.items():
            if name not in floors and name not in caps:
                shutil.copytree(folder, tmp / name)
                continue
            prior = load_prior(folder)
            if not isinstance(prior, KernelVAE):
                raise DwpError(f"{folder} is a {prior.family} prior: only a VAE has a decoder "
                               f"variance to floor or cap")
            meta = read_prior_meta(folder)
            cfg = prior.config()
            change = {"min_log_var": floors.get(name), "max_log_var": caps.get(name)}
            cfg.update({k: v for k, v in change.items() if v is not None})
            changed = KernelVAE(**cfg)
            changed.load_state_dict(prior.state_dict())
            # save_prior rewrites the format keys (config, sha256, ...) and keeps the rest
            meta["derived_from"] = {"prior": str(folder), "sha256": meta.get("sha256"),
                                    **change, "by": "benchmarks/decoder_var_prior.py"}
            save_prior(changed, tmp / name, meta)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prior_dir", type=Path, help="a prior folder of a network (dwp train-prior)")
    ap.add_argument("--floor", nargs="+", default=[], metavar="LAYER=LOGVAR",
                    help="decoder log-variance floor per layer, e.g. conv2=-9.5")
    ap.add_argument("--cap", nargs="+", default=[], metavar="LAYER=LOGVAR",
                    help="decoder log-variance cap per layer, e.g. conv2=-11")
    ap.add_argument("--out", type=Path, required=True, help="the new prior folder")
    args = ap.parse_args()
    if not args.floor and not args.cap:
        ap.error("give --floor and/or --cap")
    try:
        out = decoder_var_prior_dir(args.prior_dir, args.out,
                                    parse_layer_values(args.floor, "--floor"),
                                    parse_layer_values(args.cap, "--cap"))
    except DwpError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
