"""Evaluation maths (retrieval ranks, Fréchet distance) and an end-to-end run on the shipped model."""

from __future__ import annotations

import json

import torch
from PIL import Image

from sdstudio.training.evaluate import evaluate_model, frechet_distance, retrieval
from tests.training.test_default_model import MODEL


def test_retrieval_counts_ranks():
    emb = torch.eye(6)
    assert retrieval(emb, emb) == {"top1": 100.0, "top5": 100.0}
    shifted = emb.roll(1, dims=0)  # image i matches caption i-1 best; caption i ties the rest at 0
    r = retrieval(emb, shifted)
    assert r["top1"] == 0.0 and r["top5"] == 100.0  # rank 1 of 6 (only one caption beats it)


def test_frechet_distance_is_mean_gap_for_equal_covariances():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 3, generator=g)
    assert abs(frechet_distance(a, a)) < 1e-6
    assert abs(frechet_distance(a, a + torch.tensor([3.0, 0, 4.0])) - 25.0) < 1e-6


def _tiny_emoji_folder(root, data):
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(8):
        name = f"images/{i}.png"
        Image.fromarray(data[i]).save(root / name)
        rows.append(
            {
                "file": name,
                "caption": ["cat face", "red heart", "pizza", "rocket"][i % 4],
                "split": "test" if i < 4 else "train",
            }
        )
    (root / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_evaluate_end_to_end_and_cache(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    _tiny_emoji_folder(tmp_path / "data", rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8))
    out = tmp_path / "eval"
    (out).mkdir()
    Image.new("RGB", (8, 8)).save(out / "grid.png")  # present: the 32-image grid is not redrawn
    report = evaluate_model(MODEL, tmp_path / "data", out, steps=2, n=4)
    assert report.n == 4 and report.chance == {"top1": 25.0, "top5": 125.0}
    own = report.own_miniclip
    assert 0 <= own.generated_heldout["top1"] <= 100 and own.fd_noise_vs_heldout > 0
    assert (
        json.loads((out / "eval.json").read_text())["own_miniclip"]["generated_heldout"]
        == own.generated_heldout
    )
    stamp = (out / "generated.safetensors").stat().st_mtime_ns
    again = evaluate_model(MODEL, tmp_path / "data", out, steps=2, n=4)
    assert (out / "generated.safetensors").stat().st_mtime_ns == stamp  # reused, not regenerated
    assert again.own_miniclip.generated_heldout == own.generated_heldout
    assert abs(again.own_miniclip.fd_generated_vs_heldout - own.fd_generated_vs_heldout) < 1e-3
