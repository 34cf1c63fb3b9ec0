"""HTTP routes for the lab (``/api/lab``), mounted by ``sdstudio serve`` next to the studio API.

``demolish`` (forward process) needs no model and runs in a thread; ``build`` (reverse process)
needs the model, so it runs as a job in the studio's queue: the one worker that owns the model.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from sdstudio.errors import SDStudioError

router = APIRouter(prefix="/api/lab", tags=["lab"])
BUILD_TIMEOUT_S = 600


class DemolishRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str = Field(description="base64 image (with or without a data: prefix)")
    timesteps: str = Field("0,50,100,200,300,500,700,999", description="comma-separated t in [0, 1000)")
    schedule: str = Field("scaled_linear", pattern="^(linear|cosine|scaled_linear)$")
    size: int = Field(64, ge=16, le=256, description="the image is resized to size x size first")
    seed: int = Field(0, ge=0)


class BuildRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(max_length=2000)
    negative_prompt: str = Field("", max_length=2000)
    sampler_name: str = "Euler"
    scheduler: str = "Automatic"
    steps: int = Field(10, ge=1, le=50)
    cfg_scale: float = Field(7.0, ge=0, le=30)
    seed: int = Field(-1, ge=-1)
    model: str | None = Field(None, description="checkpoint title; default: the current model")


class LabPicture(BaseModel):
    image: str = Field(description="base64 PNG")
    labels: list[str]
    info: dict[str, Any] = Field(default_factory=dict)


@router.get("")
def lab_index() -> dict[str, Any]:
    """The experiments this server offers and their parameters."""
    return {
        "experiments": [
            {
                "name": "demolish",
                "route": "/api/lab/demolish",
                "about": "forward process q(x_t|x_0): the image at increasing noise levels",
                "parameters": DemolishRequest.model_json_schema()["properties"],
            },
            {
                "name": "build",
                "route": "/api/lab/build",
                "about": "reverse process: x_t and the predicted x_0 at every sampler step",
                "parameters": BuildRequest.model_json_schema()["properties"],
            },
        ]
    }


@router.post("/demolish", response_model=LabPicture)
async def lab_demolish(body: DemolishRequest, request: Request) -> LabPicture:
    """Noise an uploaded image to each timestep t (one noise draw for all t) and return the strip."""
    limits = request.app.state.studio.settings.limits
    return await run_in_threadpool(_demolish, body, limits)


def _demolish(body: DemolishRequest, limits) -> LabPicture:
    from sdstudio.api.convert import decode_image, encode_png
    from sdstudio.lab import diffusion_viz as viz
    from sdstudio.training.diffusion import scheduler_config

    image = decode_image(body.image, field_name="image", limits=limits)
    config = scheduler_config(body.schedule)
    ts = viz.parse_timesteps(body.timesteps, config.get("num_train_timesteps", 1000))
    frames = viz.demolish(viz.image_to_tensor(image, body.size), ts, config, body.seed)
    labels = [f"t={t}" for t in ts]
    strip = viz.labelled_strip(viz.tensor_to_pil(frames), labels, scale=2)
    return LabPicture(image=encode_png(strip), labels=labels, info={"schedule": body.schedule})


@router.post("/build", response_model=LabPicture)
async def lab_build(body: BuildRequest, request: Request) -> LabPicture:
    """Run one image's reverse process on the queue's worker and return x_t / x0 rows."""
    studio = request.app.state.studio
    if body.model:
        studio.manager.find(body.model)
    job = studio.queue.submit(
        lambda ctx: _build(studio, body), client="lab", kind="lab", meta={"prompt": body.prompt}
    )
    finished = await run_in_threadpool(job.wait, BUILD_TIMEOUT_S)
    if not finished:
        studio.queue.cancel(job.id)
        raise SDStudioError("the lab build did not finish in time", status=503)
    if job.error:
        raise SDStudioError(job.error, field=job.error_field, status=job.error_status)
    return job.result


def _build(studio, body: BuildRequest) -> LabPicture:
    from sdstudio.api.convert import encode_png
    from sdstudio.config import GenerationRequest
    from sdstudio.lab import diffusion_viz as viz

    model = studio.manager.acquire(body.model)
    size = int(model.unet.config.sample_size) * model.vae_scale_factor
    request = GenerationRequest(
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        sampler_name=body.sampler_name,
        scheduler=body.scheduler,
        steps=body.steps,
        cfg_scale=body.cfg_scale,
        seed=body.seed,
        width=size,
        height=size,
    ).with_resolved_seeds()
    traj = viz.build(model, request)
    labels = [f"s={s:.2g}" for s in traj.sigmas]
    picture = viz.trajectory_picture(traj, scale=2 if size <= 128 else 1)
    info = {"seed": request.seed, "model": studio.manager.loaded_title(), "sampler_name": body.sampler_name}
    return LabPicture(image=encode_png(picture), labels=labels, info=info)
