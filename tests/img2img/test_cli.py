"""CLI verbs img2img / inpaint / outpaint on a tiny model saved as a diffusers folder."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from PIL import Image

from sdstudio.cli import edit
from sdstudio.runtime.outputs import read_infotext


def _main(argv: list[str]) -> int:
    """Parse with only the edit verbs registered (as ``sdstudio.cli.main`` does for every module)."""
    from sdstudio.errors import SDStudioError

    parser = argparse.ArgumentParser(prog="sdstudio")
    edit.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SDStudioError as exc:
        print(f"sdstudio: error: {exc}")
        return 2


@pytest.fixture(scope="module")
def files(tiny_sd1, tmp_path_factory):
    from sdstudio.models.save import save_diffusers

    root = tmp_path_factory.mktemp("cli")
    folder = save_diffusers(tiny_sd1, root / "tiny-sd1")
    y, x = np.mgrid[0:64, 0:64]
    Image.fromarray(np.stack([x * 4, y * 4, 255 - x * 2], -1).astype(np.uint8)).save(root / "init.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[36:52, 30:46] = 255
    Image.fromarray(mask).save(root / "mask.png")
    return root, folder


def _common(folder, out) -> list[str]:
    return [
        "--model", str(folder), "--precision", "fp32", "--steps", "3", "--cfg-scale", "1.5",
        "--sampler", "Euler", "--seed", "11", "--outdir", str(out),
    ]  # fmt: skip


def _only_png(folder):
    pngs = sorted(folder.glob("*.png"))
    assert len(pngs) == 1, pngs
    return pngs[0]


def test_img2img_verb_writes_png_with_infotext(files, tmp_path):
    root, model = files
    rc = _main(["img2img", "a hill", "--init", str(root / "init.png"), "--denoising-strength", "0.6",
                *_common(model, tmp_path)])  # fmt: skip
    assert rc == 0
    png = _only_png(tmp_path)
    assert Image.open(png).size == (64, 64)
    text = read_infotext(png)
    assert "Denoising strength: 0.6" in text and "Init image hash: " in text and "Seed: 11" in text


def test_inpaint_only_masked_reproduces_from_png(files, tmp_path):
    root, model = files
    args = ["inpaint", "a door", "--init", str(root / "init.png"), "--mask", str(root / "mask.png"),
            "--only-masked", "--only-masked-padding", "4", "--mask-blur", "2", "--inpainting-fill", "latent-noise"]  # fmt: skip
    assert _main([*args, *_common(model, tmp_path / "a")]) == 0
    first = _only_png(tmp_path / "a")
    text = read_infotext(first)
    for key in (
        "Mask blur: 2",
        "Inpaint area: Only masked",
        "Masked area padding: 4",
        "Masked content: latent noise",
    ):
        assert key in text
    # --from-png with the same init image and mask: same settings, same pixels
    again = ["inpaint", "--from-png", str(first), "--init", str(root / "init.png"), "--mask", str(root / "mask.png"),
             "--model", str(model), "--precision", "fp32", "--outdir", str(tmp_path / "b")]  # fmt: skip
    assert _main(again) == 0
    second = _only_png(tmp_path / "b")
    assert read_infotext(second) == text
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(second)))


def test_outpaint_verb_grows_canvas_and_reproduces(files, tmp_path):
    root, model = files
    rc = _main(["outpaint", "sky", "--init", str(root / "init.png"), "--left", "16", "--up", "8",
                *_common(model, tmp_path / "a")])  # fmt: skip
    assert rc == 0
    first = _only_png(tmp_path / "a")
    assert Image.open(first).size == (80, 72)
    assert "Outpaint: left=16 right=0 up=8 down=0" in read_infotext(first)
    # sides, seed and strength come back from the infotext
    again = ["outpaint", "--from-png", str(first), "--init", str(root / "init.png"), "--model", str(model),
             "--precision", "fp32", "--outdir", str(tmp_path / "b")]  # fmt: skip
    assert _main(again) == 0
    second = _only_png(tmp_path / "b")
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(second)))


def test_cli_bad_inputs_exit_2_with_message(files, tmp_path, capsys):
    root, model = files
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"this is not a png")
    assert _main(["img2img", "x", "--init", str(junk), *_common(model, tmp_path)]) == 2
    assert "not a readable image" in capsys.readouterr().out
    rc = _main(["img2img", "x", "--init", str(root / "init.png"), "--denoising-strength", "1.5",
                *_common(model, tmp_path)])  # fmt: skip
    assert rc == 2 and "denoising_strength must be in [0, 1]" in capsys.readouterr().out
    assert _main(["outpaint", "x", "--init", str(root / "init.png"), *_common(model, tmp_path)]) == 2
    assert "--left/--right/--up/--down" in capsys.readouterr().out
    assert not list(tmp_path.glob("*.png"))
