"""Build the default training set: Noto emoji (64x64 on white) with captions, as an image folder.

Sources (installed with ``npm install --prefix DIR`` when the set is built, never at import):
``emoji-datasource-google`` 16.0.0 (emoji.json metadata, MIT, by Cal Henderson; images are Google's
Noto Emoji v2.048, Apache-2.0) and ``emojilib`` (keywords, MIT, by Mu-An Chiou). CLDR names come
from the pip package ``emoji`` (BSD). The output follows :mod:`sdstudio.training.data`'s layout:
``OUT/images/*.png`` plus ``OUT/captions.jsonl`` with ``{"file", "caption", "captions", "split"}``.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sdstudio.errors import SDStudioError

DATASOURCE = "emoji-datasource-google@16.0.0"
EMOJILIB = "emojilib@4.0.2"
IMAGE_SIZE = 64
TEST_SIZE = 200
SPLIT_SEED = 0
# prompts shown in the model card grid: always kept in the training split
GRID_PROMPTS = (
    "cat face",
    "red heart",
    "pizza",
    "rocket",
    "princess",
    "trumpet",
    "smiling face with sunglasses",
    "flag of Japan",
)
SKIN_TONES = {
    "1F3FB": "light skin tone",
    "1F3FC": "medium-light skin tone",
    "1F3FD": "medium skin tone",
    "1F3FE": "medium-dark skin tone",
    "1F3FF": "dark skin tone",
}

ATTRIBUTION = """Emoji training set built by `sdstudio data emoji`.

