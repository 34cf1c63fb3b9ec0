"""A1111 prompt emphasis, BREAK and 75-token chunking."""

from __future__ import annotations

import doctest

import torch

from sdstudio.families.sd.tokenizer import clip_tokenizer
from sdstudio.prompts import emphasis as attention
from sdstudio.prompts.encode import apply_emphasis, encode_prompts, tokenize_chunks

BOS, EOS = 49406, 49407


def test_attention_doctests():
    assert doctest.testmod(attention).failed == 0


def test_weights_follow_tokens_and_break_starts_a_chunk():
    chunks = tokenize_chunks(clip_tokenizer(), "a (cat:1.5) BREAK dog")
    assert len(chunks) == 2
    assert chunks[0].tokens[:4] == [BOS, 320, 2368, EOS] and chunks[0].multipliers[:4] == [1.0, 1.0, 1.5, 1.0]
    assert chunks[1].tokens[:3] == [BOS, 1929, EOS]
    assert all(len(c.tokens) == 77 and len(c.multipliers) == 77 for c in chunks)


def test_long_prompt_backs_up_to_last_comma():
    tok = clip_tokenizer()
    prompt = ", ".join(["a red apple on a wooden table"] * 12)  # 8 tokens per phrase incl. comma
    chunks = tokenize_chunks(tok, prompt)
    comma = tok.get_vocab()[",</w>"]
    body = [t for t in chunks[0].tokens if t not in (BOS, EOS)]
    assert len(chunks) == 2 and body[-1] == comma and len(body) < 75  # cut after a comma, not mid-phrase


def test_openclip_pads_with_its_pad_id_after_eos():
    chunk = tokenize_chunks(clip_tokenizer(pad_token="!"), "a cat")[0]
    assert chunk.tokens[:5] == [BOS, 320, 2368, EOS, 0]


def test_emphasis_scales_the_token_and_keeps_the_mean():
    z = torch.rand(1, 77, 8) + 0.5
    w = torch.ones(1, 77)
    w[0, 3] = 1.5
    out = apply_emphasis(z, w)
    assert torch.allclose(out.mean(), z.mean())
    ratio = (out[0, 3] / z[0, 3]) / (out[0, 2] / z[0, 2])
    assert torch.allclose(ratio, torch.tensor(1.5))
    assert torch.equal(apply_emphasis(z, torch.ones(1, 77)), z)


def test_emphasis_changes_the_conditioning(tiny_sd1):
    plain = encode_prompts(tiny_sd1, ["a cat"]).context
    weighted = encode_prompts(tiny_sd1, ["a (cat:1.4)"]).context
    assert plain.shape == weighted.shape == (1, 77, 32)
    assert not torch.allclose(plain, weighted)
