"""X/Y/Z plot axes: A1111 v1.10 ``scripts/xyz_grid.py`` axis table and value parsing.

The table keeps A1111's labels and order, so ``script_args`` that pick an axis by index (the
dropdown's ``type="index"``; txt2img and img2img see different filtered lists) select the same
axis here. Axes sdstudio cannot apply raise a clear :class:`SDStudioError` when chosen.

Value syntax (A1111 ``process_axis``): comma-separated (CSV quoting allowed); for numeric axes
``1-5`` (inclusive range), ``1-5 (+2)`` (range with step), ``10-1 (-3)``, ``1-10 [5]`` (that many
evenly spaced values, int-truncated for integer axes); ``[1,3,7]`` is read as the list 1, 3, 7.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sdstudio.config import GenerationRequest, HiresSettings, Limits
from sdstudio.errors import SDStudioError

RE_RANGE = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\(([+-]\d+)\s*\))?\s*")
RE_RANGE_FLOAT = re.compile(
    r"\s*([+-]?\s*\d+(?:.\d*)?)\s*-\s*([+-]?\s*\d+(?:.\d*)?)(?:\s*\(([+-]\d+(?:.\d*)?)\s*\))?\s*"
)
RE_RANGE_COUNT = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\[(\d+)\s*])?\s*")
RE_RANGE_COUNT_FLOAT = re.compile(
    r"\s*([+-]?\s*\d+(?:.\d*)?)\s*-\s*([+-]?\s*\d+(?:.\d*)?)(?:\s*\[(\d+(?:.\d*)?)\s*])?\s*"
)
MAX_VALUES = 256  # per axis: a typo like 1-100000 must not queue a day of work
MAX_DIGITS = 20  # a number in an axis value: enough for any seed, and int() of 4,300 digits never runs


@dataclass
class Cell:
    """What one grid cell generates: a request and (optionally) another checkpoint."""

    request: GenerationRequest
    model: str | None = None

    def replace(self, **changes: Any) -> Cell:
        return Cell(self.request.replace(**changes), self.model)


Apply = Callable[[Cell, Any, list], Cell]


@dataclass(frozen=True)
class Axis:
    """One A1111 axis option: label, value type, how it changes a cell, how it is labelled."""

    label: str
    type: str  # "int" | "float" | "str" | "perm" (permutations of the listed values)
    apply: Apply | None  # None = not supported by sdstudio
    scope: str = "both"  # "both" | "txt2img" | "img2img"
    fmt: str = "label"  # "label" ("Steps: 20") | "value" | "join" | "nothing" | "basename"
    choices: bool = False  # A1111 shows a dropdown (values come from x_values_dropdown)
    cost: float = 0.0
    why: str = ""

    def format(self, value: Any) -> str:
        """The axis label of ``value`` as A1111's ``format_value*`` functions write it."""
        if isinstance(value, float):
            value = round(value, 8)
        if self.fmt == "nothing":
            return ""
        if self.fmt == "join":
            return ", ".join(value)
        if self.fmt == "basename":
            return str(value).replace("\\", "/").rsplit("/", 1)[-1]
        return str(value) if self.fmt == "value" else f"{self.label}: {value}"


def _field(name: str) -> Apply:
    return lambda cell, x, xs: cell.replace(**{name: x})


def _hires(name: str) -> Apply:
    def apply(cell: Cell, x: Any, xs: list) -> Cell:
        hires = cell.request.hires
        if hires is None:
            raise SDStudioError(f"this axis needs the hires fix enabled (enable_hr) to change {name}")
        return cell.replace(hires=dataclasses.replace(hires, **{name: x}))

    return apply


def _prompt_sr(cell: Cell, x: str, xs: list) -> Cell:
    """A1111 ``apply_prompt``: replace the first value by ``x`` in prompt and negative prompt."""
    r = cell.request
    if xs[0] not in r.prompt and xs[0] not in r.negative_prompt:
        raise SDStudioError(
            f"Prompt S/R did not find {xs[0]!r} in prompt or negative prompt", field="script_args"
        )
    return cell.replace(
        prompt=r.prompt.replace(xs[0], x), negative_prompt=r.negative_prompt.replace(xs[0], x)
    )


