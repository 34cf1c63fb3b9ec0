"""DAAM word-attention maps on the tiny model: processors restored, maps sum to the recorded mass."""

from __future__ import annotations

import json

import pytest
import torch

from sdstudio.config import GenerationRequest
from sdstudio.lab import attention as att
from sdstudio.pipelines import txt2img
from tests.tolerance import assert_same_composition

REQ = GenerationRequest(prompt="a cat and a dog", width=64, height=64, steps=3, sampler_name="Euler", seed=2)


@pytest.fixture(scope="module")
def result(tiny_sd1):
    return att.attention_maps(tiny_sd1, REQ)


def test_maps_average_to_the_recorded_mass(tiny_sd1, result):
    # token maps come from the upsampled per-layer maps, masses from the raw probabilities: independent sums
    for pos, _, mass in result.tokens:
        assert float(result.token_maps[pos].mean()) == pytest.approx(mass, rel=1e-4, abs=1e-7)
    for word in result.words:
        assert float(word.heatmap.mean()) == pytest.approx(word.mass, rel=1e-4, abs=1e-7)
        assert (word.heatmap >= 0).all()
    assert result.total_mass == pytest.approx(1.0, abs=1e-4)  # softmax rows over all 77 tokens
    layers = sum(name.endswith("attn2.processor") for name in tiny_sd1.unet.attn_processors)
    assert result.calls == 3 * layers  # every cross-attention layer at each of the 3 Euler steps


def test_words_follow_the_tokenizer_and_absent_words_have_nothing(result):
    assert [w.text for w in result.words] == ["a", "cat", "and", "a", "dog"]
    assert result.word("cat").mass > 0 and result.word("a").positions == [1, 4]
    horse = result.word("horse")
    assert horse.mass == 0 and horse.positions == [] and float(horse.heatmap.abs().sum()) == 0


def test_processors_are_restored_and_the_image_is_unchanged(tiny_sd1, result):
    before = dict(tiny_sd1.unet.attn_processors)
    plain = txt2img(tiny_sd1, REQ)[0]
    assert_same_composition(plain.image, result.image)  # same attention output (eager vs SDPA)
    assert {k: type(v) for k, v in tiny_sd1.unet.attn_processors.items()} == {
        k: type(v) for k, v in before.items()
    }
    assert not any(isinstance(p, att.RecordingAttnProcessor) for p in tiny_sd1.unet.attn_processors.values())


def test_emphasis_and_punctuation_tokens(tiny_sd1):
    tokens, words = att.prompt_words(tiny_sd1.tokenizers[0], "(girl:1.3) ? ? boy??")
    assert [w for w, _ in words] == ["girl", "?", "?", "boy", "??"]  # "??" is one BPE token, "? ?" two
    assert tokens[0][0] == 1  # position 0 is BOS


def test_keep_mean_preserves_each_channel():
    src = torch.rand(1, 3, 4, 4)
    up = torch.nn.functional.interpolate(src, size=(16, 16), mode="bicubic")
    kept = att.keep_mean(src, up)
    assert torch.allclose(kept.mean(dim=(2, 3)), src.mean(dim=(2, 3)), rtol=1e-5)


def test_cli_attention_writes_maps_and_json(tiny_dir, tmp_path, capsys):
    from sdstudio.cli import main

    rc = main(["lab", "attention", "a cat", "--model", str(tiny_dir), "--steps", "2", "--sampler", "Euler",
               "--width", "32", "--height", "32", "--words", "cat,dog", "--out", str(tmp_path), "--precision", "fp32"])  # fmt: skip
    assert rc == 0
    data = json.loads((tmp_path / "attention.json").read_text())
    masses = {w["word"]: w["mass"] for w in data["requested_words"]}
    assert masses["cat"] > 0 and masses["dog"] == 0
    assert (tmp_path / "word-00-cat.png").is_file() and (tmp_path / "attention.png").is_file()


def test_a_batch_records_each_image_apart(tiny_sd1, result):
    batch = att.attention_batch(tiny_sd1, REQ.replace(seed=1, batch_size=2))
    assert len(batch) == 2
    second = batch[1]  # seed 2 in a batch of two == the single seed-2 run, up to batched float error
    assert_same_composition(second.image, result.image)
    for (_, _, m1), (_, _, m2) in zip(second.tokens, result.tokens):
        assert m1 == pytest.approx(m2, rel=1e-3, abs=1e-6)
