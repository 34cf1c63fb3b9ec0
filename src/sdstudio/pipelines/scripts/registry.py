"""A1111 ``script_name`` -> script: argument parsing up front (a bad request fails before it is
queued), then one call that runs it over a runner. Names match case-insensitively, as A1111's API
does (``script_name_to_index`` compares lower-cased titles).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sdstudio.config import GenerationRequest, Limits
from sdstudio.errors import SDStudioError
from sdstudio.pipelines.scripts import prompt_matrix, sd_upscale, xyz_grid
from sdstudio.pipelines.scripts.grid import Runner, ScriptResult

SCRIPTS: dict[str, tuple[str, ...]] = {  # lower-case title -> tabs where A1111 shows it
    "x/y/z plot": ("txt2img", "img2img"),
    "prompt matrix": ("txt2img", "img2img"),
    "sd upscale": ("img2img",),
}


def script_names(kind: str) -> list[str]:
    """Titles of the scripts offered in ``kind`` (txt2img | img2img), lower-case as A1111's API lists them."""
    return [name for name, kinds in SCRIPTS.items() if kind in kinds]


@dataclass
class ScriptCall:
    """A parsed ``script_name`` + ``script_args``, ready to run."""

    name: str
    kind: str
    options: Any

    def run(
        self,
        base: GenerationRequest,
        runner: Runner,
        *,
        init_images: list | None = None,
        model: str | None = None,
    ) -> ScriptResult:
        """Run the script: the runner is called once per (batched) cell or tile batch.

        Image-to-image inputs travel in ``base.init_images``; ``init_images`` overrides them.
        """
        if self.name == "x/y/z plot":
            return xyz_grid.run_xyz(base, self.options, runner, model=model, init_images=init_images)
        if self.name == "prompt matrix":
            return prompt_matrix.run_prompt_matrix(base, self.options, runner, init_images=init_images)
        init = list(init_images or base.init_images)
        if not init:
            raise SDStudioError("SD upscale needs an init image", field="init_images")
        return sd_upscale.run_sd_upscale(base, init[0], self.options, runner)


def parse_script(
    name: str,
    script_args: list | None,
    kind: str,
    base: GenerationRequest | None = None,
    limits: Limits | None = None,
    *,
    upscalers: Sequence[Any] = (),
) -> ScriptCall:
    """Validate ``script_name``/``script_args``; unknown names list the known ones (422).

    With ``base`` the X/Y/Z plan is built once as a dry run, so every axis value (unknown sampler,
    Prompt S/R word missing from the prompt, ...) fails here rather than inside a queued job; with
    ``limits`` too, every axis value is held to them (Steps, Hires steps, Size, CFG, ...).
    ``upscalers``: installed model upscaler files the SD upscale script may use (after A1111's
    built-ins, by index or name).
    """
    key = (name or "").strip().lower()
    if key not in SCRIPTS or kind not in SCRIPTS[key]:
        raise SDStudioError(
            f"script_name: unknown script {name!r} for {kind}; known scripts: {', '.join(script_names(kind))}",
            field="script_name",
        )
    args = list(script_args or [])
    if key == "x/y/z plot":
        options: Any = xyz_grid.options_from_args(args, kind)
        if base is not None:
            xyz_grid.plan_xyz(base, options, limits=limits)
    elif key == "prompt matrix":
        options = prompt_matrix.options_from_args(args)
    else:
        options = sd_upscale.options_from_args(args, upscalers)
        if base is not None and limits is not None:
            sd_upscale.check_cost(base, options, limits.max_image_pixels)
    return ScriptCall(key, kind, options)


def run_api_script(
    name: str,
    script_args: list | None,
    base: GenerationRequest,
    runner: Runner,
    *,
    kind: str = "txt2img",
    init_images: list | None = None,
    model: str | None = None,
) -> ScriptResult:
    """Parse and run in one go (for callers that need no early validation)."""
    return parse_script(name, script_args, kind).run(base, runner, init_images=init_images, model=model)
