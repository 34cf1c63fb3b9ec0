"""A1111 extra-network prompt tags: ``<lora:name:w>``, ``<lora:name:te:unet>``, ``<hypernet:name:w>``.

A1111 ``modules/extra_networks.py``: every ``<kind:arg1:arg2...>`` (``re <(\\w+):([^>]+)>``) is cut out
of the prompt before the prompt parser sees it; the arguments split on ``:``, those of the form
``key=value`` are named, the rest positional. The Lora extension reads ``positional[0]`` = name,
``positional[1]`` (or ``te=``) = text-encoder weight (default 1), ``positional[2]`` (or ``unet=``) =
UNet weight (default: the text-encoder weight), ``positional[3]`` (or ``dyn=``) = rank cut-off.
``lyco`` is an alias of ``lora``. Only the positive prompt is parsed (the negative prompt goes to
the encoder unchanged, as in A1111).

>>> parse_network_tags("a cat <lora:fluffy:0.8>, in a hat")
('a cat , in a hat', [NetworkTag(kind='lora', name='fluffy', te_weight=0.8, unet_weight=0.8, dyn=None)])
>>> parse_network_tags("<lora:a:1:0.5> x <lyco:b:te=0.2:unet=1.5>")[1][1]
NetworkTag(kind='lora', name='b', te_weight=0.2, unet_weight=1.5, dyn=None)
>>> parse_network_tags("plain (words:1.2) [a:b:5]")
('plain (words:1.2) [a:b:5]', [])

Weights must be finite and within +-:data:`MAX_WEIGHT` (``<lora:x:nan>``, ``inf`` and ``1e30`` are a
422 at parse time, not a job that runs and ends in NaN pixels); ``dyn`` is a rank in
[1, :data:`MAX_DYN`]. :func:`fold_network_tags` merges tags that name the same file.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from sdstudio.errors import SDStudioError

RE_EXTRA_NET = re.compile(r"<(\w+):([^>]+)>")
ALIASES = {"lyco": "lora"}
MAX_WEIGHT = 10.0  # |te| and |unet| of one tag (A1111's UI goes to 2; past 10 a LoRA gives noise)
MAX_DYN = 100_000


@dataclass(frozen=True)
class NetworkTag:
    """One ``<kind:name:...>`` tag of a prompt."""

    kind: str  # "lora" | "hypernet" | any other word (refused later with a clear message)
    name: str
    te_weight: float = 1.0
    unet_weight: float = 1.0
    dyn: int | None = None  # A1111 "dyn": use only the first ``dyn`` ranks


def parse_network_tags(prompt: str) -> tuple[str, list[NetworkTag]]:
    """Return ``(prompt without tags, tags in order)``; bad weights raise SDStudioError naming the tag."""
    tags: list[NetworkTag] = []

    def cut(m: re.Match) -> str:
        tags.append(_tag(m.group(1), m.group(2), m.group(0)))
        return ""

    return RE_EXTRA_NET.sub(cut, prompt or ""), tags


def strip_network_tags(prompt: str) -> str:
    """The prompt as the text encoder sees it (tags removed, not checked)."""
    return RE_EXTRA_NET.sub("", prompt or "")


def _tag(kind: str, args: str, text: str) -> NetworkTag:
    kind = ALIASES.get(kind, kind)
    items = args.split(":")
    positional = [x for x in items if "=" not in x]
    named = dict(x.split("=", 1) for x in items if "=" in x)
    if not positional or not positional[0].strip():
        raise SDStudioError(f"extra network tag {text} has no name", field="prompt")
    try:
        te = float(positional[1]) if len(positional) > 1 else 1.0
        te = float(named.get("te", te))
        unet = float(positional[2]) if len(positional) > 2 else te
        unet = float(named.get("unet", unet))
        dyn = int(positional[3]) if len(positional) > 3 else None
        dyn = int(named["dyn"]) if "dyn" in named else dyn
    except ValueError as exc:
        raise SDStudioError(
            f"extra network tag {text}: weights must be numbers (<{kind}:name:weight>)", field="prompt"
        ) from exc
    for weight in (te, unet):
        if not abs(weight) <= MAX_WEIGHT:  # also NaN
            raise SDStudioError(
                f"extra network tag {text}: weight {weight} is out of range; weights must be finite "
                f"numbers within +-{MAX_WEIGHT:g}",
                field="prompt",
            )
    if dyn is not None and not 1 <= dyn <= MAX_DYN:
        raise SDStudioError(f"extra network tag {text}: dyn must be in [1, {MAX_DYN}]", field="prompt")
    return NetworkTag(kind, positional[0].strip(), te, unet, dyn)


def fold_network_tags(tags: list[NetworkTag]) -> list[NetworkTag]:
    """Tags naming the same network (and ``dyn``) as one tag with the weights summed, in first-seen order.

    A1111 applies every tag, so ``<lora:x:0.5> <lora:x:0.5>`` is ``x`` at 1.0: a LoRA's delta is linear
    in its weight, so the folded tag gives the same weights while holding one delta instead of one
    per tag.

    >>> fold_network_tags(parse_network_tags("<lora:a:0.5> <lora:b> <lora:a:0.25:1>")[1])
    [NetworkTag(kind='lora', name='a', te_weight=0.75, unet_weight=1.5, dyn=None), NetworkTag(kind='lora', name='b', te_weight=1.0, unet_weight=1.0, dyn=None)]
    """
    folded: dict[tuple, NetworkTag] = {}
    for tag in tags:
        key = (tag.kind, tag.name, tag.dyn)
        seen = folded.get(key)
        if seen is not None:
            te, unet = seen.te_weight + tag.te_weight, seen.unet_weight + tag.unet_weight
            tag = dataclasses.replace(seen, te_weight=te, unet_weight=unet)
        folded[key] = tag
    return list(folded.values())
