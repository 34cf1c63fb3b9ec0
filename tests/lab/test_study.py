"""Prompt studies on the tiny model: the JSON's numbers are recomputable from the saved images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sdstudio.lab import stats
from sdstudio.lab.judge import load_judge
from sdstudio.lab.study import make_spec, run_study

FAST = {"seeds": 4, "steps": 2, "sampler": "Euler", "width": 32, "height": 32, "batch": 4}


@pytest.fixture(scope="module")
def judge():
    return load_judge()


@pytest.fixture(scope="module")
def different(tiny_sd1, judge, tmp_path_factory):
    out = tmp_path_factory.mktemp("study-diff")
    spec = make_spec("custom", "cat", "rocket", ["a cat", "a red rocket launch"], with_concepts=True, **FAST)
    return out, run_study(tiny_sd1, spec, out, judge)


def test_json_numbers_match_a_recomputation_from_the_saved_images(different, judge):
    out, data = different
    on_disk = json.loads((out / "study.json").read_text())
    assert on_disk["image_change"][0]["per_seed"] == data["image_change"][0]["per_seed"]
    base = [Image.open(out / p) for p in data["variants"][0]["images"]]
    other = [Image.open(out / p) for p in data["variants"][1]["images"]]
    assert [im.info["parameters"].split("Seed: ")[1].split(",")[0] for im in base] == ["1", "2", "3", "4"]
    mad = [
        float(np.abs(np.asarray(a, float) - np.asarray(b, float)).mean() / 255) for a, b in zip(other, base)
    ]
    per_seed = on_disk["image_change"][0]["per_seed"]
    assert per_seed["pixel_mad"] == pytest.approx(mad, rel=1e-9)
    assert per_seed["ssim_distance"] == pytest.approx(
        [1 - stats.ssim(a, b) for a, b in zip(other, base)], rel=1e-9
    )
    emb_a, emb_b = judge.images(other), judge.images(base)
    clip = [1 - float(x @ y) for x, y in zip(emb_a, emb_b)]
    assert per_seed["clip_distance"] == pytest.approx(clip, abs=1e-5)
    floor = [
        float(np.abs(np.asarray(base[k], float) - np.asarray(base[(k + 1) % 4], float)).mean() / 255)
        for k in range(4)
    ]
    assert on_disk["noise_floor"]["per_seed"]["pixel_mad"] == pytest.approx(floor, rel=1e-9)
    want = stats.mean_ci(np.array(mad)).to_json()
    assert on_disk["image_change"][0]["pixel_mad"] == {k: pytest.approx(v, rel=1e-9) for k, v in want.items()}
    assert (out / "report.html").read_text().count("data:image/png;base64,") >= 3
    assert "http" not in (out / "report.html").read_text().split("<pre>")[0].lower().replace("http-equiv", "")


def test_identical_variants_give_a_ci_around_zero_and_different_prompts_exclude_it(
    tiny_sd1, judge, tmp_path, different
):
    spec = make_spec("custom", "cat", "rocket", ["a cat", "a cat"], with_concepts=True, **FAST)
    same = run_study(tiny_sd1, spec, tmp_path, judge)
    change = same["image_change"][0]
    assert change["pixel_mad"]["lo"] <= 0 <= change["pixel_mad"]["hi"] and change["pixel_mad"]["mean"] == 0
    margin = same["dominance"][1]["vs_base"]["clip_margin_a_minus_b"]
    assert margin["lo"] <= 0 <= margin["hi"]
    diff = different[1]["image_change"][0]["pixel_mad"]
    assert diff["lo"] > 0  # clearly different prompts: the paired change excludes 0
    assert same["conditioning"][0]["pooled_cos_distance"] == pytest.approx(0, abs=1e-9)
    assert different[1]["conditioning"][0]["pooled_cos_distance"] > 1e-4


def test_dominance_and_attention_numbers(different):
    _, data = different
    dom = data["dominance"]
    assert [d["prompt"] for d in dom] == ["a cat", "a red rocket launch"]
    share = dom[0]["per_seed"]["attention_share_a"]
    assert all(0 < s <= 1 for s in share)
    assert dom[1]["per_seed"]["attention_mass_a"] == [0.0] * 4  # "cat" is not in the second prompt


def test_punctuation_study_reports_exact_token_ids(tiny_sd1):
    spec = make_spec("punctuation", "girl", "boy", **FAST)
    assert spec.variants == ["girl boy", "girl ? ? boy", "girl ! ! ? ? boy"]
    from sdstudio.lab.study import _variant_info

    one = _variant_info(tiny_sd1, -1, "girl ?? boy", [])
    two = _variant_info(tiny_sd1, -1, "girl ? ? boy", [])
    assert one["tokens"] == ["girl</w>", "??</w>", "boy</w>"] and len(two["token_ids"]) == 4
    assert two["token_ids"][1] == two["token_ids"][2] != one["token_ids"][1]


def test_bootstrap_is_reproducible_and_covers_the_mean():
    rng = np.random.default_rng(1)
    a = rng.normal(1.0, 0.1, 32)
    e = stats.mean_ci(a)
    assert e == stats.mean_ci(a) and e.lo < a.mean() < e.hi and e.excludes(0)
    assert not stats.paired_diff_ci(a, a).excludes(0)
    assert stats.paired_diff_ci(a + 0.5, a).lo > 0.49


def test_ssim_is_one_for_identical_images_and_drops_with_noise():
    rng = np.random.default_rng(0)
    x = np.broadcast_to(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (32, 32, 3))  # smooth ramp
    noisy = np.clip(x.astype(int) + rng.integers(-40, 40, x.shape), 0, 255).astype(np.uint8)
    assert stats.ssim(x, x) == pytest.approx(1.0)
    assert stats.ssim(x, noisy) < 0.5 < stats.ssim(x, np.clip(x.astype(int) + 3, 0, 255).astype(np.uint8))
    assert stats.ssim(x, noisy) == pytest.approx(stats.ssim(noisy, x))


def test_bad_study_requests_are_clear_errors():
    from sdstudio.errors import SDStudioError

    with pytest.raises(SDStudioError, match="unknown study"):
        make_spec("colour")
    with pytest.raises(SDStudioError, match="two variant"):
        make_spec("custom", variants=["only one"])
    with pytest.raises(SDStudioError, match="seeds"):
        make_spec("word-order", seeds=1)
