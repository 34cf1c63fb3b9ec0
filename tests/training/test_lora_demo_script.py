"""scripts/lora_demo.py: writes into outputs/ unless told otherwise (a run from the repo root used to
overwrite the tracked docs/lora-demo.png) and its grid labels are whole ("flag of Ja" before)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "lora_demo.py"


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("lora_demo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_output_is_not_a_tracked_file(demo):
    args = demo.parse_args([])
    assert args.image == Path("outputs/lora-demo/lora-demo.png") and args.out == Path("outputs/lora-demo")
    assert demo.parse_args(["--out", "x"]).image == Path("x/lora-demo.png")
    assert demo.parse_args(["--image", "docs/lora-demo.png"]).image == Path("docs/lora-demo.png")


def test_grid_labels_are_wrapped_not_cut(demo):
    labels = [*demo.HELD_OUT, "a much longer held-out prompt"]
    rows = [
        (title, [Image.new("RGB", (64, 64), "red")] * len(labels)) for title in ("no LoRA", "<lora:zqx:1>")
    ]
    out = demo.grid(rows, labels, cell=96)
    draw = ImageDraw.Draw(out)
    for label in labels:
        lines = demo.wrap(draw, label, 92)
        assert " ".join(lines) == label and all(draw.textlength(x) <= 92 for x in lines), lines
    left = out.width - 96 * len(labels)
    top = out.height - 96 * len(rows)
    assert left > draw.textlength("<lora:zqx:1>")  # row titles fit beside the images
    assert top >= 12 * max(len(demo.wrap(draw, x, 92)) for x in labels) >= 24  # every label line fits
    # the images are enlarged, not cropped: a whole 96 px red cell under every label
    cell = out.crop((left, top, left + 96, top + 96))
    assert cell.getcolors() == [(96 * 96, (255, 0, 0))]