Images: Noto Emoji v2.048 by Google, https://github.com/googlefonts/noto-emoji,
licensed under the Apache License 2.0 (https://www.apache.org/licenses/LICENSE-2.0),
as packaged in the npm package emoji-datasource-google 16.0.0 (https://github.com/iamcal/emoji-data).
The images were composited onto a white background (RGB, 64x64); no other change.

Metadata (names, categories, sub-categories): emoji-datasource-google / emoji-data,
Copyright (c) 2013 Cal Henderson, MIT License.

Keywords: emojilib, Copyright (c) 2014 Mu-An Chiou, MIT License (https://github.com/muan/emojilib).

CLDR short names: the Python package `emoji` (BSD License), from Unicode CLDR data
(Unicode License v3, https://www.unicode.org/license.txt).
"""


@dataclass(frozen=True)
class EmojiRecord:
    """One emoji image and its captions (the first caption is the canonical one)."""

    image: str  # file name in img/google/64
    char: str
    captions: tuple[str, ...]
    base: str  # unified code of the base emoji (skin-tone variants share it)


def install_sources(prefix: Path) -> Path:
    """Run ``npm install --prefix`` for the two packages and return ``prefix/node_modules``."""
    npm = shutil.which("npm")
    if npm is None:
        raise SDStudioError("npm is needed to build the emoji set (install Node.js)", field="npm")
    cmd = [npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix), DATASOURCE, EMOJILIB]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        raise SDStudioError(f"npm install failed: {result.stderr.strip()[-500:]}", field="npm")
    return prefix / "node_modules"


def _char(unified: str) -> str:
    """Return the emoji string for a dash-separated code point list like ``1F1EF-1F1F5``."""
    return "".join(chr(int(h, 16)) for h in unified.split("-"))


def cldr_name(char: str) -> str | None:
    """Return the CLDR English name from the ``emoji`` package ("flag of X" for flags), or None."""
    import emoji

    data = emoji.EMOJI_DATA.get(char) or emoji.EMOJI_DATA.get(char.replace("\ufe0f", ""))
    if data is None:
        return None
    return data["en"].strip(":").replace("_", " ")


def _clean(text: str) -> str:
    return " ".join(text.replace("_", " ").replace("-", " ").split())


def captions_for(entry: dict, keywords: dict[str, list[str]], tone: str | None) -> tuple[str, ...]:
    """Return the caption alternatives for one emoji.json entry (optionally a skin-tone variant).

    The first is the canonical caption: the CLDR name (``flag of Japan`` for country flags) or the
    lower-cased Unicode name; the others add the emoji.json name, short names, sub-category and
    emojilib keywords, so the text encoder sees varied phrasings of the same subject.
    """
    unified = entry["skin_variations"][tone]["unified"] if tone else entry["unified"]
    char = _char(unified)
    base_char = _char(entry["unified"])
    name = (cldr_name(base_char) if tone else cldr_name(char)) or entry["name"] or entry["short_name"]
    if entry["category"] == "Flags" and entry["subcategory"] in ("country-flag", "subdivision-flag"):
        name = "flag of " + (cldr_name(base_char) or entry["name"].replace(" Flag", ""))
    main = name.lower() if not name.startswith("flag of ") else name
    main = " ".join(main.split())
    tones = dict.fromkeys(SKIN_TONES[t] for t in tone.split("-")) if tone else {}
    tone_text = "".join(f", {t}" for t in tones)
    canonical = main + tone_text
    words = [w for w in keywords.get(base_char, keywords.get(base_char.replace("\ufe0f", ""), []))]
    words = [_clean(w) for w in words if _clean(w) and _clean(w) != _clean(main)]
    sub = _clean(entry["subcategory"])
    alts = [canonical]
    if entry["name"]:
        alts.append(entry["name"].lower() + tone_text)
    alts += [_clean(s) + tone_text for s in entry["short_names"]]
    alts.append(f"{canonical}, {sub}")
    if words:
        alts.append(f"{canonical}, " + ", ".join(words[:6]))
        alts.append(", ".join([main] + words[:3]) + tone_text)
    seen: dict[str, None] = {}
    for a in alts:
        seen.setdefault(" ".join(a.split()), None)
    return tuple(seen)


def read_records(node_modules: Path) -> list[EmojiRecord]:
    """Return one record per 64 px Google image listed in emoji.json (base and skin-tone variants)."""
    source = node_modules / "emoji-datasource-google"
    entries = json.loads((source / "emoji.json").read_text(encoding="utf-8"))
    keywords = json.loads((node_modules / "emojilib" / "dist" / "emoji-en-US.json").read_text("utf-8"))
    img_dir = source / "img" / "google" / "64"
    records = []
    for entry in sorted(entries, key=lambda e: e["sort_order"]):
        variants = [(None, entry)] + [(t, v) for t, v in (entry.get("skin_variations") or {}).items()]
        for tone, v in variants:
            if not (img_dir / v["image"]).is_file():
                continue
            caps = captions_for(entry, keywords, tone)
            records.append(EmojiRecord(v["image"], _char(v["unified"]), caps, entry["unified"]))
    return records


def choose_test_split(records: list[EmojiRecord], size: int = TEST_SIZE, seed: int = SPLIT_SEED) -> set[str]:
    """Return the image names of a fixed held-out split: ``size`` base emoji without skin tones.

    Only emoji with no skin-tone variants are eligible (so no near-duplicate stays in training),
    captions must be unique, and the model-card grid prompts stay in training.
    """
    by_base: dict[str, list[EmojiRecord]] = {}
    for r in records:
        by_base.setdefault(r.base, []).append(r)
    counts: dict[str, int] = {}
    for r in records:
        counts[r.captions[0]] = counts.get(r.captions[0], 0) + 1
    eligible = [
        group[0].image
        for group in by_base.values()
        if len(group) == 1 and counts[group[0].captions[0]] == 1 and group[0].captions[0] not in GRID_PROMPTS
    ]
    eligible.sort()
    return set(random.Random(seed).sample(eligible, size))


def composite_on_white(path: Path, size: int = IMAGE_SIZE):
    """Return the RGBA PNG at ``path`` alpha-composited onto white as an RGB ``size`` x ``size`` image."""
    from PIL import Image

    with Image.open(path) as im:
        rgba = im.convert("RGBA")
    if rgba.size != (size, size):
        rgba = rgba.resize((size, size), Image.Resampling.LANCZOS)
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def write_dataset(records: list[EmojiRecord], img_dir: Path, out: Path, test: set[str]) -> int:
    """Write ``out/images``, ``out/captions.jsonl`` and ``out/LICENSES.txt``; return the image count."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for r in records:
        composite_on_white(img_dir / r.image).save(out / "images" / r.image, optimize=True)
        row = {
            "file": f"images/{r.image}",
            "caption": r.captions[0],
            "captions": list(r.captions),
            "split": "test" if r.image in test else "train",
            "emoji": r.char,
        }
        lines.append(json.dumps(row, ensure_ascii=False))
    (out / "captions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "LICENSES.txt").write_text(ATTRIBUTION, encoding="utf-8")
    return len(records)


def build_emoji_dataset(out: Path, node_modules: Path | None = None) -> int:
    """Build the emoji training set into ``out``; return the number of images written.

    ``node_modules`` may point at an existing install (for tests/offline); otherwise the npm
    packages are installed into a temporary folder that is removed afterwards.
    """
    out = Path(out)
    if node_modules is not None:
        records = read_records(Path(node_modules))
        img_dir = Path(node_modules) / "emoji-datasource-google" / "img" / "google" / "64"
        return write_dataset(records, img_dir, out, choose_test_split(records))
    with tempfile.TemporaryDirectory(prefix="sdstudio-emoji-") as tmp:
        modules = install_sources(Path(tmp))
        return build_emoji_dataset(out, modules)
