"""The scripts over a real tiny model: grid size and labels, batching, prompt matrix, SD upscale."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sdstudio.config import GenerationRequest
from sdstudio.pipelines import img2img, txt2img
from sdstudio.pipelines.scripts import grid, prompt_matrix, registry, sd_upscale, xyz_grid
from tests.tolerance import assert_same_composition

BASE = GenerationRequest(
    prompt="a cat with a hat", width=64, height=64, steps=2, sampler_name="Euler", seed=5
)


class Runner:
    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, request, *, init_images=None, model=None):
        self.calls.append(request)
        if init_images:
            return img2img(self.model, request, init_images=init_images)
        return txt2img(self.model, request)


def test_xyz_grid_has_one_labelled_cell_per_combination(tiny_sd1):
    run = Runner(tiny_sd1)
    result = registry.run_api_script(
        "x/y/z plot", [1, "1-3", [], 6, "3, 7", [], 0, "", [], True, True], BASE, run
    )
    main = result.images[0]
    assert main.is_grid and len(result.images) == 1 + 6 and len(result.cells) == 6
    # 3 columns x 2 rows of 64 px cells, plus A1111's label bands: left = 64 * 3 // 4, top = text height
    assert main.image.width == 3 * 64 + 48 and main.image.height > 2 * 64
    assert "Script: X/Y/Z plot" in main.infotext and "X Type: Seed" in main.infotext
    assert 'Fixed X Values: "1, 2, 3"' in main.infotext and "Y Type: CFG Scale" in main.infotext
    assert [c.seed for c in result.cells] == [1, 2, 3, 1, 2, 3]
    assert [f"CFG scale: {c}" in im.infotext for c, im in zip([3, 3, 3, 7, 7, 7], result.cells)] == [True] * 6
    assert result.runner_calls == 2 and [r.batch_size for r in run.calls] == [3, 3]  # one call per CFG row
    # cell pixels sit in the grid at their place: column 2, row 1 is seed 3 at CFG 7
    top = main.image.height - 2 * 64
    crop = np.asarray(main.image.crop((48 + 128, top + 64, 48 + 192, top + 128)), dtype=int)
    assert np.abs(crop - np.asarray(result.cells[5].image, dtype=int)).max() == 0


def test_batched_cells_match_single_images(tiny_sd1):
    result = registry.run_api_script(
        "x/y/z plot", [1, "7-8", [], 0, "", [], 0, "", [], True, True], BASE, Runner(tiny_sd1)
    )
    alone = txt2img(tiny_sd1, BASE.replace(seed=8))[0]
    assert_same_composition(result.cells[1].image, alone.image)  # batch of 2 vs batch of 1
    assert result.cells[1].infotext == alone.infotext


def test_default_a1111_response_is_the_grid_only_and_z_makes_sub_grids(tiny_sd1):
    args = [1, "1,2", [], 0, "", [], 6, "3,7", [], True, False, True]  # include_sub_grids, not lone images
    result = registry.run_api_script("x/y/z plot", args, BASE, Runner(tiny_sd1))
    assert [im.is_grid for im in result.images] == [True, True, True]
    main, sub1, sub2 = (im.image for im in result.images)
    assert sub1.size == sub2.size and main.width == 2 * sub1.width  # Z grids side by side, titled
    assert main.height > sub1.height and "Z Type: CFG Scale" in result.images[0].infotext
    assert "Z Type" not in result.images[1].infotext


def test_no_legend_grid_is_bare(tiny_sd1):
    result = registry.run_api_script(
        "x/y/z plot", [4, "1,2", [], 0, "", [], 0, "", [], False], BASE, Runner(tiny_sd1)
    )
    assert result.images[0].image.size == (128, 64)


def test_prompt_matrix_combinations_and_grid(tiny_sd1):
    assert prompt_matrix.matrix_prompts("a cat|hat|scarf") == [
        "a cat",
        "a cat, hat",
        "a cat, scarf",
        "a cat, hat, scarf",
    ]
    assert prompt_matrix.matrix_prompts("cat|hat", put_at_start=True, delimiter="space") == ["cat", "hat cat"]
    run = Runner(tiny_sd1)
    result = registry.run_api_script("prompt matrix", [], BASE.replace(prompt="a cat|hat|scarf"), run)
    assert len(result.images) == 1 + 4 and result.images[0].is_grid
    assert [r.prompt for r in run.calls][:4] == ["a cat", "a cat, hat", "a cat, scarf", "a cat, hat, scarf"]
    assert {r.seed for r in run.calls} == {5}  # one seed unless "different seeds"
    g = result.images[0].image
    assert g.width == 2 * 64 + 48 and g.height > 2 * 64  # 2 ** ((3 - 1) // 2) = 2 rows of 2


def test_grid_labels_are_drawn_where_a1111_puts_them():
    cells = [Image.new("RGB", (64, 64), (40, 90, 200)) for _ in range(4)]
    g = np.asarray(grid.labelled_grid(cells, ["A", "B"], ["one", "two"]).convert("L"), dtype=int)
    top = g.shape[0] - 128
    assert top > 0 and (g[:top, 48:] < 128).any()  # column text in the top band
    assert (g[top:, :48] < 128).any() and (g[:top, :48] == 255).all()  # row text in the left band only
    bare = np.asarray(grid.labelled_grid(cells, ["", ""], ["", ""]))
    assert bare.shape == (128, 128, 3)  # no text -> no bands


def test_split_and_combine_round_trip():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (100, 150, 3), dtype=np.uint8))
    tiles = grid.split_grid(image, 64, 64, 16)
    assert len(tiles.rows) == 2 and len(tiles.rows[0][2]) == 3
    assert (
        tiles.rows[-1][0] == 100 - 64 and tiles.rows[0][2][-1][0] == 150 - 64
    )  # last tiles flush with the edge
    assert np.array_equal(np.asarray(grid.combine_grid(tiles)), np.asarray(image))


def test_sd_upscale_tiles_and_blends(tiny_sd1):
    init = Image.new("RGB", (48, 48), (200, 40, 40))
    run = Runner(tiny_sd1)
    base = BASE.replace(denoising_strength=0.3, batch_size=2)
    result = registry.run_api_script(
        "sd upscale", [None, 16, "Lanczos", 2.0], base, run, kind="img2img", init_images=[init]
    )
    (out,) = result.images
    assert out.image.size == (96, 96) and not out.is_grid
    assert "SD upscale upscaler: Lanczos" in out.infotext and "SD upscale overlap: 16" in out.infotext
    # 96 px at 64 px tiles with 16 px overlap: 2 x 2 tiles in batches of 2 seeded seed+0, seed+1
    assert [(r.seed, r.batch_size) for r in run.calls] == [(5, 2), (6, 2)]
    assert sd_upscale.options_from_args([None, 64, 0, 2]).upscaler == "None"


@pytest.mark.parametrize(
    "name, args, kind",
    [
        ("loopback", [], "txt2img"),
        ("sd upscale", [], "txt2img"),
        ("x/y/z plot", [99, "1"], "txt2img"),
        (
            "x/y/z plot",
            [1, "1-3", [], 0, "", [], 0, "", [], True, False, False, False, False, False, False, 0, False, 1],
            "txt2img",
        ),
        ("prompt matrix", [False, False, "sideways"], "txt2img"),
        ("sd upscale", [None, 64, "ESRGAN_4x", 2], "img2img"),
    ],
)
def test_bad_script_requests_are_clear_errors(name, args, kind):
    from sdstudio.errors import SDStudioError

    with pytest.raises(SDStudioError) as err:
        registry.parse_script(name, args, kind)
    assert err.value.field in ("script_name", "script_args")


def test_unknown_script_lists_the_known_ones():
    from sdstudio.errors import SDStudioError

    with pytest.raises(SDStudioError, match="x/y/z plot, prompt matrix"):
        registry.parse_script("loopback", [], "txt2img")


def test_xyz_options_accept_short_and_labelled_args():
    opts = xyz_grid.options_from_args(["Steps", "1,2"])
    assert opts.x.axis.label == "Steps" and opts.y.axis.label == "Nothing" and opts.draw_legend
