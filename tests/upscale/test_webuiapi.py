"""The ``webuiapi`` PyPI client, unchanged, calling Extras and listing upscalers on a live server."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.server.conftest import LiveServer
from tests.upscale.conftest import BUILDERS, save

webuiapi = pytest.importorskip("webuiapi")


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    from sdstudio.api import ServerSettings, create_app

    root = tmp_path_factory.mktemp("live")
    (root / "models" / "ESRGAN").mkdir(parents=True)
    save(BUILDERS["Compact"](scale=2), root / "models" / "ESRGAN" / "2x-tiny.safetensors")
    app = create_app(ServerSettings(outdir=root / "outputs", models_dir=root / "models"))
    with LiveServer(app) as server:
        yield webuiapi.WebUIApi(host="127.0.0.1", port=server.port)


def test_webuiapi_extras_with_a_model_upscaler(api):
    assert [u["name"] for u in api.get_upscalers()][-1] == "2x-tiny"
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 28, 3), dtype=np.uint8))
    single = api.extra_single_image(image, upscaler_1="2x-tiny", upscaling_resize=2)
    assert single.image.size == (56, 40)
    batch = api.extra_batch_images([image, image], upscaler_1="2x-tiny", upscaling_resize=2)
    assert [im.size for im in batch.images] == [(56, 40), (56, 40)]
    assert np.array_equal(np.asarray(batch.images[0]), np.asarray(single.image))
