"""Textual inversion: an embedding's name in the prompt becomes its vectors, and nothing else changes."""

from __future__ import annotations

import copy
import hashlib

import numpy as np
import pytest
import torch

from sdstudio.config import GenerationRequest
from sdstudio.errors import SDStudioError
from sdstudio.networks import NetworkLibrary, activate_networks
from sdstudio.networks.embeddings import read_embedding
from sdstudio.pipelines import txt2img
from sdstudio.prompts.encode import encode_prompts
from tests.networks.helpers import save

STAND_INS = ["zebra", "violin", "kettle"]  # single-token words whose embedding rows a reference copy replaces


def _req(prompt: str, negative: str = "") -> GenerationRequest:
    return GenerationRequest(prompt=prompt, negative_prompt=negative, width=32, height=32, steps=2, seed=3)


def _vectors(dim: int, n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def _reference(model, per_encoder: list[torch.Tensor]):
    """A copy of ``model`` whose stand-in words' token embeddings are the embedding's vectors."""
    ref = copy.deepcopy(model)
    for enc, tok, vec in zip(ref.text_encoders, ref.tokenizers, per_encoder):
        table = enc.get_input_embeddings().weight
        for word, row in zip(STAND_INS, vec):
            (token,) = tok(word, add_special_tokens=False)["input_ids"]
            table.data[token] = row
    return ref


def _encode(model, library, text: str):
    with activate_networks(model, library, _req(text)):
        return encode_prompts(model, [text])


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("template", ["a {} cat", "a ({}:1.3) cat, [{}] dog"])
def test_sd1_embedding_equals_reference_tokens(tiny_sd1, tmp_path, n, template):
    vec = _vectors(32, n, seed=n)
    save({"emb_params": vec}, tmp_path / "embeddings" / "myemb.safetensors")
    library = NetworkLibrary.from_models_dir(tmp_path)
    got = _encode(tiny_sd1, library, template.format("myemb", "myemb"))
    words = " ".join(STAND_INS[:n])
    want = encode_prompts(_reference(tiny_sd1, [vec]), [template.format(words, words)])
    torch.testing.assert_close(got.context, want.context, rtol=0, atol=0)


def test_sdxl_embedding_uses_clip_l_and_clip_g(tiny_sdxl, tmp_path):
    vl, vg = _vectors(32, 2, 1), _vectors(32, 2, 2)
    save({"clip_l": vl, "clip_g": vg}, tmp_path / "embeddings" / "xlemb.safetensors")
    library = NetworkLibrary.from_models_dir(tmp_path)
    got = _encode(tiny_sdxl, library, "photo of xlemb, red")
    want = encode_prompts(_reference(tiny_sdxl, [vl, vg]), ["photo of zebra violin, red"])
    torch.testing.assert_close(got.context, want.context, rtol=0, atol=0)
    torch.testing.assert_close(got.pooled, want.pooled, rtol=0, atol=0)


def test_only_positions_from_the_embedding_on_change(tiny_sd1, tmp_path):
    """CLIP attends causally: states before the name are those of the plain prompt; after it they differ."""
    save({"emb_params": _vectors(32, 2, 9)}, tmp_path / "embeddings" / "myemb.safetensors")
    library = NetworkLibrary.from_models_dir(tmp_path)
    text = "a red myemb cat"
    with_ti = _encode(tiny_sd1, library, text).context
    plain = encode_prompts(tiny_sd1, [text]).context  # no library: "myemb" is text (2 tokens)
    start = 1 + 2  # BOS, "a", "red"
    torch.testing.assert_close(with_ti[:, :start], plain[:, :start], rtol=0, atol=0)
    assert not torch.allclose(with_ti[:, start : start + 2], plain[:, start : start + 2])


def test_embedding_for_another_width_is_skipped(tiny_sd2, tmp_path):
    save({"emb_params": _vectors(32, 1, 1)}, tmp_path / "embeddings" / "myemb.safetensors")  # SD2 is 64-d
    library = NetworkLibrary.from_models_dir(tmp_path)
    torch.testing.assert_close(
        _encode(tiny_sd2, library, "a myemb").context, encode_prompts(tiny_sd2, ["a myemb"]).context
    )


def test_file_layouts(tmp_path):
    vec = _vectors(8, 2, 5)
    torch.save({"string_to_param": {"*": vec}, "name": "x", "step": 100}, tmp_path / "a1111.pt")
    torch.save({"<concept>": vec[0]}, tmp_path / "concept.bin")
    save({"emb_params": vec}, tmp_path / "kohya.safetensors")
    assert torch.equal(read_embedding(tmp_path / "a1111.pt").vectors[""], vec)
    assert torch.equal(read_embedding(tmp_path / "concept.bin").vectors[""], vec[:1])
    assert read_embedding(tmp_path / "kohya.safetensors").n_vectors == 2
    save({"a": vec, "b": vec.clone()}, tmp_path / "two.safetensors")
    with pytest.raises(SDStudioError, match="two.safetensors: not a textual-inversion embedding"):
        read_embedding(tmp_path / "two.safetensors")
    bad = vec.clone()
    bad[0, 0] = float("nan")
    save({"emb_params": bad}, tmp_path / "nan.safetensors")
    with pytest.raises(SDStudioError, match="nan.safetensors.*NaN"):
        read_embedding(tmp_path / "nan.safetensors")


def test_ti_hash_in_infotext_and_pixels_restored(tiny_sd1, tmp_path):
    path = save({"emb_params": _vectors(32, 1, 4)}, tmp_path / "embeddings" / "myemb.safetensors")
    library = NetworkLibrary.from_models_dir(tmp_path)
    plain = np.asarray(txt2img(tiny_sd1, _req("a myemb cat"))[0].image)
    item = txt2img(tiny_sd1, _req("a myemb cat", negative="blurry"), networks=library)[0]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert f'TI hashes: "myemb: {digest}"' in item.infotext
    assert tiny_sd1.textual_inversion is None
    assert np.array_equal(plain, np.asarray(txt2img(tiny_sd1, _req("a myemb cat"))[0].image))
    assert not np.array_equal(plain, np.asarray(item.image))
