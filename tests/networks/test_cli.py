"""CLI: --models-dir LoRA/embedding/VAE, infotext hashes, --from-png re-applies them or names what is missing."""

from __future__ import annotations

import argparse
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from sdstudio.cli import generate
from sdstudio.infotext import parse_infotext
from sdstudio.models.tiny import _vae
from sdstudio.runtime.outputs import read_infotext
from tests.networks.helpers import kohya_lora, save


def _main(argv: list[str]) -> int:
    from sdstudio.errors import SDStudioError

    parser = argparse.ArgumentParser(prog="sdstudio")
    generate.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SDStudioError as exc:
        print(f"sdstudio: error: {exc}")
        return 2


@pytest.fixture
def models(tiny_sd1, tmp_path):
    from sdstudio.models.save import save_single_file

    root = tmp_path / "models"
    ckpt = save_single_file(tiny_sd1, root / "Stable-diffusion" / "tiny.safetensors")
    save(_vae(seed=9).state_dict(), ckpt.parent / "tiny.vae.safetensors")  # "Automatic" picks it
    save(kohya_lora(tiny_sd1, alpha=2.0)[0], root / "Lora" / "style.safetensors")
    save({"emb_params": torch.randn(2, 32)}, root / "embeddings" / "goodemb.safetensors")
    return root, ckpt


def _run(models, out, *extra) -> Image.Image:
    root, ckpt = models
    argv = ["txt2img", *extra, "--model", str(ckpt), "--models-dir", str(root), "--outdir", str(out)]
    argv += ["--precision", "fp32", "--steps", "2", "--sampler", "Euler", "--seed", "5"]
    assert _main(argv) == 0
    [path] = sorted(out.glob("*.png"))
    return Image.open(path)


def test_txt2img_applies_and_records_networks(models, tmp_path, capsys):
    image = _run(models, tmp_path / "a", "a cat <lora:style:0.8> goodemb")
    fields = parse_infotext(read_infotext(image))
    assert fields["Prompt"] == "a cat <lora:style:0.8> goodemb"
    assert fields["Lora hashes"].startswith("style: ") and fields["TI hashes"].startswith("goodemb: ")
    assert fields["VAE"] == "tiny.vae" and len(fields["VAE hash"]) == 10
    plain = _run(models, tmp_path / "b", "a cat goodemb", "--vae", "None")
    assert "VAE" not in parse_infotext(read_infotext(plain))

    again = _run(models, tmp_path / "c", "--from-png", image.filename)
    assert np.array_equal(np.asarray(again), np.asarray(image))

    root, ckpt = models  # a renamed LoRA is found by its hash, as A1111 does
    (root / "Lora" / "style.safetensors").rename(root / "Lora" / "renamed.safetensors")
    renamed = _run(models, tmp_path / "d", "--from-png", image.filename)
    assert np.array_equal(np.asarray(renamed), np.asarray(image))
    assert "<lora:renamed:0.8>" in read_infotext(renamed)

    shutil.rmtree(root / "embeddings")
    (root / "Lora" / "renamed.safetensors").unlink()
    argv = ["txt2img", "--from-png", image.filename, "--model", str(ckpt), "--models-dir", str(root)]
    assert _main(argv) == 2
    err = capsys.readouterr().out
    assert "LoRA 'style'" in err and "embedding 'goodemb'" in err