def _prompt_order(cell: Cell, x: tuple, xs: list) -> Cell:
    """A1111 ``apply_order``: put the listed tokens into the prompt in the order of ``x``."""
    prompt = cell.request.prompt
    found = sorted((prompt.find(tok), tok) for tok in x)
    parts = []
    for _, tok in found:
        n = prompt.find(tok)
        if n < 0:
            raise SDStudioError(f"Prompt order: {tok!r} is not in the prompt", field="script_args")
        parts.append(prompt[:n])
        prompt = prompt[n + len(tok) :]
    return cell.replace(prompt="".join(p + x[i] for i, p in enumerate(parts)) + prompt)


def _sampler(cell: Cell, x: str, xs: list) -> Cell:
    from sdstudio.sampling import get_sampler

    return cell.replace(sampler_name=get_sampler(x).name)


def _hires_sampler(cell: Cell, x: str, xs: list) -> Cell:
    from sdstudio.sampling import get_sampler

    return _hires("sampler")(cell, get_sampler(x).name, xs)


def _schedule(cell: Cell, x: str, xs: list) -> Cell:
    from sdstudio.sampling.registry import _canonical_schedule

    return cell.replace(scheduler=_canonical_schedule(x))


def _checkpoint(cell: Cell, x: str, xs: list) -> Cell:
    return Cell(cell.request, str(x))


def _denoising(cell: Cell, x: float, xs: list) -> Cell:
    """Img2img strength; in txt2img A1111's ``denoising_strength`` is the hires pass's."""
    if cell.request.denoising_strength is None and cell.request.hires is not None:
        return _hires("denoising_strength")(cell, x, xs)
    return cell.replace(denoising_strength=x)


def _size(cell: Cell, x: str, xs: list) -> Cell:
    """A1111 ``apply_size``: ``WxH``."""
    w, _, h = str(x).partition("x")
    try:
        return cell.replace(width=int(w.strip()), height=int(h.strip()))
    except ValueError:
        raise SDStudioError(f"Size values must look like 512x768, got {x!r}", field="script_args") from None


def _rng(cell: Cell, x: str, xs: list) -> Cell:
    if str(x).upper() != "CPU":
        raise SDStudioError("RNG source: sdstudio always draws noise on the CPU", field="script_args")
    return cell


def _unsupported(label: str, type_: str = "float", scope: str = "both", why: str = "", **kw) -> Axis:
    return Axis(label, type_, None, scope, why=why or "not implemented in sdstudio", **kw)


# A1111 v1.10 axis_options, in its order (Txt2Img/Img2Img-only entries marked by scope).
AXES: tuple[Axis, ...] = (
    Axis("Nothing", "str", lambda c, x, xs: c, fmt="nothing"),
    Axis("Seed", "int", _field("seed")),
    Axis("Var. seed", "int", _field("subseed")),
    Axis("Var. strength", "float", _field("subseed_strength")),
    Axis("Steps", "int", _field("steps")),
    Axis("Hires steps", "int", _hires("second_pass_steps"), scope="txt2img"),
    Axis("CFG Scale", "float", _field("cfg_scale")),
    _unsupported("Image CFG Scale", scope="img2img", why="no instruct-pix2pix models"),
    Axis("Prompt S/R", "str", _prompt_sr, fmt="value"),
    Axis("Prompt order", "perm", _prompt_order, fmt="join"),
    Axis("Sampler", "str", _sampler, scope="txt2img", fmt="value", choices=True),
    Axis("Hires sampler", "str", _hires_sampler, scope="txt2img", choices=True),
    Axis("Sampler", "str", _sampler, scope="img2img", fmt="value", choices=True),
    Axis("Checkpoint name", "str", _checkpoint, fmt="basename", choices=True, cost=1.0),
    _unsupported("Negative Guidance minimum sigma"),
    _unsupported("Sigma Churn"),
    _unsupported("Sigma min"),
    _unsupported("Sigma max"),
    Axis("Sigma noise", "float", _field("s_noise")),
    Axis("Schedule type", "str", _schedule, choices=True),
    _unsupported("Schedule min sigma"),
    _unsupported("Schedule max sigma"),
    _unsupported("Schedule rho"),
    _unsupported("Skip Early CFG"),
    _unsupported("Beta schedule alpha"),
    _unsupported("Beta schedule beta"),
    Axis("Eta", "float", _field("eta")),
    Axis("Clip skip", "int", _field("clip_skip")),
    Axis("Denoising", "float", _denoising),
    _unsupported("Initial noise multiplier"),
    _unsupported("Extra noise"),
    Axis("Hires upscaler", "str", _hires("upscaler"), scope="txt2img", choices=True),
    _unsupported("Cond. Image Mask Weight", scope="img2img"),
    _unsupported("VAE", "str", choices=True, why="separate VAE files are not supported"),
    _unsupported("Styles", "str", choices=True, why="sdstudio has no prompt-styles database"),
    _unsupported("UniPC Order", "int"),
    _unsupported("Face restore", "str", why="face restoration is not supported"),
    _unsupported("Token merging ratio"),
    _unsupported("Token merging ratio high-res"),
    _unsupported("Always discard next-to-last sigma", "str", choices=True),
    _unsupported("SGM noise multiplier", "str", choices=True),
    _unsupported("Refiner checkpoint", "str", choices=True, why="a refiner checkpoint is not supported"),
    _unsupported("Refiner switch at"),
    Axis("RNG source", "str", _rng, choices=True),
    _unsupported("FP8 mode", "str", choices=True),
    Axis("Size", "str", _size),
)


