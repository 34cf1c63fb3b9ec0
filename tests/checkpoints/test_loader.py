"""load_model from diffusers folders, .safetensors and .ckpt: same outputs as the in-memory model."""

from __future__ import annotations

import hashlib

import pytest
import torch

from sdstudio.checkpoints.io import write_safetensors
from sdstudio.devices import resolve_dtype
from sdstudio.errors import SDStudioError
from sdstudio.models import loader
from sdstudio.models.loader import load_model
from sdstudio.models.save import save_single_file
from tests.checkpoints.conftest import original_state_dict

FORMATS = ("diffusers", "safetensors", "ckpt")


@torch.no_grad()
def component_outputs(model) -> dict[str, torch.Tensor]:
    """UNet noise prediction, VAE decode and text hidden states for fixed seeded inputs (as fp32, CPU)."""
    param = next(model.unet.parameters())
    dev, dt = param.device, param.dtype
    g = torch.Generator().manual_seed(0)
    unet_cfg = model.unet.config
    sample = torch.randn(1, unet_cfg.in_channels, 8, 8, generator=g)  # (B, C, h, w)
    context = torch.randn(1, 77, unet_cfg.cross_attention_dim, generator=g)  # (B, T, D)
    extra = {}
    if model.family.name == "sdxl":
        pooled = model.text_encoders[1].config.projection_dim
        extra["added_cond_kwargs"] = {
            "text_embeds": torch.randn(1, pooled, generator=g).to(dev, dt),
            "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]).to(dev, dt),
        }
    unet_out = model.unet(
        sample.to(dev, dt), torch.tensor([500], device=dev), context.to(dev, dt), **extra
    ).sample
    out = {"unet": unet_out}
    latents = torch.randn(1, model.latent_channels, 8, 8, generator=g)
    out["vae"] = model.vae.decode(latents.to(dev, dt)).sample
    for i, (tok, enc) in enumerate(zip(model.tokenizers, model.text_encoders, strict=True)):
        ids = tok("a photo of a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
        out[f"ids{i}"] = ids
        out[f"text{i}"] = enc(ids.to(dev)).last_hidden_state
    return {k: v.cpu().float() if v.is_floating_point() else v.cpu() for k, v in out.items()}


def assert_same_weights(model, ref):
    """Bit-identical tensors in the same layout: contiguous, own storage, 64-byte aligned (as allocated)."""
    for part in ("unet", "vae"):
        got, want = getattr(model, part).state_dict(), getattr(ref, part).state_dict()
        assert got.keys() == want.keys(), part
        for key, value in got.items():
            assert torch.equal(value, want[key]), f"{part}.{key}"
            assert loader._is_owned(value), f"{part}.{key} is a view or misaligned"
    for enc in model.text_encoders:
        assert all(loader._is_owned(v) for v in enc.state_dict().values())


def assert_same_outputs(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", ["sd1", "sd1-inpaint", "sd2", "sd2-v", "sdxl"])
def test_each_format_loads_identical_model(saved_models, name, fmt, tmp_path):
    entry = saved_models[name]
    model = load_model(entry[fmt], dtype=torch.float32, cache_dir=tmp_path)
    ref = entry["model"]
    assert model.arch == ref.arch
    assert model.is_inpainting == ref.is_inpainting
    assert model.prediction_type == ref.prediction_type
    assert model.dtype == torch.float32 and next(model.unet.parameters()).dtype == torch.float32
    assert not any(p.requires_grad for p in model.unet.parameters())
    assert_same_weights(model, ref)
    # Same weights in the same layout, same process: the same kernels run, so outputs are exact.
    assert_same_outputs(component_outputs(model), component_outputs(ref))


def test_model_fields_and_hashes(saved_models, tmp_path):
    entry = saved_models["sd1"]
    single = load_model(entry["safetensors"], dtype=torch.float32, cache_dir=tmp_path)
    assert single.name == "sd1" and single.path == str(entry["safetensors"])
    assert single.model_hash == hashlib.sha256(entry["safetensors"].read_bytes()).hexdigest()[:10]
    assert (tmp_path / "hashes.json").is_file()
    folder = load_model(entry["diffusers"], dtype=torch.float32, cache_dir=tmp_path)
    unet_file = entry["diffusers"] / "unet" / "diffusion_pytorch_model.safetensors"
    assert folder.model_hash == hashlib.sha256(unet_file.read_bytes()).hexdigest()[:10]
    assert folder.name == "sd1-diffusers"
    for m in (single, folder):
        assert m.scheduler_config["beta_schedule"] == "scaled_linear"
        assert m.scheduler_config["num_train_timesteps"] == 1000
        assert not any(k.startswith("_") for k in m.scheduler_config)


def test_precision_switch(saved_models, tmp_path):
    model = load_model(saved_models["sd1"]["safetensors"], precision="bf16", cache_dir=tmp_path)
    assert model.dtype == torch.bfloat16
    assert {p.dtype for m in (model.unet, model.vae, *model.text_encoders) for p in m.parameters()} == {
        torch.bfloat16
    }
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu, cpu_bf16=True) == torch.bfloat16
    assert resolve_dtype("auto", cpu, cpu_bf16=False) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("fp32", torch.device("cuda")) == torch.float32
    with pytest.raises(SDStudioError, match="unknown precision 'fp8'"):
        resolve_dtype("fp8", cpu)


def test_prediction_type_override(saved_models, tmp_path):
    model = load_model(saved_models["sd2-v"]["safetensors"], prediction_type="epsilon", cache_dir=tmp_path)
    assert model.arch == "sd2" and model.prediction_type == "epsilon"
    folder = load_model(saved_models["sd2"]["diffusers"], prediction_type="v", cache_dir=tmp_path)
    assert folder.arch == "sd2-v" and folder.scheduler_config["prediction_type"] == "v_prediction"


def test_no_default_model_yet(tmp_path, monkeypatch):
    monkeypatch.setattr(loader, "DEFAULT_MODEL_DIR", tmp_path / "default-model")
    with pytest.raises(SDStudioError, match="no default model shipped yet; pass --model PATH"):
        load_model(None)


def test_file_that_does_not_fit_the_shipped_config(tiny_models, tmp_path):
    """Without our embedded configs a tiny file is checked against the full-size sd1 config."""
    _, sd = original_state_dict(tiny_models["sd1"])
    path = write_safetensors(sd, tmp_path / "odd.safetensors")
    with pytest.raises(SDStudioError) as info:
        load_model(path, cache_dir=tmp_path)
    message = str(info.value)
    assert "odd.safetensors does not match the sd1 UNet layout" in message
    assert "missing" in message and "shape mismatches" in message and "vs (320," in message


def test_missing_text_encoder_keys_are_reported(tiny_models, saved_models, tmp_path):
    from safetensors import safe_open

    with safe_open(str(saved_models["sd1"]["safetensors"]), framework="pt") as f:
        metadata = f.metadata()
        sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    del sd["cond_stage_model.transformer.text_model.final_layer_norm.weight"]
    path = write_safetensors(sd, tmp_path / "cut.safetensors", metadata)
    with pytest.raises(SDStudioError, match=r"text_encoder layout: 1 missing \(final_layer_norm.weight\)"):
        load_model(path, cache_dir=tmp_path)


def test_separate_vae_file(saved_models, tmp_path):
    from sdstudio.families.sd.keymap import vae_to_original
    from sdstudio.models.tiny import tiny_sd1

    other = tiny_sd1(seed=7).vae
    ldm = {
        "first_stage_model." + k: v
        for k, v in vae_to_original(other.state_dict(), dict(other.config)).items()
    }
    vae_file = write_safetensors(ldm, tmp_path / "my-vae.safetensors")
    model = load_model(
        saved_models["sd1"]["safetensors"], dtype=torch.float32, vae_path=vae_file, cache_dir=tmp_path
    )
    assert model.vae_name == "my-vae"
    assert model.vae_hash == hashlib.sha256(vae_file.read_bytes()).hexdigest()[:10]
    for k, v in other.state_dict().items():
        assert torch.equal(model.vae.state_dict()[k], v), k
    with pytest.raises(SDStudioError, match="VAE not found"):
        load_model(saved_models["sd1"]["safetensors"], vae_path=tmp_path / "nope.pt", cache_dir=tmp_path)


def test_half_single_file(tiny_models, tmp_path):
    path = save_single_file(tiny_models["sd1"], tmp_path / "half.safetensors", half=True)
    model = load_model(path, dtype=torch.float32, cache_dir=tmp_path)
    ref = tiny_models["sd1"].unet.state_dict()
    for k, v in model.unet.state_dict().items():
        assert torch.equal(v, ref[k].half().float()), k
    with pytest.raises(SDStudioError, match="must end in .safetensors"):
        save_single_file(tiny_models["sd1"], tmp_path / "x.ckpt")


def test_foreign_diffusers_folder_architecture_is_inferred(saved_models, tmp_path):
    """A folder not written by sdstudio (no _sdstudio_arch): SD 2.x by its OpenCLIP "!" padding."""
    import json
    import shutil

    for name, expected in (("sd2", "sd2"), ("sd1", "sd1"), ("sdxl", "sdxl")):
        folder = shutil.copytree(saved_models[name]["diffusers"], tmp_path / name)
        index = json.loads((folder / "model_index.json").read_text())
        index.pop("_sdstudio_arch")
        (folder / "model_index.json").write_text(json.dumps(index))
        model = load_model(folder, dtype=torch.float32, cache_dir=tmp_path)
        assert model.arch == expected
        assert model.tokenizers[-1].pad_token == ("<|endoftext|>" if name == "sd1" else "!")


def test_device_and_precision_arguments_are_checked(saved_models, tmp_path):
    with pytest.raises(SDStudioError, match="unknown precision"):
        load_model(saved_models["sd1"]["safetensors"], precision="int4", cache_dir=tmp_path)
    with pytest.raises(SDStudioError, match="unknown device"):
        load_model(saved_models["sd1"]["safetensors"], device="tpu9", cache_dir=tmp_path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_inspect_model_without_building_it(saved_models, fmt):
    from sdstudio.models.loader import inspect_model

    for name in ("sd1-inpaint", "sd2-v", "sdxl"):
        model = saved_models[name]["model"]
        info = inspect_model(saved_models[name][fmt])
        assert info.arch == name and info.model_arch == model.arch
        assert info.inpainting == model.is_inpainting and info.prediction_type == model.prediction_type
        modules = [model.unet, model.vae, *model.text_encoders]
        assert info.parameters == sum(p.numel() for m in modules for p in m.parameters())
        assert info.dtypes == ("float32",)
        assert info.format == {"diffusers": "diffusers", "safetensors": "safetensors", "ckpt": "pickle"}[fmt]


def test_vae_of_another_shape_is_refused(saved_models, tmp_path):
    from sdstudio.families.sd.keymap import vae_to_original
    from sdstudio.models.tiny import tiny_sdxl

    vae = tiny_sdxl().vae
    ldm = {
        "first_stage_model." + k: v for k, v in vae_to_original(vae.state_dict(), dict(vae.config)).items()
    }
    ldm["first_stage_model.decoder.conv_out.weight"] = torch.zeros(3, 8, 5, 5)
    vae_file = write_safetensors(ldm, tmp_path / "odd-vae.safetensors")
    with pytest.raises(
        SDStudioError, match=r"odd-vae.safetensors does not match the model's VAE layout: 1 shape mism"
    ):
        load_model(saved_models["sd1"]["safetensors"], vae_path=vae_file, cache_dir=tmp_path)
