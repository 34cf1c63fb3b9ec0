"""Regenerate the CLIP tokenizer files shipped in ``src/sdstudio/families/sd/assets/tokenizer``.

Source: ``bpe_simple_vocab_16e6.txt.gz`` (OpenAI CLIP, MIT licence) from the PyPI package
``clip-anytorch`` (install it with ``pip install --no-deps clip-anytorch``).
Vocabulary construction follows OpenAI's ``simple_tokenizer.py``: 256 byte symbols, the same
with ``</w>``, the 48,894 joined merges, then ``<|startoftext|>`` and ``<|endoftext|>``.

Usage: python scripts/build_tokenizer_assets.py [BPE_GZ]
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src/sdstudio/families/sd/assets/tokenizer"
NUM_MERGES = 49152 - 256 - 2  # 48,894 merges, as in OpenAI's simple_tokenizer.py

LICENSE = """CLIP tokenizer vocabulary (vocab.json, merges.txt)
Derived from bpe_simple_vocab_16e6.txt.gz of OpenAI CLIP (https://github.com/openai/CLIP),
as redistributed in the PyPI package clip-anytorch.

MIT License

Copyright (c) 2021 OpenAI

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP reversible byte -> printable unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def default_bpe_path() -> Path:
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install clip-anytorch with --no-deps, or pass the BPE file path")
    return Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"


def main() -> None:
    bpe_path = Path(sys.argv[1]) if len(sys.argv) > 1 else default_bpe_path()
    with gzip.open(bpe_path) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (OUT / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    (OUT / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = dict(special, model_max_length=77, do_lower_case=True, tokenizer_class="CLIPTokenizer")
    (OUT / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (OUT / "LICENSE").write_text(LICENSE)
    print(f"wrote {len(vocab)} tokens, {len(merges)} merges to {OUT}")


if __name__ == "__main__":
    main()