def axis_options(kind: str = "txt2img") -> list[Axis]:
    """The axes A1111 offers in the ``kind`` tab, in dropdown (index) order."""
    return [a for a in AXES if a.scope in ("both", kind)]


def find_axis(key: int | str, kind: str = "txt2img") -> Axis:
    """Axis by dropdown index (A1111 ``script_args``) or by label (case-insensitive)."""
    options = axis_options(kind)
    if isinstance(key, bool):
        raise SDStudioError(f"axis type must be an index or a label, got {key!r}", field="script_args")
    if isinstance(key, int) or (isinstance(key, str) and key.strip().isdigit()):
        i = int(key)
        if not 0 <= i < len(options):
            raise SDStudioError(f"axis index {i} is out of range 0..{len(options) - 1}", field="script_args")
        return options[i]
    wanted = str(key).strip().lower().replace("hires. ", "hires ")
    for axis in options:
        if axis.label.lower() == wanted:
            return axis
    names = ", ".join(a.label for a in options if a.apply is not None)
    raise SDStudioError(f"unknown X/Y/Z axis {key!r}; supported: {names}", field="script_args")


def csv_values(text: str) -> list[str]:
    """A1111 ``csv_string_to_list_strip``: CSV fields, stripped."""
    rows = csv.reader(io.StringIO(text or ""))
    return [v.strip() for v in itertools.chain.from_iterable(rows)]


def _bracket_list(text: str) -> str:
    """``[1,3,7]`` (a whole-axis list, as the issue and many guides write it) -> ``1,3,7``."""
    t = (text or "").strip()
    return t[1:-1] if t.startswith("[") and t.endswith("]") and "[" not in t[1:-1] else t


def _number(text: str, kind: type, val: str) -> Any:
    """``int`` or ``float`` of one number of a range; over :data:`MAX_DIGITS` digits or not finite: 422."""
    text = text.replace(" ", "")
    if sum(ch.isdigit() for ch in text) > MAX_DIGITS:
        raise SDStudioError(
            f"range {val[:60]!r}: numbers have at most {MAX_DIGITS} digits", field="script_args"
        )
    try:
        number = kind(text)
    except ValueError:
        raise SDStudioError(
            f"range {val[:60]!r}: {text[:30]!r} is not a number", field="script_args"
        ) from None
    if not math.isfinite(number):
        raise SDStudioError(f"range {val[:60]!r}: {text[:30]!r} is not a finite number", field="script_args")
    return number


def _too_many(val: str, count: float) -> SDStudioError:
    return SDStudioError(
        f"range {val[:60]!r} gives {count:.0f} values (at most {MAX_VALUES} per axis)", field="script_args"
    )


def _expand_int(val: str) -> list[Any]:
    """One value of an integer axis: ``a-b``, ``a-b (+step)``, ``a-b [count]``; counted before it is
    expanded, so ``1-30000000`` is refused without building the list."""
    m, mc = RE_RANGE.fullmatch(val), RE_RANGE_COUNT.fullmatch(val)
    if m is not None:
        start, end = _number(m.group(1), int, val), _number(m.group(2), int, val) + 1
        step = _number(m.group(3), int, val) if m.group(3) is not None else 1
        values = range(start, end, step) if step else range(0)
        if len(values) > MAX_VALUES:
            raise _too_many(val, len(values))
        return list(values)
    if mc is not None:
        start, end = _number(mc.group(1), int, val), _number(mc.group(2), int, val)
        num = _number(mc.group(3), int, val) if mc.group(3) is not None else 1
        if num > MAX_VALUES:
            raise _too_many(val, num)
        return [int(x) for x in np.linspace(start, end, num).tolist()]
    return [val]


