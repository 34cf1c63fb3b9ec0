"""What one job costs, counted before it is queued (issue 33): a request within every per-field
limit can still ask for hours of work (2048x2048 x batch 8 x 100 batches x 150 steps; a grid of
thousands of cells), so the whole job's work is estimated and held to a budget.

Work is counted in *steps of a 512x512 image*: one UNet evaluation of a ``w x h`` image counts
``w * h / 512**2``, times the conditionings it runs (CFG's unconditional pass plus one per ``AND``
part). A job's work is the sum over its passes (first pass, hires pass at its target size) of
``images x steps x size x conditionings``, and over the cells, tiles or prompts of a script. Steps
are counted in full (img2img's denoising strength runs fewer): an upper bound, cheap to compute.
The budget is :meth:`Limits.job_steps_budget` (``sdstudio serve --max-job-steps``).
"""

from __future__ import annotations

import math
from typing import Any

from sdstudio.config import GenerationRequest, Limits
from sdstudio.errors import SDStudioError

UNIT = 512 * 512  # pixels of the unit image


def request_work(request: GenerationRequest) -> float:
    """Work of one request (all its batches, both hires passes), in steps of a 512x512 image."""
    from sdstudio.networks.tags import strip_network_tags
    from sdstudio.prompts.schedule import RE_AND

    conds = 2 + len(RE_AND.findall(strip_network_tags(request.prompt)))  # uncond + cond + AND parts
    work = request.steps * request.width * request.height
    if request.hires is not None:
        w, h = request.hires.target_size(request.width, request.height)
        work += (request.hires.second_pass_steps or request.steps) * w * h
    return request.n_images * conds * work / UNIT


def script_work(script: Any, request: GenerationRequest, limits: Limits | None = None) -> float:
    """Work of an A1111 script job: the sum over its X/Y/Z cells, prompt-matrix prompts or SD
    upscale tiles (each cell a request of its own)."""
    if script.name == "x/y/z plot":
        from sdstudio.pipelines.scripts.xyz_grid import plan_xyz

        plan = plan_xyz(request, script.options, limits=limits)
        return sum(request_work(cell.request) for cell in plan.cells)
    if script.name == "prompt matrix":
        from sdstudio.pipelines.scripts.prompt_matrix import MAX_PARTS

        source = request.prompt if script.options.prompt_type == "positive" else request.negative_prompt
        parts = min(len(source.split("|")), MAX_PARTS)
        return 2 ** (parts - 1) * request_work(request.replace(batch_size=1, n_iter=1))
    from sdstudio.pipelines.scripts.sd_upscale import upscaled_size

    size = getattr(request.init_images[0], "size", None) if request.init_images else None
    if size is None:
        return request_work(request)
    opts = script.options
    w, h = upscaled_size(size, opts.upscaler, opts.scale_factor)
    step_w, step_h = max(1, request.width - opts.overlap), max(1, request.height - opts.overlap)
    tiles = math.ceil(max(1, w - opts.overlap) / step_w) * math.ceil(max(1, h - opts.overlap) / step_h)
    return tiles * request_work(request.replace(batch_size=1))


def check_work(request: GenerationRequest, script: Any, limits: Limits) -> float:
    """The job's work; SDStudioError (422, field ``max_job_steps``) naming the estimate and the
    budget when it is over."""
    work = script_work(script, request, limits) if script is not None else request_work(request)
    budget = limits.job_steps_budget()
    if work > budget:
        what = f"a {script.name} of " if script is not None else ""
        raise SDStudioError(
            f"this job is {what}about {work:,.0f} steps of a 512x512 image (images x steps x size x "
            f"CFG and AND passes, hires pass included); the server allows {budget:,} per job "
            "(--max-job-steps): lower the batch count, batch size, steps or size, or split the job",
            field="max_job_steps",
        )
    return work
