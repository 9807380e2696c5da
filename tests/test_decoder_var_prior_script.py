"""benchmarks/decoder_var_prior.py: a floored or capped copy of a prior folder, or nothing."""

from __future__ import annotations

import json

import pytest
import torch

from dwp.priors import KernelVAE, StandardNormal, load_prior, load_prior_dir, save_prior
from dwp.runtime import DwpError


def _prior_dir(tmp_path):
    src = tmp_path / "prior"
    torch.manual_seed(0)
    save_prior(KernelVAE(7), src / "conv1", {"layer": "conv1", "training": {"epochs": 3}})
    save_prior(KernelVAE(5), src / "conv2", {"layer": "conv2", "training": {"epochs": 4}})
    save_prior(StandardNormal(5), src / "conv3", {"layer": "conv3"})
    return src


def test_decoder_var_prior_dir_floors_named_layers_and_copies_the_rest(tmp_path, benchmark_script):
    mod = benchmark_script("decoder_var_prior")
    src = _prior_dir(tmp_path)
    out = mod.decoder_var_prior_dir(src, tmp_path / "floored",
                                    mod.parse_layer_values(["conv2=-9.5"], "--floor"))
    before, after = load_prior_dir(src), load_prior_dir(out)
    assert sorted(after) == ["conv1", "conv2", "conv3"]
    assert after["conv2"].min_log_var == -9.5 and before["conv2"].min_log_var is None
    for key, value in before["conv2"].state_dict().items():
        torch.testing.assert_close(after["conv2"].state_dict()[key], value)
    z = torch.randn(200, 4)
    with torch.no_grad():
        mu0, lv0 = before["conv2"].decode(z)
        mu1, lv1 = after["conv2"].decode(z)
    torch.testing.assert_close(mu1, mu0)  # same decoder means, variances floored
    assert float(lv1.min()) >= -9.5 and bool((lv1 >= lv0).all())
    meta = json.loads((out / "conv2" / "prior.json").read_text())
    assert meta["training"] == {"epochs": 4} and meta["layer"] == "conv2"
    assert meta["derived_from"]["min_log_var"] == -9.5
    assert meta["derived_from"]["sha256"] == json.loads(
        (src / "conv2" / "prior.json").read_text())["sha256"]
    for layer in ("conv1", "conv3"):  # unnamed layers are byte-for-byte copies
        for name in ("prior.json", "prior.safetensors"):
            assert (out / layer / name).read_bytes() == (src / layer / name).read_bytes()
    assert load_prior(out / "conv1").min_log_var is None


def test_decoder_var_prior_dir_refuses_bad_input_and_leaves_nothing(tmp_path, benchmark_script):
    mod = benchmark_script("decoder_var_prior")
    src = _prior_dir(tmp_path)
    for bad in (["conv2"], ["conv2=x"], ["=1"], ["conv2=inf"]):
        with pytest.raises(DwpError, match="LAYER=LOG_VARIANCE"):
            mod.parse_layer_values(bad, "--floor")
    with pytest.raises(DwpError, match="no layer"):
        mod.decoder_var_prior_dir(src, tmp_path / "a", {"conv9": -9.0})
    with pytest.raises(DwpError, match="only a VAE"):
        mod.decoder_var_prior_dir(src, tmp_path / "b", caps={"conv2": -9.0, "conv3": -9.0})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prior"]  # no partial folder
    mod.decoder_var_prior_dir(src, tmp_path / "c", {"conv2": -9.0})
    with pytest.raises(DwpError, match="exists"):
        mod.decoder_var_prior_dir(src, tmp_path / "c", {"conv2": -9.0})
    with pytest.raises(DwpError, match="below max_log_var"):  # floor above cap
        mod.decoder_var_prior_dir(src, tmp_path / "d", {"conv2": -8.0}, {"conv2": -9.0})
    assert not (tmp_path / "d").exists()


def test_decoder_var_prior_dir_caps(tmp_path, benchmark_script):
    mod = benchmark_script("decoder_var_prior")
    src = _prior_dir(tmp_path)
    out = mod.decoder_var_prior_dir(src, tmp_path / "capped", caps={"conv2": -11.0})
    before, after = load_prior(src / "conv2"), load_prior(out / "conv2")
    assert (after.max_log_var, after.min_log_var) == (-11.0, None)
    z = torch.randn(200, 4)
    with torch.no_grad():
        mu0, lv0 = before.decode(z)
        mu1, lv1 = after.decode(z)
    torch.testing.assert_close(mu1, mu0)
    assert float(lv1.max()) < -11.0 and bool((lv1 <= lv0).all())
    derived = json.loads((out / "conv2" / "prior.json").read_text())["derived_from"]
    assert (derived["max_log_var"], derived["min_log_var"]) == (-11.0, None)
