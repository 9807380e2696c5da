"""benchmarks/prior_samples.py: the decoder sd by |z| band against known values."""

from __future__ import annotations

import math

import torch

from dwp.priors import KernelVAE


def test_decoder_sd_by_radius_of_a_linear_vae(benchmark_script):
    mod = benchmark_script("prior_samples")
    vae = KernelVAE(3, z_dim=2, arch="linear")
    with torch.no_grad():
        vae.decoder.linear.weight.zero_()  # the mean is b for every z
        vae.decoder.linear.bias.fill_(0.5)  # norm 0.5 * 3 = 1.5
        vae.decoder.log_var.fill_(math.log(0.04))  # sd 0.2 everywhere
    rows = mod.decoder_sd_by_radius(vae, n=4000)
    assert math.isclose(sum(r["share"] for r in rows), 1.0, rel_tol=1e-6)
    # |z| of a 2-d standard normal is Rayleigh: P(|z| < 1) = 1 - e^(-1/2) = 0.393
    assert abs(rows[0]["share"] - (1 - math.exp(-0.5))) < 0.03
    assert all(math.isclose(r["decoder_sd"], 0.2, rel_tol=1e-5) for r in rows)
    assert all(math.isclose(r["decoder_mean_norm"], 1.5, rel_tol=1e-5) for r in rows)
    # the decoder sd is read through the cap: raw sd 1, capped below the cap's 0.2
    with torch.no_grad():
        vae.decoder.log_var.fill_(0.0)
    capped_vae = KernelVAE(3, z_dim=2, arch="linear", max_log_var=math.log(0.04))
    capped_vae.load_state_dict(vae.state_dict())
    assert all(r["decoder_sd"] > 0.99 for r in mod.decoder_sd_by_radius(vae, n=4000))
    assert all(r["decoder_sd"] < 0.2 for r in mod.decoder_sd_by_radius(capped_vae, n=4000))
