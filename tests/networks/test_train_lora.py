"""train lora: peft adapter trained on a tiny model, exported in kohya format, loaded back by the tag."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open

from sdstudio.config import GenerationRequest
from sdstudio.models.tiny import tiny_sd1, tiny_sdxl
from sdstudio.networks import NetworkLibrary, activate_networks
from sdstudio.pipelines import txt2img
from sdstudio.training.data import load_image_folder
from sdstudio.training.loop import LoopConfig
from sdstudio.training.lora import ATTENTION, CONVS, EXTRA, LoraConfig, train_lora


def _data(folder, n: int = 4, size: int = 32):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = np.zeros((size, size, 3), np.uint8)
        arr[..., 0] = 200 + 10 * i  # red squares
        Image.fromarray(arr).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text("zqx square")
    return load_image_folder(folder, size)


def _train(model, tmp_path, steps: int = 6, targets=ATTENTION, **loop):
    data = _data(tmp_path / "data")
    cfg = LoopConfig(out_dir=tmp_path / "run", steps=steps, batch_size=2, lr=5e-2, warmup_steps=1,
                     sample_every=0, progress=False, cpu=True, **loop)  # fmt: skip
    lora = LoraConfig(
        rank=2, alpha=1.0, name="zqx", size=32, preview_prompts=("zqx square",), preview_steps=2
    )
    return train_lora(model, data, cfg, lora)


def _unet_out(model, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = model.unet.config
    x = torch.randn(1, c.in_channels, 16, 16, generator=g)
    ctx = torch.randn(1, 77, c.cross_attention_dim, generator=g)
    kw = {}
    if model.family.name == "sdxl":
        kw["added_cond_kwargs"] = {
            "text_embeds": torch.randn(1, 32, generator=g),
            "time_ids": torch.ones(1, 6),
        }
    with torch.no_grad():
        return model.unet(x, torch.tensor([500]), encoder_hidden_states=ctx, **kw).sample


def test_trained_lora_loads_back_by_tag_and_changes_the_output(tmp_path):
    trained = tiny_sd1()
    result = _train(trained, tmp_path, targets=ATTENTION + EXTRA + CONVS)  # convs: LoCon export
    assert result.steps == 6 and (tmp_path / "run" / "samples.png").is_file()
    path = tmp_path / "run" / "final" / "zqx.safetensors"
    with safe_open(str(path), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert all(
        k.startswith("lora_unet_")
        and k.rsplit(".", 2)[-2:][0] in ("lora_down", "lora_up", "alpha")
        or k.endswith(".alpha")
        for k in keys
    )
    assert meta["ss_network_dim"] == "2" and meta["ss_base_model_version"] == "sd_v1"

    fresh = tiny_sd1()  # the same base weights, no adapter
    (tmp_path / "models" / "Lora").mkdir(parents=True)
    path.rename(tmp_path / "models" / "Lora" / "zqx.safetensors")
    library = NetworkLibrary.from_models_dir(tmp_path / "models")
    base = _unet_out(fresh)
    request = GenerationRequest(prompt="zqx square <lora:zqx:1>")
    with activate_networks(fresh, library, request):
        merged = _unet_out(fresh)
    adapted = _unet_out(trained)  # peft's unmerged adapter: W x + (alpha/r) B A x
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-5)
    assert (merged - base).abs().max() > 1e-3
    req = GenerationRequest(prompt="zqx square", width=32, height=32, steps=3, seed=2, sampler_name="Euler")
    plain = np.asarray(txt2img(fresh, req)[0].image)
    tagged = np.asarray(
        txt2img(fresh, req.replace(prompt="zqx square <lora:zqx:1>"), networks=library)[0].image
    )
    assert not np.array_equal(plain, tagged)


def test_resume_continues_exactly(tmp_path):
    straight = tiny_sd1()
    _train(straight, tmp_path / "a", steps=4)
    resumed = tiny_sd1()
    _train(resumed, tmp_path / "b", steps=2)
    again = tiny_sd1()
    _train(again, tmp_path / "b", steps=4, resume=True)
    a = tmp_path / "a" / "run" / "final" / "zqx.safetensors"
    b = tmp_path / "b" / "run" / "final" / "zqx.safetensors"
    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        for k in fa.keys():  # noqa: SIM118
            torch.testing.assert_close(fa.get_tensor(k), fb.get_tensor(k), rtol=1e-5, atol=1e-6)


def test_sdxl_export_uses_sgm_names(tmp_path):
    model = tiny_sdxl()
    _train(model, tmp_path, steps=2)
    with safe_open(str(tmp_path / "run" / "final" / "zqx.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("lora_unet_input_blocks_") for k in keys), keys[:3]
    fresh = tiny_sdxl()
    (tmp_path / "models" / "Lora").mkdir(parents=True)
    (tmp_path / "run" / "final" / "zqx.safetensors").rename(tmp_path / "models" / "Lora" / "zqx.safetensors")
    with activate_networks(
        fresh, NetworkLibrary.from_models_dir(tmp_path / "models"), GenerationRequest(prompt="<lora:zqx:1>")
    ):
        merged = _unet_out(fresh)
    torch.testing.assert_close(merged, _unet_out(model), rtol=1e-4, atol=1e-5)
