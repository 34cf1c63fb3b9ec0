"""LoRA / LyCORIS applied from prompt tags: merge equals the hand-made delta; weights restored bit for bit."""

from __future__ import annotations

import pytest
import torch

from sdstudio.config import GenerationRequest
from sdstudio.errors import SDStudioError
from sdstudio.networks import NetworkLibrary, activate_networks
from sdstudio.pipelines import txt2img
from tests.networks.helpers import (
    assert_same,
    conv3_layers,
    kohya_lora,
    linear_layers,
    module_of,
    peft_lora,
    save,
    snapshot,
)

# fp32 rounding: the same sum W + m * s * (up @ down) evaluated in another order
TOL = {"rtol": 1e-6, "atol": 1e-6}

# A1111/SGM (original UNet) names of tiny-SDXL layers, from the openaimodel layout: input_blocks.0 is
# conv_in; with layers_per_block=1 down block 0's resnet/attention pair is input_blocks.1.{0,1};
# resnet conv1 is in_layers.2.
SGM_NAMES = {
    "conv_in": "input_blocks.0.0",
    "down_blocks.0.resnets.0.conv1": "input_blocks.1.0.in_layers.2",
    **{
        f"down_blocks.0.attentions.0.transformer_blocks.0.attn1.{p}": (
            f"input_blocks.1.1.transformer_blocks.0.attn1.{p}"
        )
        for p in ("to_q", "to_k", "to_v")
    },
}


def _request(prompt: str, **kw) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, width=32, height=32, steps=3, seed=7, sampler_name="Euler", **kw)


def _expected(model, expected: dict, te_w: float, unet_w: float) -> dict:
    out = {}
    for (comp, path), (down, up, scale) in expected.items():
        w = module_of(model, comp, path).weight.detach().clone()
        mult = te_w if comp != "unet" else unet_w
        out[(comp, path)] = w + mult * scale * (up.flatten(1) @ down.flatten(1)).reshape(w.shape)
    return out


@pytest.mark.parametrize(
    "fixture, builder",
    [
        ("tiny_sd1", "kohya"),
        ("tiny_sd2", "kohya"),
        ("tiny_sdxl", "kohya_sgm"),
        ("tiny_sd1", "peft"),
        ("tiny_sdxl", "peft"),
    ],
)
def test_merge_equals_hand_made_delta(request, tmp_path, fixture, builder):
    model = request.getfixturevalue(fixture)
    if builder == "peft":
        sd, expected = peft_lora(model)
    else:
        sd, expected = kohya_lora(model, alpha=1.0, sgm_names=SGM_NAMES if builder == "kohya_sgm" else None)
    save(sd, tmp_path / "Lora" / "style.safetensors")
    library = NetworkLibrary.from_models_dir(tmp_path)
    before = snapshot(model)
    want = _expected(model, expected, te_w=0.7, unet_w=0.7)
    with activate_networks(model, library, _request("a cat <lora:style:0.7>")) as req:
        for (comp, path), w in want.items():
            torch.testing.assert_close(module_of(model, comp, path).weight, w, **TOL)
        assert req.extra["Lora hashes"].startswith("style: ")
    assert_same(model, before)


def test_separate_te_and_unet_weights(tiny_sd1, tmp_path):
    sd, expected = kohya_lora(tiny_sd1, rank=3, alpha=1.5)
    save(sd, tmp_path / "Lora" / "x.safetensors")
    library = NetworkLibrary.from_models_dir(tmp_path)
    want = _expected(tiny_sd1, expected, te_w=0.0, unet_w=1.2)
    with activate_networks(tiny_sd1, library, _request("<lora:x:0:1.2> cat")):
        for (comp, path), w in want.items():
            torch.testing.assert_close(module_of(tiny_sd1, comp, path).weight, w, **TOL)


def test_several_loras_add_up(tiny_sd1, tmp_path):
    a, ea = kohya_lora(tiny_sd1, seed=1)
    b, eb = kohya_lora(tiny_sd1, seed=2)  # same layers, other values
    save(a, tmp_path / "Lora" / "a.safetensors")
    save(b, tmp_path / "Lora" / "sub" / "b.safetensors")
    library = NetworkLibrary.from_models_dir(tmp_path)
    wa = _expected(tiny_sd1, ea, 0.5, 0.5)
    base = {k: module_of(tiny_sd1, *k).weight.detach().clone() for k in ea}
    wb = _expected(tiny_sd1, eb, -1.0, -1.0)
    with activate_networks(tiny_sd1, library, _request("<lora:a:0.5> cat <lora:b:-1>")) as req:
        for k in ea:
            torch.testing.assert_close(module_of(tiny_sd1, *k).weight, wa[k] + wb[k] - base[k], **TOL)
        assert [e.split(":")[0] for e in req.extra["Lora hashes"].split(", ")] == ["a", "b"]


