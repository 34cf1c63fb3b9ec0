"""The DDPM visualiser: forward-process maths, strip/GIF sizes, CLI errors, reverse trajectory on a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from sdstudio.cli import main
from sdstudio.errors import SDStudioError
from sdstudio.lab import diffusion_viz as viz
from sdstudio.training.diffusion import alphas_cumprod, scheduler_config


def test_demolish_follows_q_xt_given_x0():
    cfg = scheduler_config("linear")
    x0 = torch.full((1, 3, 32, 32), 0.5)
    frames = viz.demolish(x0, [0, 999], cfg, seed=1)
    abar = alphas_cumprod(cfg)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(frames[0], (abar[0].sqrt() * x0 + (1 - abar[0]).sqrt() * noise).clamp(-1, 1))
    assert (frames[0] - x0).abs().mean() < 0.02  # t=0 keeps the image
    assert abs(frames[1].mean().item()) < 0.1  # t=999: the signal (0.5) is gone


def test_demolish_strip_and_gif_sizes(tmp_path):
    frames = viz.tensor_to_pil(viz.demolish(torch.zeros(1, 3, 16, 16), [0, 10, 500], scheduler_config()))
    strip = viz.save_frames(frames, ["t=0", "t=10", "t=500"], tmp_path / "s.png", scale=2)
    assert Image.open(strip).size == (3 * 32, 32 + 14)
    gif = Image.open(viz.save_frames(frames, ["a", "b", "c"], tmp_path / "s.gif"))
    assert gif.n_frames == 3 and gif.size == (16, 16 + 14)
    with pytest.raises(SDStudioError, match="must end in"):
        viz.save_frames(frames, ["a", "b", "c"], tmp_path / "s.txt")


def test_cli_demolish_writes_strip(tmp_path, capsys):
    Image.new("RGB", (24, 24), (200, 30, 30)).save(tmp_path / "in.png")
    out = tmp_path / "strip.png"
    assert main(["lab", "demolish", str(tmp_path / "in.png"), "--t", "0,100,999", "--out", str(out)]) == 0
    strip = Image.open(out)
    assert strip.size == (3 * 48, 48 + 14)  # default scale 2
    assert strip.getpixel((10, 10))[0] > 150  # t=0 frame is still red


def test_cli_demolish_rejects_bad_input(tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "in.png")
    assert main(["lab", "demolish", str(tmp_path / "in.png"), "--t", "0,1000"]) == 2
    assert "timesteps must be in [0, 999]" in capsys.readouterr().err
    assert main(["lab", "demolish", str(tmp_path / "nope.png")]) == 2
    (tmp_path / "bad.png").write_text("not an image")
    assert main(["lab", "demolish", str(tmp_path / "bad.png")]) == 2
    assert "not an image" in capsys.readouterr().err


def test_latent_demolish_decodes_through_the_vae(tiny_sd1):
    x0 = torch.zeros(1, 3, 32, 32)
    frames = viz.demolish(x0, [0, 500], tiny_sd1.scheduler_config, vae=tiny_sd1.vae)
    assert frames.shape == (2, 3, 32, 32) and torch.isfinite(frames).all()


def test_build_records_every_step(tiny_sd1):
    from sdstudio.config import GenerationRequest

    req = GenerationRequest(
        prompt="a cat", width=32, height=32, steps=4, seed=3, sampler_name="Euler", cfg_scale=3
    )
    traj = viz.build(tiny_sd1, req)
    assert traj.x_t.shape == traj.x0_pred.shape == (4, 3, 32, 32)
    assert traj.sigmas == sorted(traj.sigmas, reverse=True) and len(traj.sigmas) == 4
    assert torch.isfinite(traj.final).all() and traj.final.shape == (1, 3, 32, 32)
    assert not torch.equal(traj.x_t[0], traj.x_t[-1])


def test_cli_lab_writes_under_outputs_by_default(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp_path / "in.png")
    assert main(["lab", "demolish", "in.png", "--t", "0,999"]) == 0
    assert main(["lab", "demolish", "in.png", "--t", "0,999"]) == 0
    printed = [line.removeprefix("wrote ") for line in capsys.readouterr().out.split("\n") if line]
    assert [Path(p).name for p in printed] == ["00001-demolish.png", "00002-demolish.png"]
    assert all(Path(p).parts[:2] == ("outputs", "lab-images") and (tmp_path / p).is_file() for p in printed)
    assert not list(tmp_path.glob("*.png"))[1:]  # nothing but the input in the working folder
