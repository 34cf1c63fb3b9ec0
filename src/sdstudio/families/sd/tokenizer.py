"""The CLIP tokenizer shipped with the package (no hub access). See families/sd/assets/tokenizer/LICENSE."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

TOKENIZER_DIR = Path(__file__).parent / "assets" / "tokenizer"


@lru_cache(maxsize=4)
def _load(pad_token: str) -> object:
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), pad_token=pad_token, local_files_only=True)


def clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """Return a ``transformers.CLIPTokenizer`` built from the shipped BPE files.

    OpenAI CLIP (SD 1.x) pads with ``<|endoftext|>``; OpenCLIP (SD 2.x, SDXL's second encoder)
    pads with ``!`` (id 0). Tokenizers are immutable in use, so instances are shared.
    """
    return _load(pad_token)