def test_locon_delta_matches_conv_composition(tiny_sd1, tmp_path):
    """LoCon: conv(x, delta) == up_conv(down_conv(x)) (the LoRA as two convolutions)."""
    path, conv = conv3_layers(tiny_sd1.unet, 2)[1]
    gen = torch.Generator().manual_seed(3)
    down = torch.randn(2, conv.in_channels, 3, 3, generator=gen)
    up = torch.randn(conv.out_channels, 2, 1, 1, generator=gen)
    key = "lora_unet_" + path.replace(".", "_")
    save({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up}, tmp_path / "Lora" / "c.safetensors")
    x = torch.randn(1, conv.in_channels, 8, 8, generator=gen)
    direct = torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, down, padding=1), up)
    base = conv(x)
    with activate_networks(tiny_sd1, NetworkLibrary.from_models_dir(tmp_path), _request("<lora:c:1>")):
        patched = conv(x)
    torch.testing.assert_close(patched - base, direct, rtol=1e-4, atol=1e-4)


def test_loha_delta_matches_direct_hadamard(tiny_sd1, tmp_path):
    path, layer = linear_layers(tiny_sd1.unet, 1, "attn1.to_q")[0]
    out_f, in_f, r = layer.out_features, layer.in_features, 2
    gen = torch.Generator().manual_seed(4)
    w1a, w1b = torch.randn(out_f, r, generator=gen), torch.randn(r, in_f, generator=gen)
    w2a, w2b = torch.randn(out_f, r, generator=gen), torch.randn(r, in_f, generator=gen)
    key = "lora_unet_" + path.replace(".", "_")
    sd = {f"{key}.hada_w1_a": w1a, f"{key}.hada_w1_b": w1b, f"{key}.hada_w2_a": w2a, f"{key}.hada_w2_b": w2b}
    sd[f"{key}.alpha"] = torch.tensor(1.0)  # scale alpha / rank = 0.5
    save(sd, tmp_path / "Lora" / "h.safetensors")
    direct = torch.zeros(out_f, in_f)
    for i in range(out_f):
        for j in range(in_f):
            direct[i, j] = sum(w1a[i, k] * w1b[k, j] for k in range(r)) * sum(
                w2a[i, k] * w2b[k, j] for k in range(r)
            )
    base = layer.weight.detach().clone()
    with activate_networks(tiny_sd1, NetworkLibrary.from_models_dir(tmp_path), _request("<lora:h:0.8>")):
        torch.testing.assert_close(layer.weight, base + 0.8 * 0.5 * direct, rtol=1e-5, atol=1e-5)


def test_pixels_identical_before_and_after_a_lora_job(tiny_sd1, tmp_path):
    sd, _ = kohya_lora(tiny_sd1, alpha=2.0)
    save(sd, tmp_path / "Lora" / "p.safetensors")
    library = NetworkLibrary.from_models_dir(tmp_path)
    import numpy as np

    first = np.asarray(txt2img(tiny_sd1, _request("a cat"), networks=library)[0].image)
    with_lora = txt2img(tiny_sd1, _request("a cat <lora:p:1>"), networks=library)[0]
    after = np.asarray(txt2img(tiny_sd1, _request("a cat"), networks=library)[0].image)
    assert np.array_equal(first, after)
    assert not np.array_equal(first, np.asarray(with_lora.image))
    assert "a cat <lora:p:1>" in with_lora.infotext  # A1111 keeps the tag in the infotext prompt
    assert 'Lora hashes: "p: ' in with_lora.infotext


def test_failed_job_restores_weights(tiny_sd1, tmp_path):
    sd, _ = kohya_lora(tiny_sd1)
    save(sd, tmp_path / "Lora" / "f.safetensors")
    before = snapshot(tiny_sd1)
    library = NetworkLibrary.from_models_dir(tmp_path)
    with (
        pytest.raises(RuntimeError, match="boom"),
        activate_networks(tiny_sd1, library, _request("<lora:f:1>")),
    ):
        raise RuntimeError("boom")
    assert_same(tiny_sd1, before)


