"""``--backend openvino``: the UNet and VAE decoder compiled by OpenVINO compute what PyTorch does.

Same weights and fp32 maths, other kernels: outputs agree within float round-off (measured ~5e-6
on the embedded model's UNet), images within the cross-path bound of tests/tolerance.py. When the
PyTorch modules change for a job (LoRA weights, tiling, another VAE) the PyTorch path runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdstudio import GenerationRequest, txt2img
from sdstudio.backends import openvino as openvino_backend
from sdstudio.backends.openvino import OpenVINODecoder, OpenVINOUNet, use_openvino
from sdstudio.errors import SDStudioError
from sdstudio.families.sd.unet_split import full_forward, shallow_forward
from sdstudio.models.tiny import tiny_sd1
from sdstudio.networks.keys import Target
from sdstudio.networks.patch import patched_weights
from sdstudio.pipelines import speed
from sdstudio.pipelines.deepcache import DeepCacheUNet
from sdstudio.pipelines.speed import SpeedOptions
from tests.tolerance import assert_same_composition

pytest.importorskip("openvino")  # a test dependency (pyproject [test]); the skip is for bare installs

ATOL = 1e-4  # fp32 round-off between oneDNN-in-PyTorch and OpenVINO kernels (measured ~5e-6)
REQ = GenerationRequest(prompt="a cat", width=64, height=64, steps=5, sampler_name="DPM++ 2M", seed=11)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("ov-cache")


@pytest.fixture(scope="module")
def ov_model(cache_dir):
    """A tiny SD 1.x model of its own (the session fixtures stay PyTorch-only) with OpenVINO parts.

    Converting takes most of this file's time, so it happens once here.
    """
    return use_openvino(tiny_sd1(), cache_dir, threads=1)


def unet_args(model, batch: int, h: int, w: int, tokens: int = 77, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cfg = model.unet.config
    x = torch.randn(batch, cfg.in_channels, h, w, generator=g)  # (B, C_in, h, w)
    ctx = torch.randn(batch, tokens, cfg.cross_attention_dim, generator=g)  # (B, T, D)
    return x, torch.tensor([700.0] * batch), ctx


@pytest.mark.parametrize("shape", [(2, 8, 8, 77), (1, 12, 8, 77), (3, 8, 16, 154)])
def test_unet_matches_pytorch_for_any_shape(ov_model, shape):
    batch, h, w, tokens = shape
    x, t, ctx = unet_args(ov_model, batch, h, w, tokens)
    with torch.no_grad():
        ref = ov_model.unet(x, t, encoder_hidden_states=ctx, return_dict=False)[0]
    out = ov_model.compiled_unet(x, t, encoder_hidden_states=ctx)[0]
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=ATOL), (out - ref).abs().max()


def test_scalar_timestep_is_broadcast(ov_model):
    x, _, ctx = unet_args(ov_model, 2, 8, 8)
    with torch.no_grad():
        ref = ov_model.unet(x, torch.tensor(300.0), encoder_hidden_states=ctx, return_dict=False)[0]
    out = ov_model.compiled_unet(x, torch.tensor(300.0), encoder_hidden_states=ctx)[0]
    assert torch.allclose(out, ref, atol=ATOL)


def test_decoder_matches_pytorch(ov_model):
    z = torch.randn(2, ov_model.vae.config.latent_channels, 8, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = ov_model.vae.decode(z, return_dict=False)[0]
    out = ov_model.compiled_decoder.decode(z)
    assert out.shape == ref.shape == (2, 3, 8 * ov_model.vae_scale_factor, 12 * ov_model.vae_scale_factor)
    assert torch.allclose(out, ref, atol=ATOL)


def test_the_decoder_compiles_per_shape_and_decodes_a_batch_row_by_row(ov_model):
    """One static compilation per latent shape (B = 1): a batch decodes as its rows do alone, and a
    shape compiled again (after another) decodes the same bits."""
    g = torch.Generator().manual_seed(3)
    c = ov_model.vae.config.latent_channels
    batch, other = torch.randn(3, c, 8, 8, generator=g), torch.randn(1, c, 12, 8, generator=g)
    decoder = ov_model.compiled_decoder
    together = decoder.decode(batch)
    assert decoder.graph._shapes == [(1, c, 8, 8)]
    rows = [decoder.decode(row) for row in batch.split(1)]
    assert torch.equal(together, torch.cat(rows))
    decoder.decode(other)
    assert decoder.graph._shapes == [(1, c, 12, 8)]  # the 8x8 compilation was freed
    assert torch.equal(decoder.decode(batch), together)


def test_an_unloaded_graph_is_read_back_from_the_cache_and_computes_the_same(ov_model):
    """``unload`` frees a compilation (the int8 build does so to the bf16 UNet's); the next call
    reads the cached graph and compiles it again, with the same outputs."""
    unet, decoder = ov_model.compiled_unet.graph, ov_model.compiled_decoder.graph
    x = ov_model.compiled_unet.example  # (sample, timesteps, context)
    z = torch.randn(1, ov_model.vae.config.latent_channels, 8, 8, generator=torch.Generator().manual_seed(5))
    before = unet.run(*x), decoder.run(z)
    assert unet.unload() and decoder.unload()
    assert unet._request is None and unet.graph is None and decoder._request is None
    assert torch.equal(unet.run(*x), before[0]) and torch.equal(decoder.run(z), before[1])


def test_images_within_the_cross_path_bound_and_repeatable(ov_model):
    plain = tiny_sd1()  # the same weights (fixed seed), PyTorch only
    a = txt2img(ov_model, REQ)[0].image
    b = txt2img(ov_model, REQ)[0].image
    assert np.array_equal(np.asarray(a), np.asarray(b))  # same request, same machine: same pixels
    assert_same_composition(a, txt2img(plain, REQ)[0].image)


def test_sampling_loop_uses_the_compiled_unet_only_while_it_matches(ov_model):
    speed = SpeedOptions()
    assert speed.unet_for(ov_model.unet, ov_model.compiled_unet) is ov_model.compiled_unet
    layer = ov_model.unet.down_blocks[0].resnets[0].conv1
    delta = torch.full_like(layer.weight, 0.01)
    with patched_weights(
        [(Target("unet", "down_blocks.0.resnets.0.conv1", layer), delta)]
    ):  # a LoRA-style weight patch for one job
        assert not ov_model.compiled_unet.matches(ov_model.unet)
        assert speed.unet_for(ov_model.unet, ov_model.compiled_unet) is ov_model.unet
    assert ov_model.compiled_unet.matches(ov_model.unet)  # restored weights: compiled again
    cached = SpeedOptions(deepcache_interval=3).unet_for(ov_model.unet, ov_model.compiled_unet)
    assert (
        isinstance(cached, DeepCacheUNet) and cached.compiled is ov_model.compiled_unet
    )  # fast mode on OpenVINO
    with patched_weights([(Target("unet", "down_blocks.0.resnets.0.conv1", layer), delta)]):
        assert (
            SpeedOptions(deepcache_interval=3).unet_for(ov_model.unet, ov_model.compiled_unet).compiled
            is None
        )
    tome = SpeedOptions(deepcache_interval=3, tome_ratio=0.5).unet_for(ov_model.unet, ov_model.compiled_unet)
    assert tome.inner.compiled is None  # ToMe wraps PyTorch attention processors: PyTorch runs


@pytest.mark.parametrize("shape", [(2, 8, 8), (1, 16, 8)])
def test_deepcache_graphs_match_the_pytorch_split(ov_model, shape):
    """The UNet graph's second output is the deep features; the shallow graph rebuilds the output."""
    x, t, ctx = unet_args(ov_model, *shape)
    with torch.no_grad():
        ref, ref_deep = full_forward(ov_model.unet, x, t, encoder_hidden_states=ctx)
        ref_shallow = shallow_forward(ov_model.unet, x, t * 0.5, ctx, ref_deep)
    out, deep = ov_model.compiled_unet.full_with_deep(x, t, ctx)
    assert deep.shape == ref_deep.shape
    assert torch.allclose(out, ref, atol=ATOL) and torch.allclose(deep, ref_deep, atol=ATOL)
    shallow = ov_model.compiled_unet.shallow(x, t * 0.5, ctx, deep)
    assert torch.allclose(shallow, ref_shallow, atol=ATOL), (shallow - ref_shallow).abs().max()


def test_fast_mode_on_openvino_matches_fast_mode_on_pytorch(ov_model, monkeypatch):
    monkeypatch.setattr(speed, "FAST_INT8", False)  # int8: tests/speed/test_int8.py
    request = REQ.replace(fast=True, steps=7)
    ov_model.compiled_unet._shallow = None  # an earlier test may have built it: built again only if used
    a = txt2img(ov_model, request)[0]
    assert ov_model.compiled_unet._shallow is not None  # the shallow calls ran on OpenVINO
    assert np.array_equal(np.asarray(a.image), np.asarray(txt2img(ov_model, request)[0].image))
    assert_same_composition(a.image, txt2img(tiny_sd1(), request)[0].image)


def test_tiling_request_takes_the_pytorch_path_exactly(ov_model):
    request = REQ.replace(tiling=True)
    with_ov = np.asarray(txt2img(ov_model, request)[0].image)
    unet, decoder = ov_model.compiled_unet, ov_model.compiled_decoder
    ov_model.compiled_unet = ov_model.compiled_decoder = None
    try:
        plain = np.asarray(txt2img(ov_model, request)[0].image)
    finally:
        ov_model.compiled_unet, ov_model.compiled_decoder = unet, decoder
    assert np.array_equal(with_ov, plain)


def test_conversion_is_cached_and_a_damaged_cache_is_rebuilt(ov_model, cache_dir, tmp_path, monkeypatch):
    (xml,) = (cache_dir / "openvino").glob("vae-*.xml")
    assert xml.with_suffix(".bin").stat().st_size > 0

    def no_conversion(*_args, **_kwargs):
        raise AssertionError("converted again although the cache holds this VAE")

    with monkeypatch.context() as m:
        m.setattr(openvino_backend, "convert_module", no_conversion)
        cached = OpenVINODecoder(ov_model.vae, torch.float32, cache_dir, threads=1)
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        assert torch.allclose(cached.decode(z), ov_model.vae.decode(z, return_dict=False)[0], atol=ATOL)
    damaged = tmp_path / "openvino" / xml.name
    damaged.parent.mkdir()
    damaged.write_text("<not a model")
    damaged.with_suffix(".bin").write_bytes(b"")
    rebuilt = OpenVINODecoder(ov_model.vae, torch.float32, tmp_path, threads=1)  # reconverted, not an error
    assert rebuilt.decode(z).shape == (1, 3, 8 * ov_model.vae_scale_factor, 8 * ov_model.vae_scale_factor)
    assert "<not a model" not in damaged.read_text()  # the cache entry was rewritten


def test_other_weights_get_another_cache_entry():
    a, b = tiny_sd1(), tiny_sd1()
    with torch.no_grad():
        b.vae.decoder.conv_out.weight.mul_(1.5)
    assert openvino_backend.weights_fingerprint(a.vae, torch.float32) != openvino_backend.weights_fingerprint(
        b.vae, torch.float32
    )


def test_unsupported_models_and_backends_are_clear_errors(tiny_sdxl):
    with pytest.raises(SDStudioError, match="SDXL"):
        OpenVINOUNet(tiny_sdxl.unet, torch.float32, None, threads=1)
    from sdstudio.models.loader import load_model

    with pytest.raises(SDStudioError, match="backend must be one of auto, torch, openvino"):
        load_model(None, backend="tensorrt")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from sdstudio.models.save import save_diffusers

    return save_diffusers(tiny_sd1(), tmp_path_factory.mktemp("models") / "tiny-sd1")


def test_auto_is_the_default_and_runs_openvino(tiny_folder, tmp_path, monkeypatch, capsys):
    from sdstudio.cli import main
    from sdstudio.models.loader import load_model

    monkeypatch.delenv("SDSTUDIO_BACKEND")  # the suite pins torch (conftest); a user's default is auto
    monkeypatch.setenv("SDSTUDIO_CACHE_DIR", str(tmp_path / "cache"))
    args = ["txt2img", "a cat", "--model", str(tiny_folder), "--width", "32", "--height", "32", "--steps", "2", "--seed", "1",
            "--precision", "fp32"]  # fmt: skip
    assert main([*args, "--outdir", str(tmp_path / "torch"), "--backend", "torch"]) == 0
    assert not (tmp_path / "cache" / "openvino").exists()
    assert main([*args, "--outdir", str(tmp_path / "auto")]) == 0
    assert {p.name.split("-")[0] for p in (tmp_path / "cache" / "openvino").glob("*.xml")} == {"unet", "vae"}
    assert_same_composition(
        Image.open(tmp_path / "auto" / "00001-1.png"), Image.open(tmp_path / "torch" / "00001-1.png")
    )
    assert load_model(tiny_folder, precision="fp32").backend == "openvino"
    monkeypatch.setenv("SDSTUDIO_BACKEND", "torch")
    assert load_model(tiny_folder, precision="fp32").backend == "torch"
    monkeypatch.setenv("SDSTUDIO_BACKEND", "tensorrt")
    with pytest.raises(SDStudioError, match="SDSTUDIO_BACKEND must be one of"):
        load_model(tiny_folder)


def test_auto_falls_back_to_pytorch_when_openvino_cannot_run(tiny_folder, tmp_path, monkeypatch, caplog):
    from sdstudio.models import loader

    monkeypatch.setenv("SDSTUDIO_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(openvino_backend, "memory_available", lambda: 2**30)
    model = loader.load_model(tiny_folder, precision="fp32", backend="auto")
    assert model.backend == "torch" and model.compiled_unet is None
    assert "too little" in openvino_backend.auto_backend_reason(model)
    monkeypatch.setattr(openvino_backend, "memory_available", lambda: None)  # can't tell: don't refuse

    def broken(*_args, **_kwargs):
        raise RuntimeError("a graph OpenVINO cannot convert")

    monkeypatch.setattr(loader, "use_openvino", broken)
    monkeypatch.setattr(loader, "IDLE_TEXT_BYTES", 0)  # freed for the conversion, read back for PyTorch
    with caplog.at_level("WARNING"):
        model = loader.load_model(tiny_folder, precision="fp32", backend="auto")
    assert model.backend == "torch" and "running on PyTorch" in caplog.text
    assert model.idle_text_encoders is None
    assert not any(p.is_meta for p in model.text_encoders[0].parameters())
    with pytest.raises(RuntimeError, match="cannot convert"):
        loader.load_model(tiny_folder, precision="fp32", backend="openvino")  # asked for: not hidden


def test_loaded_model_frees_the_pytorch_unet_until_a_job_needs_it(tiny_folder, tmp_path):
    """The compiled graph holds the UNet's weights: the PyTorch copy is freed, and re-read from the
    checkpoint (the same bits as a PyTorch load) only when a job takes the PyTorch path."""
    from sdstudio.models.loader import load_model
    from sdstudio.models.save import save_diffusers

    model = load_model(tiny_folder, precision="fp32", backend="openvino", cache_dir=tmp_path)
    assert model.compiled_unet.released and all(p.is_meta for p in model.unet.parameters())
    layer = model.unet.down_blocks[0].resnets[0].conv1
    freed = [(Target("unet", "down_blocks.0.resnets.0.conv1", layer), torch.ones(1))]
    with pytest.raises(SDStudioError, match="not loaded"), patched_weights(freed):  # never onto freed weights
        pass
    plain = np.asarray(txt2img(model, REQ)[0].image)  # OpenVINO alone
    assert model.compiled_unet.released
    tiled = np.asarray(txt2img(model, REQ.replace(tiling=True))[0].image)  # needs the PyTorch UNet
    assert not model.compiled_unet.released
    reference = load_model(tiny_folder, precision="fp32", backend="torch")
    for (name, p), q in zip(
        model.unet.state_dict().items(), reference.unet.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name
    assert np.array_equal(tiled, np.asarray(txt2img(reference, REQ.replace(tiling=True))[0].image))
    assert model.compiled_unet.matches(model.unet)  # the reloaded weights are the converted ones
    assert np.array_equal(plain, np.asarray(txt2img(model, REQ)[0].image))  # OpenVINO again, same pixels
    released = load_model(tiny_folder, precision="fp32", backend="openvino", cache_dir=tmp_path)
    out = save_diffusers(released, tmp_path / "saved")  # saving reloads the weights first
    assert load_model(out, precision="fp32", backend="torch").unet.conv_in.weight.equal(
        reference.unet.conv_in.weight
    )


def test_a_checkpoint_changed_on_disk_fails_the_job_never_mixes_two(tmp_path):
    from sdstudio.errors import CheckpointChangedError
    from sdstudio.models.loader import load_model
    from sdstudio.models.save import save_diffusers

    folder = save_diffusers(tiny_sd1(), tmp_path / "m")
    model = load_model(folder, precision="fp32", backend="openvino", cache_dir=tmp_path / "c")
    changed = tiny_sd1()
    with torch.no_grad():
        changed.unet.conv_out.weight.mul_(1.5)
    save_diffusers(changed, folder)  # overwritten while the model is loaded
    with pytest.raises(CheckpointChangedError, match="UNet changed on disk"):
        txt2img(model, REQ.replace(tiling=True))  # a job that needs the PyTorch UNet reads it now
    assert not model.compiled_unet.matches(model.unet)  # the graph has the old weights: never used again


def test_a_lora_job_reloads_the_freed_unet_and_matches_pytorch(tiny_folder, tmp_path, monkeypatch):
    """The LoRA also patches the text encoder, freed since the last job: read back, held (never freed
    while patched) for the job, then unpatched bit for bit."""
    from sdstudio.models import loader
    from sdstudio.models.loader import load_model
    from sdstudio.networks import NetworkLibrary
    from sdstudio.pipelines.generate import generate
    from tests.networks.helpers import kohya_lora, save

    reference = load_model(tiny_folder, precision="fp32", backend="torch")
    sd, _ = kohya_lora(reference, rank=2, alpha=2.0)
    save(sd, tmp_path / "Lora" / "style.safetensors")
    library = NetworkLibrary.from_models_dir(tmp_path)
    request = REQ.replace(prompt="a cat <lora:style:1>")
    monkeypatch.setattr(loader, "IDLE_TEXT_BYTES", 0)
    model = load_model(tiny_folder, precision="fp32", backend="openvino", cache_dir=tmp_path)
    assert model.compiled_unet.released
    generate(model, REQ, networks=library)
    assert model.idle_text_encoders.released
    with_lora = np.asarray(generate(model, request, networks=library)[0].image)
    assert not model.compiled_unet.released and model.compiled_unet.matches(model.unet)  # LoRA removed
    assert not model.idle_text_encoders.released  # held while patched: not freed after the encode
    for (name, p), q in zip(model.text_encoders[0].state_dict().items(),
                            reference.text_encoders[0].state_dict().values(), strict=True):  # fmt: skip
        assert torch.equal(p, q), name
    assert np.array_equal(with_lora, np.asarray(generate(reference, request, networks=library)[0].image))


def test_a_fresh_conversion_owns_its_weights_once_the_pytorch_unet_is_freed(tiny_folder, tmp_path):
    """The compile keeps pointing at constants it need not repack (bf16 ones): a graph converted in
    place from the PyTorch UNet, whose weights are then freed, ran on freed memory (NaN images in
    the first process of a new checkpoint). A converted graph is read back from the cache."""
    from sdstudio.models.loader import load_model

    fresh = load_model(tiny_folder, precision="bf16", backend="openvino", cache_dir=tmp_path)
    assert fresh.compiled_unet.released and not fresh.compiled_unet.graph.shares_source
    first = np.asarray(txt2img(fresh, REQ)[0].image)
    cached = load_model(tiny_folder, precision="bf16", backend="openvino", cache_dir=tmp_path)
    assert np.array_equal(first, np.asarray(txt2img(cached, REQ)[0].image))
    in_place = use_openvino(tiny_sd1(), None, threads=1, reload_unet=dict)  # no cache: nothing freed
    assert in_place.compiled_unet.graph.shares_source and not in_place.compiled_unet.released


def test_the_tiny_vae_decodes_on_openvino_as_on_pytorch(tmp_path):
    """Fast mode's tiny VAE (TAESD) gets its own compiled decoder; same maths as PyTorch's."""
    from sdstudio.models.tiny_vae import build_tiny_vae, tiny_decode

    model = tiny_sd1()
    model.tiny_vae = build_tiny_vae(
        model.latent_channels, model.vae_scale_factor, channels=8, blocks=1
    ).eval()
    use_openvino(model, tmp_path, threads=1)
    assert model.compiled_tiny_decoder is not None and list((tmp_path / "openvino").glob("taesd-*.xml"))
    latents = torch.randn(2, model.latent_channels, 8, 12, generator=torch.Generator().manual_seed(4))
    out = tiny_decode(model.tiny_vae, latents, model.compiled_tiny_decoder)
    ref = tiny_decode(model.tiny_vae, latents)
    assert out.shape == ref.shape == (2, 3, 8 * model.vae_scale_factor, 12 * model.vae_scale_factor)
    assert torch.allclose(out, ref, atol=ATOL), (out - ref).abs().max()


def test_first_inference_leaves_no_cached_weights_resident_and_scratch_release_keeps_outputs(
    ov_model, cache_dir
):
    """OpenVINO maps the cached ``.bin`` and repacks it on the first call: that call drops the
    mapping's pages (backends.resident_memory); freeing the graph's buffers changes no output."""
    from tests.speed.test_resident_memory import resident_kib

    unet = OpenVINOUNet(ov_model.unet, ov_model.dtype, cache_dir, threads=1)  # read from the cache
    weights = unet.graph._mapped[0]
    assert weights.is_file() and weights.suffix == ".bin"
    x, t, ctx = unet_args(ov_model, 2, 8, 8)
    first = unet(x, t, encoder_hidden_states=ctx)[0]
    if sys.platform.startswith("linux"):
        assert resident_kib(weights) == 0
    unet.release_scratch()
    assert torch.equal(first, unet(x, t, encoder_hidden_states=ctx)[0])  # same inputs, same bits
    z = torch.randn(1, ov_model.vae.config.latent_channels, 8, 8, generator=torch.Generator().manual_seed(2))
    decoded = ov_model.compiled_decoder.decode(z)  # frees its buffers after each call
    assert torch.equal(decoded, ov_model.compiled_decoder.decode(z))


def test_the_final_decode_frees_the_unets_buffers_first(ov_model, monkeypatch):
    calls = []
    release = ov_model.compiled_unet.release_scratch
    monkeypatch.setattr(ov_model.compiled_unet, "release_scratch", lambda: calls.append("unet") or release())
    before = np.asarray(txt2img(ov_model, REQ)[0].image)
    assert calls == ["unet"]  # once per batch, after sampling
    monkeypatch.undo()
    assert np.array_equal(before, np.asarray(txt2img(ov_model, REQ)[0].image))


def bytes_read() -> int:
    """Bytes this process has read through read(2) so far (``rchar`` of ``/proc/self/io``)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


@pytest.mark.parametrize("layout", ["single", "folder"])
def test_a_recorded_checkpoint_loads_without_reading_its_unet(layout, tmp_path, monkeypatch):
    """The first load converts and records the weights file's SHA-256 -> graph; later loads run the
    cached graph without reading the UNet's weights (they stay ``meta``) and make the same pixels.
    A job that needs the PyTorch UNet reads them then: the same bits as a PyTorch load. Likewise the
    VAE decoder's weights (freed beside its graph) and the text encoders' (freed between jobs)."""
    from sdstudio.models import loader
    from sdstudio.models.loader import load_model
    from sdstudio.models.save import save_diffusers, save_single_file

    monkeypatch.setattr(loader, "IDLE_TEXT_BYTES", 0)  # the tiny text encoder is freed like SD 1.5's

    source = tiny_sd1()
    path = save_single_file(source, tmp_path / "tiny.safetensors") if layout == "single" else (
        save_diffusers(source, tmp_path / "tiny")
    )  # fmt: skip
    cache = tmp_path / "cache"
    first = load_model(path, precision="fp32", backend="openvino", cache_dir=cache)
    assert first.idle_text_encoders.released  # not resident while the first load converts the UNet
    sources = (cache / "openvino" / openvino_backend.SOURCES_FILE).read_text()
    assert first.compiled_unet.graph.fingerprint in sources
    image = np.asarray(txt2img(first, REQ)[0].image)

    reference = load_model(path, precision="fp32", backend="torch", cache_dir=cache)
    lazy_start = bytes_read()
    lazy = load_model(path, precision="fp32", backend="openvino", cache_dir=cache)
    read_lazily = bytes_read() - lazy_start
    record = cache / "openvino" / openvino_backend.SOURCES_FILE
    record.unlink()  # the same load, graphs cached, but nothing recorded: the UNet is read
    full_start = bytes_read()
    load_model(path, precision="fp32", backend="openvino", cache_dir=cache)
    read_fully = bytes_read() - full_start
    assert record.is_file()  # recorded again
    unet_bytes = sum(p.numel() * p.element_size() for p in reference.unet.parameters())
    if layout == "single" and sys.platform.startswith("linux"):  # streamed with read(2); folders: mmap
        assert read_fully - read_lazily > 0.9 * unet_bytes, (read_fully, read_lazily, unet_bytes)
    assert all(p.is_meta for p in lazy.unet.parameters()) and lazy.compiled_unet.released
    assert lazy.compiled_decoder.released and all(p.is_meta for p in lazy.vae.decoder.parameters())
    assert not any(p.is_meta for p in lazy.vae.encoder.parameters())  # image-to-image encodes with it
    assert lazy.compiled_unet.graph.fingerprint == first.compiled_unet.graph.fingerprint
    assert np.array_equal(image, np.asarray(txt2img(lazy, REQ)[0].image))
    idle = lazy.idle_text_encoders
    assert idle.released and all(p.is_meta for p in lazy.text_encoders[0].parameters())  # after encoding
    assert np.array_equal(image, np.asarray(txt2img(lazy, REQ)[0].image))  # read back: the same pixels
    tiled = np.asarray(txt2img(lazy, REQ.replace(tiling=True))[0].image)  # the PyTorch UNet, read now
    assert not lazy.compiled_decoder.released  # and the PyTorch decoder (tiling pads its convolutions)
    idle.restore()
    for module, ref in [(lazy.unet, reference.unet), (lazy.vae, reference.vae),
                        (lazy.text_encoders[0], reference.text_encoders[0])]:  # fmt: skip
        for (name, p), q in zip(module.state_dict().items(), ref.state_dict().values(), strict=True):
            assert torch.equal(p, q), name
    assert np.array_equal(tiled, np.asarray(txt2img(reference, REQ.replace(tiling=True))[0].image))


def test_a_pickled_checkpoint_keeps_the_weights_it_could_only_reread_whole(tmp_path, monkeypatch):
    """A .ckpt is unpickled whole: its text encoders and VAE decoder stay loaded (a re-read per job
    would read the whole file), while OpenVINO still runs the UNet and the decoder."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from sdstudio.checkpoints.io import METADATA_KEY
    from sdstudio.models import loader
    from sdstudio.models.loader import load_model
    from sdstudio.models.save import save_single_file

    monkeypatch.setattr(loader, "IDLE_TEXT_BYTES", 0)
    single = save_single_file(tiny_sd1(), tmp_path / "tiny.safetensors")
    with safe_open(single, "pt") as f:
        metadata = f.metadata()  # the tiny architecture (a .ckpt carries it under METADATA_KEY)
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": load_file(single), METADATA_KEY: metadata}, ckpt)
    model = load_model(ckpt, precision="fp32", backend="openvino", cache_dir=tmp_path / "cache")
    assert model.compiled_unet is not None and model.compiled_decoder is not None
    assert model.idle_text_encoders is None and not model.compiled_decoder.released
    image = np.asarray(txt2img(model, REQ)[0].image)
    assert not any(p.is_meta for p in model.text_encoders[0].parameters())
    reference = load_model(single, precision="fp32", backend="openvino", cache_dir=tmp_path / "cache")
    assert np.array_equal(image, np.asarray(txt2img(reference, REQ)[0].image))  # same weights


def test_a_stale_or_damaged_record_reads_and_converts_the_unet_again(tiny_folder, tmp_path, monkeypatch):
    from sdstudio.models.loader import load_model

    cache = tmp_path / "cache"
    first = load_model(tiny_folder, precision="fp32", backend="openvino", cache_dir=cache)
    image = np.asarray(txt2img(first, REQ)[0].image)
    graph = cache / "openvino" / f"unet-{first.compiled_unet.graph.fingerprint}.xml"
    graph.unlink()  # the recorded graph left the cache
    again = load_model(tiny_folder, precision="fp32", backend="openvino", cache_dir=cache)
    assert graph.is_file() and np.array_equal(image, np.asarray(txt2img(again, REQ)[0].image))
    (cache / "openvino" / openvino_backend.SOURCES_FILE).write_text("{not json")
    damaged = load_model(tiny_folder, precision="fp32", backend="openvino", cache_dir=cache)
    assert np.array_equal(image, np.asarray(txt2img(damaged, REQ)[0].image))
    assert json_fingerprints(cache) == [first.compiled_unet.graph.fingerprint]  # recorded anew
    monkeypatch.setattr(openvino_backend, "memory_available", lambda: 2**20)  # auto picks PyTorch
    low_memory = load_model(tiny_folder, precision="fp32", backend="auto", cache_dir=cache)
    assert low_memory.backend == "torch" and not any(p.is_meta for p in low_memory.unet.parameters())
    reference = load_model(tiny_folder, precision="fp32", backend="torch")
    assert np.array_equal(
        np.asarray(txt2img(low_memory, REQ)[0].image), np.asarray(txt2img(reference, REQ)[0].image)
    )


def json_fingerprints(cache) -> list[str]:
    import json

    return sorted(json.loads((cache / "openvino" / openvino_backend.SOURCES_FILE).read_text()).values())
