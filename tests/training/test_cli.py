"""``sdstudio train ...`` and ``sdstudio data`` from the command line on a tiny folder."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from sdstudio.cli import main
from sdstudio.training.data import synthetic_shapes
from sdstudio.training.loop import CHECKPOINT


@pytest.fixture
def folder(tmp_path):
    data = synthetic_shapes(8, size=16)
    rows = []
    (tmp_path / "data" / "images").mkdir(parents=True)
    for i, (img, caps) in enumerate(zip(data.images, data.captions)):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(tmp_path / "data" / "images" / f"{i}.png")
        rows.append({"file": f"images/{i}.png", "caption": caps[0], "captions": caps})
    (tmp_path / "data" / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return tmp_path / "data"


COMMON = ["--batch-size", "4", "--sample-every", "0", "--no-progress", "--cpu", "--warmup-steps", "1"]


def test_train_vae_cli_then_resume(tmp_path, folder, capsys):
    out = tmp_path / "vae"
    args = ["train", "vae", str(folder), "--out", str(out), "--size", "16", "--channels", "8,16", *COMMON]
    assert main([*args, "--steps", "2"]) == 0
    assert main([*args, "--steps", "3", "--resume"]) == 0
    ckpt = torch.load(out / CHECKPOINT, weights_only=True)
    assert ckpt["step"] == 3 and len(ckpt["losses"]) == 3
    assert (out / "final" / "vae" / "config.json").is_file()
    assert "vae: 3 steps" in capsys.readouterr().out


def test_train_ddpm_cli_class_conditional(tmp_path, folder):
    out = tmp_path / "ddpm"
    args = ["train", "ddpm", str(folder), "--out", str(out), "--size", "16", "--channels", "16,32"]
    assert main([*args, "--condition", "class", "--steps", "2", *COMMON]) == 0
    assert json.loads((out / "final" / "classes.json").read_text())["red square"] == 0


def test_train_cli_errors(tmp_path, folder, capsys):
    assert main(["train", "vae", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "data folder not found" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                "ldm",
                str(folder),
                "--out",
                str(tmp_path / "o"),
                "--vae",
                str(tmp_path),
                "--text-encoder",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "not a model folder" in capsys.readouterr().err
    assert main(["train", "default", str(folder), "--out", str(tmp_path / "o"), "--stages", "vae,gan"]) == 2
    assert "stages must be" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "vae", str(folder), "--out", str(tmp_path / "o"), "--channels", "a,b"])