def _bad(tmp_path, name: str, sd: dict) -> NetworkLibrary:
    save(sd, tmp_path / "Lora" / f"{name}.safetensors")
    return NetworkLibrary.from_models_dir(tmp_path)


@pytest.mark.parametrize("problem", ["shape", "unknown_key", "nan", "other_arch", "unknown_suffix"])
def test_bad_files_name_file_and_key_and_patch_nothing(tiny_sd1, tiny_sdxl, tmp_path, problem):
    good, _ = kohya_lora(tiny_sd1)
    sd = dict(good)
    if problem == "shape":
        key = max(k for k in sd if k.endswith("lora_up.weight"))
        sd[key] = torch.randn(sd[key].shape[0] + 1, sd[key].shape[1])
    elif problem == "unknown_key":
        key = "lora_unet_no_such_block_0_to_q"
        sd[key + ".lora_down.weight"], sd[key + ".lora_up.weight"] = torch.ones(1, 1), torch.ones(1, 1)
    elif problem == "nan":
        key = max(k for k in sd if k.endswith("lora_down.weight"))
        sd[key] = sd[key].clone()
        sd[key][0, 0] = float("nan")
    elif problem == "other_arch":
        sd, _ = kohya_lora(tiny_sdxl, sgm_names=SGM_NAMES)
        key = "lora_te1_"
    else:
        key = "lora_unet_conv_in.lora_weird"
        sd[key] = torch.ones(1)
    save(good, tmp_path / "Lora" / "good.safetensors")
    library = _bad(tmp_path, "broken", sd)
    before = snapshot(tiny_sd1)
    with (
        pytest.raises(SDStudioError) as info,
        activate_networks(tiny_sd1, library, _request("<lora:good:1> <lora:broken:1>")),
    ):
        pass
    assert "broken.safetensors" in str(info.value) and key in str(info.value), str(info.value)
    assert_same(tiny_sd1, before)


def test_bad_file_in_second_tag_leaves_first_unpatched(tiny_sd1, tmp_path):
    good, _ = kohya_lora(tiny_sd1)
    save(good, tmp_path / "Lora" / "good.safetensors")
    bad = dict(good)
    key = min(bad)
    bad[key] = bad[key] * float("inf")
    save(bad, tmp_path / "Lora" / "bad.safetensors")
    before = snapshot(tiny_sd1)
    with pytest.raises(SDStudioError, match="bad.safetensors"):
        txt2img(
            tiny_sd1,
            _request("<lora:good:1> <lora:bad:1> cat"),
            networks=NetworkLibrary.from_models_dir(tmp_path),
        )
    assert_same(tiny_sd1, before)


def test_missing_lora_and_missing_library_are_clear(tiny_sd1, tmp_path):
    with pytest.raises(SDStudioError, match="'nope' not found"):
        txt2img(tiny_sd1, _request("<lora:nope:1>"), networks=NetworkLibrary.from_models_dir(tmp_path))
    with pytest.raises(SDStudioError, match="no LoRA folder"):
        txt2img(tiny_sd1, _request("<lora:nope:1>"))
    with pytest.raises(SDStudioError, match="hypernetworks are listed"):
        txt2img(tiny_sd1, _request("<hypernet:h:1>"), networks=NetworkLibrary.from_models_dir(tmp_path))


def test_switching_sets_reuses_the_loaded_model(tiny_sd1, tmp_path):
    """Different LoRA sets between jobs patch the same module objects (no checkpoint reload)."""
    a, _ = kohya_lora(tiny_sd1, seed=5)
    save(a, tmp_path / "Lora" / "a.safetensors")
    save(kohya_lora(tiny_sd1, seed=6)[0], tmp_path / "Lora" / "b.safetensors")
    library = NetworkLibrary.from_models_dir(tmp_path)
    unet = tiny_sd1.unet
    params = {id(p) for p in unet.parameters()}
    for prompt in ("<lora:a:1>", "<lora:b:1>", "<lora:a:0.3> <lora:b:1>", "plain"):
        txt2img(tiny_sd1, _request(prompt), networks=library)
    assert tiny_sd1.unet is unet and {id(p) for p in unet.parameters()} == params
