"""The ``sdstudio`` command line end to end on a tiny diffusers folder."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sdstudio.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_sd1):
    from sdstudio.models.save import save_diffusers

    path = tmp_path_factory.mktemp("models") / "tiny-sd1"
    save_diffusers(tiny_sd1, path)
    return path


def test_txt2img_writes_numbered_pngs_and_regenerates_from_png(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["txt2img", "a cute fluffy cat plays trumpet", "--model", str(model_dir), "--width", "32",
               "--height", "32", "--cfg-scale", "7.5", "--seed", "124151765", "--batch-count", "2",
               "--batch-size", "1", "--steps", "3", "--sampler", "k_lms", "--negative-prompt", "blurry",
               "--outdir", str(out), "--precision", "fp32"])
    assert rc == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / "00001-124151765.png"), str(out / "00002-124151766.png")]
    text = Image.open(out / "00002-124151766.png").info["parameters"]
    assert text.startswith("a cute fluffy cat plays trumpet\nNegative prompt: blurry\nSteps: 3, Sampler: LMS, ")
    assert "CFG scale: 7.5, Seed: 124151766, Size: 32x32, Model hash: " in text

    again = tmp_path / "again"
    assert main(["txt2img", "--from-png", str(out / "00002-124151766.png"), "--model", str(model_dir),
                 "--outdir", str(again), "--precision", "fp32"]) == 0
    a = np.asarray(Image.open(out / "00002-124151766.png"))
    b = np.asarray(Image.open(again / "00001-124151766.png"))
    assert np.array_equal(a, b)

    assert main(["png-info", str(out / "00001-124151765.png"), "--json"]) == 0
    assert '"Seed": "124151765"' in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--width", "30"], "width must be a multiple of 8"),
        (["--steps", "0"], "steps must be between 1"),
        (["--sampler", "nope"], "unknown sampler 'nope'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(model_dir, tmp_path, capsys, argv, message):
    rc = main(["txt2img", "x", "--model", str(model_dir), "--outdir", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err


def test_missing_model_file(tmp_path, capsys):
    rc = main(["txt2img", "x", "--model", str(tmp_path / "nope.safetensors")])
    assert rc == 2 and "nope.safetensors" in capsys.readouterr().err


def test_png_info_on_a_plain_png(tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    assert main(["png-info", str(tmp_path / "plain.png")]) == 2
    assert "no generation parameters" in capsys.readouterr().err
