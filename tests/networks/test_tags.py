"""Prompt tags as A1111's extra-networks parser reads them."""

from __future__ import annotations

import doctest

import pytest

from sdstudio.errors import SDStudioError
from sdstudio.networks import tags
from sdstudio.networks.tags import NetworkTag, parse_network_tags


def test_doctests():
    assert doctest.testmod(tags).failed == 0


@pytest.mark.parametrize(
    "prompt, clean, expected",
    [
        ("<lora:a>", "", [NetworkTag("lora", "a", 1.0, 1.0)]),
        ("x <lora:a:0.5:1.5> y", "x  y", [NetworkTag("lora", "a", 0.5, 1.5)]),
        ("<lora:sub/a b:unet=0.3>", "", [NetworkTag("lora", "sub/a b", 1.0, 0.3)]),
        ("<lora:a:1:1:8>", "", [NetworkTag("lora", "a", 1.0, 1.0, 8)]),
        ("(cat:1.2) <hypernet:h:0.4>", "(cat:1.2) ", [NetworkTag("hypernet", "h", 0.4, 0.4)]),
        ("<not a tag> <lora:>", "<not a tag> <lora:>", []),
    ],
)
def test_forms(prompt, clean, expected):
    assert parse_network_tags(prompt) == (clean, expected)


def test_bad_weight_is_a_clear_error():
    with pytest.raises(SDStudioError, match="weights must be numbers"):
        parse_network_tags("<lora:a:heavy>")
