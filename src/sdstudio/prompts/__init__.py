"""Prompt parsing and encoding (A1111 semantics)."""

from sdstudio.prompts.encode import Conditioning, encode_prompts

__all__ = ["Conditioning", "encode_prompts"]
