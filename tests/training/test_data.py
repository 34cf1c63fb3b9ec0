"""Image-folder loading, batch order, and the emoji set builder on a fake npm install (no network)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from sdstudio.errors import SDStudioError
from sdstudio.training import emoji_data
from sdstudio.training.data import BatchOrder, load_image_folder, synthetic_shapes


def test_synthetic_shapes_draw_the_named_colour():
    data = synthetic_shapes(8, size=16)
    assert data.images.shape == (8, 3, 16, 16) and data.images.dtype == torch.uint8
    red = data.captions.index(["red square", "a red square"])
    centre = data.images[red, :, 8, 8].tolist()
    assert centre == [220, 30, 30]
    assert data.images[red, :, 0, 0].tolist() == [255, 255, 255]  # white background


def test_folder_with_jsonl_and_txt(tmp_path):
    Image.new("RGBA", (32, 32), (255, 0, 0, 0)).save(tmp_path / "a.png")  # transparent -> white
    Image.new("RGB", (20, 20), (0, 0, 255)).save(tmp_path / "b.png")
    (tmp_path / "a.txt").write_text("empty\n")
    (tmp_path / "b.txt").write_text("blue square")
    data = load_image_folder(tmp_path, size=16)
    assert data.images.shape == (2, 3, 16, 16)
    assert data.captions == [["empty"], ["blue square"]]
    assert data.images[0].min().item() == 255 and data.images[1, 2].min().item() == 255
    rows = [
        {"file": "b.png", "caption": "blue", "captions": ["blue", "a blue square"], "split": "train"},
        {"file": "a.png", "caption": "nothing", "split": "test"},
    ]
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    train = load_image_folder(tmp_path, size=16)
    assert train.captions == [["blue", "a blue square"]] and train.files == ["b.png"]
    assert load_image_folder(tmp_path, size=16, split="test").captions == [["nothing"]]
    assert len(load_image_folder(tmp_path, size=16, split=None)) == 2


def test_folder_errors_are_precise(tmp_path):
    with pytest.raises(SDStudioError, match="not found"):
        load_image_folder(tmp_path / "nope")
    with pytest.raises(SDStudioError, match="no images"):
        load_image_folder(tmp_path)
    (tmp_path / "captions.jsonl").write_text('{"file": "missing.png", "caption": "x"}\n')
    with pytest.raises(SDStudioError, match="missing"):
        load_image_folder(tmp_path)
    (tmp_path / "captions.jsonl").write_text("{not json\n")
    with pytest.raises(SDStudioError, match="captions.jsonl:1"):
        load_image_folder(tmp_path)


def test_batch_order_is_a_function_of_step():
    order = BatchOrder(10, 4, seed=3)
    assert order.per_epoch == 2
    epoch0 = torch.cat([order.indices(0), order.indices(1)])
    assert len(set(epoch0.tolist())) == 8  # no repeats within an epoch
    assert torch.equal(order.indices(5), BatchOrder(10, 4, seed=3).indices(5))
    assert not torch.equal(order.indices(0), order.indices(2))  # next epoch reshuffles
    assert torch.equal(
        torch.cat([order.indices(1, r, 2) for r in range(2)]).sort().values, order.indices(1).sort().values
    )


def test_batch_picks_caption_alternatives_with_the_generator():
    data = synthetic_shapes(4, size=8)
    x, caps = data.batch(torch.arange(4), torch.Generator().manual_seed(0))
    assert x.min() >= -1 and x.max() <= 1 and x.dtype == torch.float32
    assert all(c in data.captions[i] for i, c in enumerate(caps))
    _, again = data.batch(torch.arange(4), torch.Generator().manual_seed(0))
    assert caps == again


def _fake_node_modules(root):
    """Four emoji: a hand with one skin-tone variant, the Japanese flag, pizza, hamburger (64 px RGBA PNGs)."""
    src = root / "emoji-datasource-google"
    img = src / "img" / "google" / "64"
    img.mkdir(parents=True)
    (root / "emojilib" / "dist").mkdir(parents=True)
    entries = [
        {
            "name": "WAVING HAND SIGN",
            "unified": "1F44B",
            "image": "1f44b.png",
            "short_name": "wave",
            "short_names": ["wave"],
            "category": "People & Body",
            "subcategory": "hand-fingers-open",
            "sort_order": 1,
            "skin_variations": {"1F3FF": {"unified": "1F44B-1F3FF", "image": "1f44b-1f3ff.png"}},
        },
        {
            "name": "Japan Flag",
            "unified": "1F1EF-1F1F5",
            "image": "1f1ef-1f1f5.png",
            "short_name": "jp",
            "short_names": ["jp", "flag-jp"],
            "category": "Flags",
            "subcategory": "country-flag",
            "sort_order": 2,
        },
        {
            "name": "SLICE OF PIZZA",
            "unified": "1F355",
            "image": "1f355.png",
            "short_name": "pizza",
            "short_names": ["pizza"],
            "category": "Food & Drink",
            "subcategory": "food-prepared",
            "sort_order": 3,
        },
        {
            "name": "HAMBURGER",
            "unified": "1F354",
            "image": "1f354.png",
            "short_name": "hamburger",
            "short_names": ["hamburger"],
            "category": "Food & Drink",
            "subcategory": "food-prepared",
            "sort_order": 4,
        },
    ]
    (src / "emoji.json").write_text(json.dumps(entries))
    keywords = {"\U0001f355": ["pizza", "food", "party"], "\U0001f44b": ["waving_hand", "hands", "hello"]}
    (root / "emojilib" / "dist" / "emoji-en-US.json").write_text(json.dumps(keywords))
    for name, colour in (
        ("1f44b.png", (250, 200, 0, 255)),
        ("1f44b-1f3ff.png", (90, 60, 30, 255)),
        ("1f1ef-1f1f5.png", (255, 0, 0, 128)),
        ("1f355.png", (230, 150, 40, 255)),
        ("1f354.png", (150, 90, 40, 255)),
    ):
        Image.new("RGBA", (64, 64), colour).save(img / name)


def test_emoji_builder_captions_images_and_licences(tmp_path, monkeypatch):
    pytest.importorskip("emoji")
    _fake_node_modules(tmp_path / "nm")
    monkeypatch.setattr(emoji_data, "TEST_SIZE", 1)
    records = emoji_data.read_records(tmp_path / "nm")
    caps = {r.image: r.captions for r in records}
    assert caps["1f1ef-1f1f5.png"][0] == "flag of Japan"
    assert caps["1f44b.png"][0] == "waving hand"
    assert caps["1f44b-1f3ff.png"][0] == "waving hand, dark skin tone"
    assert "pizza, food prepared" in caps["1f355.png"] and any("party" in c for c in caps["1f355.png"])
    test = emoji_data.choose_test_split(records, size=1)
    assert test == {"1f354.png"}  # the only eligible one: no skin tones, not a grid prompt (pizza is)
    n = emoji_data.write_dataset(
        records, tmp_path / "nm" / "emoji-datasource-google" / "img" / "google" / "64", tmp_path / "out", test
    )
    assert n == 5
    rows = [json.loads(line) for line in (tmp_path / "out" / "captions.jsonl").read_text().splitlines()]
    assert [r["split"] for r in rows].count("test") == 1
    flag = Image.open(tmp_path / "out" / "images" / "1f1ef-1f1f5.png")
    assert flag.mode == "RGB" and flag.size == (64, 64)
    assert flag.getpixel((5, 5)) == (255, 127, 127)  # half-transparent red over white
    assert "Apache License 2.0" in (tmp_path / "out" / "LICENSES.txt").read_text()
