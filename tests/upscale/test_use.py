"""Model upscalers where A1111 offers an upscaler: hires fix (``hr_upscaler``) and the SD upscale script."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdstudio.config import GenerationRequest, HiresSettings, Limits
from sdstudio.errors import SDStudioError
from sdstudio.pipelines import hires
from sdstudio.pipelines.scripts import sd_upscale
from sdstudio.upscale.files import find_upscalers
from sdstudio.upscale.image import to_image, to_tensor
from tests.upscale.conftest import BUILDERS, save


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    (root / "ESRGAN").mkdir()
    net = BUILDERS["Compact"](scale=2)
    save(net, root / "ESRGAN" / "2x-tiny.pth")
    return root, net


def test_hires_fix_upscales_the_first_pass_with_the_model(tiny_sd1, models_dir):
    """At strength 0 the second pass only upscales: decode -> the model's own forward -> encode."""
    from sdstudio.pipelines.components import decode_latents, encode_images, from_pil, to_pil

    root, net = models_dir
    (found,) = find_upscalers(root)
    hr = HiresSettings(scale=2, upscaler=found.name, upscaler_path=str(found.path), denoising_strength=0.0)
    req = GenerationRequest(width=64, height=64, steps=2, hires=hr)
    latents = torch.randn(1, 4, 32, 32) * 0.1
    out, images, extra = hires.hires_pass(tiny_sd1, req, latents, [1], [1])
    assert out.shape == (1, 4, 64, 64) and images[0].size == (128, 128)
    first = to_pil(decode_latents(tiny_sd1, latents))[0]
    with torch.inference_mode():
        big = to_image(net(to_tensor(first)).clamp(0, 1))  # spandrel's forward, whole image
    expected = to_pil(decode_latents(tiny_sd1, encode_images(tiny_sd1, from_pil([big]))))[0]
    assert np.array_equal(np.asarray(images[0]), np.asarray(expected))
    lanczos = hires._upscale(tiny_sd1, HiresSettings(upscaler="Lanczos"), latents, 128, 128)
    assert not torch.allclose(out, lanczos)  # the model, not a Lanczos fallback
    assert extra["Hires upscaler"] == "2x-tiny"


def test_the_a1111_edge_resolves_hr_upscaler_by_model_name(models_dir):
    from sdstudio.api.convert import convert
    from sdstudio.api.schemas import Txt2ImgRequest

    root, _ = models_dir
    files = find_upscalers(root)
    body = {"prompt": "x", "enable_hr": True, "width": 64, "height": 64, "steps": 2, "hr_upscaler": "2X-TINY"}
    converted = convert(Txt2ImgRequest(**body), limits=Limits(), kind="txt2img", upscalers=files)
    hr = converted.request.hires
    assert (hr.upscaler, hr.upscaler_path) == ("2x-tiny", str(files[0].path))
    with pytest.raises(SDStudioError, match="choose one of: .*Nearest, 2x-tiny") as err:
        convert(
            Txt2ImgRequest(**{**body, "hr_upscaler": "4x-missing"}),
            limits=Limits(),
            kind="txt2img",
            upscalers=files,
        )
    assert err.value.field == "hr_upscaler"


def test_sd_upscale_takes_a_model_upscaler_by_index_or_name(models_dir):
    root, net = models_dir
    files = find_upscalers(root)
    by_index = sd_upscale.options_from_args([None, 16, 3, 2.0], files)  # after None, Lanczos, Nearest
    by_name = sd_upscale.options_from_args([None, 16, "2x-tiny", 2.0], files)
    assert by_index == by_name and by_index.upscaler_path == str(files[0].path)
    with pytest.raises(SDStudioError, match=r"or 0\.\.3"):
        sd_upscale.options_from_args([None, 16, 4, 2.0], files)
    image = to_image(torch.rand(1, 3, 24, 40, generator=torch.Generator().manual_seed(0)))
    big = sd_upscale.upscale(image, by_index.upscaler, 2.0, by_index.upscaler_path)
    with torch.inference_mode():
        ref = to_image(net(to_tensor(image)).clamp(0, 1))
    assert big.size == (80, 48) and np.array_equal(np.asarray(big), np.asarray(ref))


def test_sd_upscale_runs_its_tiles_over_the_model_upscaled_image(models_dir):

    root, _ = models_dir
    options = sd_upscale.options_from_args([None, 8, "2x-tiny", 2.0], find_upscalers(root))
    base = GenerationRequest(prompt="x", width=32, height=32, steps=1, seed=5, denoising_strength=0.3)
    image = to_image(torch.rand(1, 3, 24, 24))
    seen = []

    class Done:
        def __init__(self, im):
            self.image, self.infotext = im, "x\nSteps: 1"

    def runner(request, init_images):
        seen.extend(im.size for im in init_images)
        return [Done(im) for im in init_images]

    result = sd_upscale.run_sd_upscale(base, image, options, runner)
    assert result.images[0].image.size == (48, 48)  # 24 px upscaled 2x by the model
    assert seen and set(seen) == {(32, 32)}
    assert "SD upscale upscaler: 2x-tiny" in result.images[0].infotext
