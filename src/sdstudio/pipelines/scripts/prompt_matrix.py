"""Prompt matrix (A1111 ``scripts/prompt_matrix.py``): ``a|b|c`` -> every combination of the parts.

Part 0 is always present; combination ``n`` adds part ``k`` (k >= 1) when bit ``k-1`` of ``n`` is
set. The grid has ``2 ** ((parts-1) // 2)`` rows; the first half of the optional parts label the
columns, the rest the rows, struck through where a part is absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdstudio.config import GenerationRequest
from sdstudio.errors import SDStudioError
from sdstudio.pipelines.scripts.grid import Runner, ScriptImage, ScriptResult, draw_prompt_matrix, image_grid

TITLE = "Prompt matrix"
MAX_PARTS = 9  # 256 images


@dataclass
class MatrixOptions:
    """A1111 ``script_args``: [put_at_start, different_seeds, prompt_type, variations_delimiter, margin_size]."""

    put_at_start: bool = False
    different_seeds: bool = False
    prompt_type: str = "positive"  # which prompt holds the ``|`` parts
    variations_delimiter: str = "comma"  # joining char: "comma" (", ") or "space" (" ")
    margin_size: int = 0


def matrix_prompts(prompt: str, put_at_start: bool = False, delimiter: str = "comma") -> list[str]:
    """Every combination of ``prompt.split("|")``, in A1111's order.

    >>> matrix_prompts("a cat|hat|scarf")
    ['a cat', 'a cat, hat', 'a cat, scarf', 'a cat, hat, scarf']
    """
    parts = prompt.split("|")
    if len(parts) > MAX_PARTS:
        raise SDStudioError(
            f"prompt matrix takes at most {MAX_PARTS} parts, got {len(parts)}", field="prompt"
        )
    joiner = ", " if delimiter == "comma" else " "
    out = []
    for n in range(2 ** (len(parts) - 1)):
        chosen = [t.strip().strip(",") for k, t in enumerate(parts[1:]) if n & (1 << k)]
        chosen = chosen + [parts[0]] if put_at_start else [parts[0]] + chosen
        out.append(joiner.join(chosen))
    return out


def run_prompt_matrix(
    base: GenerationRequest, options: MatrixOptions, runner: Runner, *, init_images: list | None = None
) -> ScriptResult:
    """Generate one image per combination (same seed unless ``different_seeds``): grid, then cells."""
    _check(options)
    base = base.with_resolved_seeds()
    source = base.prompt if options.prompt_type == "positive" else base.negative_prompt
    if "|" not in source:
        raise SDStudioError(
            f"prompt matrix: the {options.prompt_type} prompt has no '|' parts", field="prompt"
        )
    prompts = matrix_prompts(source, options.put_at_start, options.variations_delimiter)
    kwargs: dict[str, Any] = {} if init_images is None else {"init_images": init_images}
    cells: list[ScriptImage] = []
    for i, text in enumerate(prompts):
        field = "prompt" if options.prompt_type == "positive" else "negative_prompt"
        seed = base.seed + (i if options.different_seeds else 0)
        request = base.replace(**{field: text}, seed=seed, batch_size=1, n_iter=1)
        for g in runner(request, **kwargs)[:1]:
            cells.append(
                ScriptImage(g.image, g.infotext, g.seed, g.subseed, prompt=request.prompt, request=request)
            )
    if len(cells) != len(prompts):  # interrupted: no grid, the images made so far
        return ScriptResult(images=cells, cells=cells, runner_calls=len(prompts))
    parts = source.split("|")
    w, h = cells[0].image.size
    grid = image_grid([c.image for c in cells], rows=1 << ((len(parts) - 1) // 2))
    grid = draw_prompt_matrix(grid, w, h, parts, options.margin_size)
    head = ScriptImage(grid, cells[0].infotext, cells[0].seed, is_grid=True, prompt=base.prompt)
    return ScriptResult(images=[head, *cells], cells=cells, runner_calls=len(prompts))


def _check(options: MatrixOptions) -> None:
    if options.prompt_type not in ("positive", "negative"):
        raise SDStudioError(
            f"unknown prompt type {options.prompt_type!r}; use positive or negative", field="script_args"
        )
    if options.variations_delimiter not in ("comma", "space"):
        raise SDStudioError(
            f"unknown joining char {options.variations_delimiter!r}; use comma or space", field="script_args"
        )


def options_from_args(script_args: list) -> MatrixOptions:
    """:class:`MatrixOptions` from A1111 ``script_args`` (missing trailing args take UI defaults)."""
    defaults = [False, False, "positive", "comma", 0]
    if not isinstance(script_args, list) or len(script_args) > len(defaults):
        raise SDStudioError(
            "script_args for Prompt matrix must be a list of at most 5 values", field="script_args"
        )
    a = list(script_args) + defaults[len(script_args) :]
    try:
        margin = int(a[4])
    except (TypeError, ValueError, OverflowError):
        raise SDStudioError("script_args: margin_size must be an integer", field="script_args") from None
    options = MatrixOptions(bool(a[0]), bool(a[1]), str(a[2]), str(a[3]), max(0, min(margin, 500)))
    _check(options)
    return options
