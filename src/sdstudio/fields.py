"""The knobs of a GenerationRequest on every wire: A1111 API field, CLI flag, infotext key.

One :class:`Knob` per plain field, so a new knob is one field in ``config.GenerationRequest`` and
one entry here: the API converter (``api/convert.py``), the CLI (``cli/common.py``) and the
infotext writer and reader (``infotext.py``) all iterate this table. Fields whose wire shapes
differ from their domain shape (size ``WxH``, seed resize, sampler aliases, schedule labels,
hires fix, image inputs) keep their own code beside the table users.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def _number(value: Any) -> Any:
    """A1111 writes whole floats without ``.0`` (``CFG scale: 7``)."""
    value = float(value)
    return int(value) if value.is_integer() else value


def _flag(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("true", "1", "yes")


@dataclass(frozen=True)
class Knob:
    """One plain GenerationRequest field and its names on each wire.

    ``a1111``: the A1111 API field ("" = none); ``cli``: the flag ("" = none); ``infotext``: the
    key ("" = not written); ``parse`` turns CLI/infotext text into the value; ``shown`` tells
    whether the infotext writes the value (A1111 omits defaults such as ``Clip skip: 1``).
    """

    name: str
    a1111: str = ""
    cli: str = ""
    infotext: str = ""
    parse: Callable[[Any], Any] = str
    help: str = ""
    shown: Callable[[Any], bool] = lambda value: value is not None
    written: Callable[[Any], Any] = lambda value: value  # value as the infotext writes it


KNOBS: tuple[Knob, ...] = (
    Knob("negative_prompt", "negative_prompt", "--negative-prompt", help="what the image should not contain"),
    Knob("steps", "steps", "--steps", "Steps", int, "sampling steps (default: the model's, else 20)"),
    Knob(
        "cfg_scale", "cfg_scale", "--cfg-scale", "CFG scale", float,
        "Classifier Free Guidance Scale: how strongly the image should follow the prompt (default 7)",
        written=_number,
    ),
    Knob("seed", "seed", "--seed", "Seed", int, "-1 (default) = random; image i uses seed+i"),
    Knob("subseed", "subseed", "--subseed", "", int, "variation seed (-1 = random)"),
    Knob(
        "subseed_strength", "subseed_strength", "--subseed-strength", "Variation seed strength", float,
        "variation strength in [0, 1]", shown=lambda v: v > 0, written=_number,
    ),
    Knob("batch_size", "batch_size", "--batch-size", "", int, "how many images are in a batch (memory-hungry)"),
    Knob("n_iter", "n_iter", "--batch-count", "", int, "how many batches of images to generate"),
    Knob(
        "clip_skip", "clip_skip", "--clip-skip", "Clip skip", int,
        "use the text encoder's output N-1 layers before the last", shown=lambda v: v > 1,
    ),
    Knob(
        "eta", "eta", "--eta", "Eta", float, "noise multiplier for ancestral/DDIM samplers",
        written=_number,
    ),
    Knob(
        "initial_noise_multiplier", "initial_noise_multiplier", "--noise-multiplier", "Noise multiplier", float,
        "img2img: scale of the noise added to the init image (A1111 'Noise multiplier for img2img')",
        shown=lambda v: v != 1.0, written=_number,
    ),
    Knob(
        "tiling", "tiling", "--tiling", "Tiling", _flag,
        "seamless tiling: the image wraps around at its edges", shown=bool,
    ),
    Knob(
        "s_min_uncond", "s_min_uncond", "--s-min-uncond", "NGMS", float,
        "A1111 negative guidance minimum sigma: below it the uncond pass is skipped on alternate steps (0 = off)",
        shown=lambda v: v > 0, written=_number,
    ),
    Knob(
        "fast", "fast", "--fast", "Fast", _flag,
        "opt-in fast mode: DeepCache (full UNet every 3rd step), tiny VAE decode, int8 UNet on OpenVINO, token downsampling (ToDo) from 512x512 (quality cost in BENCHMARKS.md)",
        shown=bool,
    ),
    Knob(
        "token_merging_ratio", "token_merging_ratio", "--token-merging-ratio", "Token merging ratio", float,
        "ToMe: the share of top-level self-attention tokens merged, in [0, 0.9] (0 = off; A1111's option)",
        shown=lambda v: v > 0, written=_number,
    ),
)  # fmt: skip

BY_NAME = {k.name: k for k in KNOBS}


def infotext_params(request: Any) -> dict[str, Any]:
    """``{infotext key: value}`` of every knob the infotext shows for ``request``."""
    out = {}
    for knob in KNOBS:
        value = getattr(request, knob.name)
        if knob.infotext and knob.shown(value):
            out[knob.infotext] = knob.written(value)
    return out


def from_infotext(fields: dict[str, Any]) -> dict[str, Any]:
    """GenerationRequest changes for the knobs found in a parsed infotext."""
    return {k.name: k.parse(fields[k.infotext]) for k in KNOBS if k.infotext and k.infotext in fields}


def from_a1111(req: Any) -> dict[str, Any]:
    """GenerationRequest values of the knobs an A1111 request carries (None = the field was null)."""
    out = {}
    for knob in KNOBS:
        value = getattr(req, knob.a1111, None) if knob.a1111 else None
        if value is not None:
            out[knob.name] = knob.parse(value) if knob.parse is not str else value
    return out