def _expand_float(val: str) -> list[Any]:
    """One value of a float axis, as :func:`_expand_int` (``np.arange`` / ``np.linspace``), counted first."""
    m, mc = RE_RANGE_FLOAT.fullmatch(val), RE_RANGE_COUNT_FLOAT.fullmatch(val)
    if m is not None:
        start, end = _number(m.group(1), float, val), _number(m.group(2), float, val)
        step = _number(m.group(3), float, val) if m.group(3) is not None else 1.0
        count = (end - start) / step if step else math.inf
        if not math.isfinite(count) or count > MAX_VALUES:
            raise _too_many(val, count)
        return np.arange(start, end + step, step).tolist()
    if mc is not None:
        start, end = _number(mc.group(1), float, val), _number(mc.group(2), float, val)
        num = int(_number(mc.group(3), float, val)) if mc.group(3) is not None else 1
        if num > MAX_VALUES:
            raise _too_many(val, num)
        return np.linspace(start, end, num).tolist()
    return [val]


def _cast(axis: Axis, value: Any) -> Any:
    if axis.type not in ("int", "float"):
        return value if axis.type == "perm" else str(value)
    if isinstance(value, str) and sum(ch.isdigit() for ch in value) > MAX_DIGITS:
        raise SDStudioError(
            f"{axis.label}: {value[:30]!r}... has more than {MAX_DIGITS} digits", field="script_args"
        )
    try:
        number = int(value) if axis.type == "int" else float(value)
    except (TypeError, ValueError):
        raise SDStudioError(
            f"{axis.label}: {value!r} is not a valid {axis.type}", field="script_args"
        ) from None
    if not math.isfinite(number):
        raise SDStudioError(f"{axis.label}: {value!r} is not a finite number", field="script_args")
    return number


def parse_values(
    axis: Axis, text: str = "", dropdown: list | None = None, csv_mode: bool = True
) -> list[Any]:
    """The values of one axis, as A1111's ``process_axis`` computes them."""
    if axis.label == "Nothing":
        return [0]
    if axis.choices and not csv_mode and dropdown:
        values: list[Any] = [str(v) for v in dropdown]
    else:
        values = csv_values(_bracket_list(text))
    if len(values) > MAX_VALUES:
        raise SDStudioError(f"{axis.label}: {len(values)} values (at most {MAX_VALUES})", field="script_args")
    if axis.type in ("int", "float"):
        expand = _expand_int if axis.type == "int" else _expand_float
        expanded: list[Any] = []
        for v in values:
            expanded += expand(v)
            if len(expanded) > MAX_VALUES:
                raise SDStudioError(f"{axis.label}: more than {MAX_VALUES} values", field="script_args")
        values = expanded
    elif axis.type == "perm":
        if len(values) > 6:
            raise SDStudioError("Prompt order takes at most 6 values (720 permutations)", field="script_args")
        values = list(itertools.permutations(values))
    if not values or values == [""]:
        raise SDStudioError(f"{axis.label}: no values given", field="script_args")
    if len(values) > MAX_VALUES:
        raise SDStudioError(f"{axis.label}: {len(values)} values (at most {MAX_VALUES})", field="script_args")
    return [_cast(axis, v) for v in values]


def check_supported(axis: Axis) -> None:
    if axis.apply is None:
        raise SDStudioError(f"X/Y/Z axis {axis.label!r} is not supported: {axis.why}", field="script_args")


def confirm(axis: Axis, values: list, base: Cell, limits: Limits | None = None) -> None:
    """Fail before any work if a value cannot apply (A1111 ``confirm_*``): try it on the base cell,
    and with ``limits`` check the cell as a request is checked (Steps 100000, Size 4096x4096 and
    CFG 1e30 are refused at submit time, naming the axis)."""
    check_supported(axis)
    for v in values:
        cell = axis.apply(base, v, values)
        if limits is not None:
            try:
                cell.request.validate(limits)
            except SDStudioError as exc:
                raise SDStudioError(f"{axis.label} {v!r}: {exc}", field="script_args") from None


def grid_megapixels(counts: tuple[int, int, int], width: int, height: int) -> float:
    return math.prod(counts) * width * height / 1e6


__all__ = ["AXES", "Axis", "Cell", "HiresSettings", "axis_options", "find_axis", "parse_values"]
