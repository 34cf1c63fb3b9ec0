"""``sdstudio convert``: diffusers folder <-> single file through the real CLI entry point."""

from __future__ import annotations

import torch
from safetensors import safe_open

from sdstudio.cli import main
from sdstudio.cli.convert import target_layout
from sdstudio.models.loader import load_model


def _all_weights(model):
    sd = {}
    for prefix, module in [("unet.", model.unet), ("vae.", model.vae)] + [
        (f"te{i}.", m) for i, m in enumerate(model.text_encoders)
    ]:
        sd.update({prefix + k: v for k, v in module.state_dict().items()})
    return sd


def test_convert_both_ways_is_lossless(saved_models, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SDSTUDIO_CACHE_DIR", str(tmp_path / "cache"))
    src = saved_models["sdxl"]["diffusers"]
    single = tmp_path / "xl.safetensors"
    assert main(["convert", str(src), str(single)]) == 0
    assert "wrote original fp32 model" in capsys.readouterr().out
    with safe_open(str(single), framework="pt") as f:
        assert "conditioner.embedders.1.model.text_projection" in f.keys()  # noqa: SIM118
    folder = tmp_path / "xl-diffusers"
    assert main(["convert", str(single), str(folder), "--to", "diffusers"]) == 0
    a = _all_weights(load_model(src, dtype=torch.float32, cache_dir=tmp_path))
    b = _all_weights(load_model(folder, dtype=torch.float32, cache_dir=tmp_path))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "cache" / "hashes.json").is_file()


def test_convert_half_and_refusals(saved_models, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SDSTUDIO_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "half.safetensors"
    assert main(["convert", str(saved_models["sd1"]["ckpt"]), str(out), "--half"]) == 0
    with safe_open(str(out), framework="pt") as f:
        assert f.get_tensor("model.diffusion_model.input_blocks.0.0.weight").dtype == torch.float16
    assert main(["convert", str(saved_models["sd1"]["ckpt"]), str(out)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "missing.safetensors"), str(tmp_path / "o.safetensors")]) == 2
    assert "model not found" in capsys.readouterr().err


def test_target_layout_from_destination_name():
    assert target_layout("out/model.safetensors", None) == "original"
    assert target_layout("out/model", None) == "diffusers"
    assert target_layout("out/model.safetensors", "diffusers") == "diffusers"
