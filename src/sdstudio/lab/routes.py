"""HTTP routes for the lab (``/api/lab``), mounted by ``sdstudio serve`` next to the studio API.

``demolish`` (forward process) needs no model and runs in a thread; ``build`` (reverse process)
needs the model, so it runs as a job in the studio's queue: the one worker that owns the model.
Prompt studies are queue jobs too (``POST /api/lab/study`` returns at once; progress at
``/api/jobs/{id}``); their images, JSON and HTML report live in ``<outdir>/.lab/studies/<id>/``
(a hidden folder, so the gallery's reconcile does not index study images).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from sdstudio.api.schemas import TextSafeModel
from sdstudio.config import MAX_SEED
from sdstudio.errors import SDStudioError

router = APIRouter(prefix="/api/lab", tags=["lab"])
BUILD_TIMEOUT_S = 600
MAX_DEMOLISH_TIMESTEPS = 32  # frames of one demolish strip


class DemolishRequest(TextSafeModel):
    """The forward process runs outside the queue, so its cost is capped here: at most
    :data:`MAX_DEMOLISH_TIMESTEPS` frames of at most 256x256 (a few MB)."""

    model_config = ConfigDict(extra="forbid")
    image: str = Field(description="base64 image (with or without a data: prefix)")
    timesteps: str = Field(
        "0,50,100,200,300,500,700,999",
        max_length=MAX_DEMOLISH_TIMESTEPS * 6,
        description=f"comma-separated t in [0, 1000), at most {MAX_DEMOLISH_TIMESTEPS}",
    )
    schedule: str = Field("scaled_linear", pattern="^(linear|cosine|scaled_linear)$")
    size: int = Field(64, ge=16, le=256, description="the image is resized to size x size first")
    seed: int = Field(0, ge=0, le=MAX_SEED)

    @field_validator("timesteps")
    @classmethod
    def _few_timesteps(cls, value: str) -> str:
        count = sum(1 for v in value.split(",") if v.strip())
        if count > MAX_DEMOLISH_TIMESTEPS:
            raise SDStudioError(
                f"timesteps: {count} given, at most {MAX_DEMOLISH_TIMESTEPS}", field="timesteps"
            )
        return value


class BuildRequest(TextSafeModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(max_length=2000)
    negative_prompt: str = Field("", max_length=2000)
    sampler_name: str = "Euler"
    scheduler: str = "Automatic"
    steps: int = Field(10, ge=1, le=50)
    cfg_scale: float = Field(7.0, ge=0, le=30)
    seed: int = Field(-1, ge=-1, le=MAX_SEED)
    model: str | None = Field(None, description="checkpoint title; default: the current model")


class LabPicture(BaseModel):
    image: str = Field(description="base64 PNG")
    labels: list[str]
    info: dict[str, Any] = Field(default_factory=dict)


class StudyRequest(TextSafeModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = Field(pattern="^(word-order|separators|punctuation|custom)$")
    a: str = Field("girl", max_length=100, description="first concept")
    b: str = Field("boy", max_length=100, description="second concept")
    variants: list[Annotated[str, Field(max_length=2000)]] | None = Field(
        None,
        max_length=8,
        description="custom: prompts (at most 2000 characters each), the first is the base",
    )
    concepts: bool = Field(False, description="custom: measure dominance of a vs b")
    seeds: int = Field(32, ge=2, le=256)
    first_seed: int = Field(1, ge=0, le=MAX_SEED)
    steps: int = Field(10, ge=1, le=50)
    sampler_name: str = "DPM++ 2M"
    cfg_scale: float = Field(7.0, ge=0, le=30)
    model: str | None = Field(None, description="checkpoint title; default: the current model")


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
            {
                "name": "study",
                "route": "/api/lab/study",
                "about": "prompt study: variants x shared seeds, paired-bootstrap CIs, HTML report (queue job)",
                "parameters": StudyRequest.model_json_schema()["properties"],
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
    size = model.native_size
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


# --- prompt studies ------------------------------------------------------------------------------
_STUDY_ID = re.compile(r"^[0-9a-f]{32}$")


class _Stopped(Exception):
    """Raised from the progress callback when the study's job is cancelled."""


def studies_dir(studio) -> Path:
    return Path(studio.outdir) / ".lab" / "studies"


@router.post("/study", status_code=202)
def lab_study(body: StudyRequest, request: Request) -> dict[str, Any]:
    """Queue a prompt study; poll ``job`` for progress, then read ``result`` and ``report``."""
    from sdstudio.lab.study import make_spec
    from sdstudio.sampling import get_sampler

    studio = request.app.state.studio
    if body.model:
        studio.manager.find(body.model)
    get_sampler(body.sampler_name)
    spec = make_spec(
        body.kind, body.a, body.b, body.variants, seeds=body.seeds, first_seed=body.first_seed,
        steps=body.steps, sampler=body.sampler_name, cfg_scale=body.cfg_scale,
        **({"with_concepts": body.concepts} if body.kind == "custom" else {}),
    )  # fmt: skip
    _check_study_work(studio, body, spec)
    holder: dict[str, str] = {}
    job = studio.queue.submit(
        lambda ctx: _run_study(studio, body, spec, holder["id"], ctx),
        client="lab", kind="lab-study", meta={"prompt": spec.variants[0], "study": body.kind},
    )  # fmt: skip
    holder["id"] = job.id
    return _study_links(job.id) | {"state": job.state}


def _check_study_work(studio, body: StudyRequest, spec) -> None:
    """A study is variants x seeds images at the model's native size: held to the same work budget
    as a generation (:mod:`sdstudio.runtime.admission`) before it is queued."""
    from sdstudio.config import GenerationRequest
    from sdstudio.runtime.admission import check_work

    size = studio.defaults_for(body.model).size or 512
    images = GenerationRequest(
        width=size, height=size, steps=spec.steps, n_iter=len(spec.variants) * spec.seeds
    )
    check_work(images, None, studio.settings.limits)


def _study_links(study_id: str) -> dict[str, str]:
    return {
        "id": study_id,
        "job": f"/api/jobs/{study_id}",
        "result": f"/api/lab/studies/{study_id}",
        "report": f"/api/lab/studies/{study_id}/report",
    }


def _run_study(studio, body: StudyRequest, spec, study_id: str, ctx) -> dict | None:
    from sdstudio.lab.judge import load_judge
    from sdstudio.lab.study import run_study
    from sdstudio.sampling.control import StepInfo

    model = studio.manager.acquire(body.model)
    spec.command = "POST /api/lab/study " + body.model_dump_json(exclude_none=True)

    def progress(done: int, total: int, what: str) -> None:
        if ctx.cancel.interrupted:
            raise _Stopped
        ctx.progress(StepInfo(done, total, 0, 1, done, total))

    try:
        data = run_study(model, spec, studies_dir(studio) / study_id, load_judge(), progress)
    except _Stopped:
        return None
    return {"study": data["study"], "timing": data["timing"], **_study_links(study_id)}


@router.get("/studies")
def lab_studies(request: Request) -> dict[str, Any]:
    """Finished studies on disk (newest first) and studies still queued or running."""
    studio = request.app.state.studio
    found = []
    root = studies_dir(studio)
    for path in sorted(root.glob("*/study.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        variants = [v["prompt"] for v in data.get("variants", [])]
        found.append({**_study_links(path.parent.name), "kind": data.get("study"), "state": "done",
                      "variants": variants, "seeds": len(data.get("seeds", []))})  # fmt: skip
    done = {s["id"] for s in found}
    for job in studio.queue.jobs():
        if job.kind == "lab-study" and job.id not in done:
            found.insert(0, {**_study_links(job.id), "kind": job.meta.get("study"), "state": job.state,
                             "progress": job.progress.fraction, "error": job.error})  # fmt: skip
    return {"studies": found}


def _study_path(request: Request, study_id: str, name: str) -> Path:
    if not _STUDY_ID.match(study_id):
        raise SDStudioError("unknown study id", field="id", status=404)
    path = studies_dir(request.app.state.studio) / study_id / name
    if not path.is_file():
        raise SDStudioError(
            "this study has no result (yet): see its job for its state", field="id", status=404
        )
    return path


@router.get("/studies/{study_id}")
def lab_study_result(study_id: str, request: Request) -> Response:
    """The study's JSON: every number, per-seed values, token ids, the reproducing command."""
    return Response(_study_path(request, study_id, "study.json").read_bytes(), media_type="application/json")


@router.get("/studies/{study_id}/report", response_class=HTMLResponse)
def lab_study_report(study_id: str, request: Request) -> HTMLResponse:
    """The self-contained HTML report (images and plots embedded; works offline)."""
    return HTMLResponse(_study_path(request, study_id, "report.html").read_text(encoding="utf-8"))


# --- ICTM segmentation ---------------------------------------------------------------------------
SEGMENT_WORK = 2**27  # size² x phases x max_iter: about 30 s on 2 cores at the worst


class SegmentRequest(TextSafeModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    image: str = Field(description="base64 image (with or without a data: prefix)")
    phases: int = Field(2, ge=2, le=8, description="number of regions K")
    tau: float = Field(4.0, gt=0, le=100, description="heat-kernel time in px² (blur std √(2τ) px)")
    lam: float = Field(1.0, alias="lambda", ge=0, le=100, description="weight of the interface length")
    max_iter: int = Field(300, ge=1, le=500)
    init: str = Field("kmeans", pattern="^(kmeans|quantile|box)$")
    size: int = Field(256, ge=16, le=512, description="downscaled so the longer side is at most size")


@router.post("/segment", response_model=LabPicture)
async def lab_segment(body: SegmentRequest, request: Request) -> LabPicture:
    """ICTM segmentation (Wang & Wang): boundaries on the image beside the regions; labels, means and
    the energy per iteration in ``info``."""
    if body.size**2 * body.phases * body.max_iter > SEGMENT_WORK:
        raise SDStudioError(
            f"size² x phases x max_iter must be at most {SEGMENT_WORK}: lower size, phases or max_iter",
            field="max_iter",
        )
    limits = request.app.state.studio.settings.limits
    return await run_in_threadpool(_segment, body, limits)


def _segment(body: SegmentRequest, limits) -> LabPicture:
    from PIL import Image

    from sdstudio.api.convert import decode_image, encode_png
    from sdstudio.lab import ictm
    from sdstudio.lab.diffusion_viz import labelled_strip

    image = decode_image(body.image, field_name="image", limits=limits)
    image = image.convert("L" if image.mode in ("L", "I", "F", "1") else "RGB")
    image.thumbnail((body.size, body.size), Image.Resampling.LANCZOS)
    result = ictm.segment(image, body.phases, body.tau, body.lam, body.max_iter, body.init)
    pictures = [Image.fromarray(ictm.overlay(image, result.labels)),
                Image.fromarray(ictm.regions_image(result.labels, result.means))]  # fmt: skip
    labels = ["boundaries", "regions"]
    info = {
        "iterations": result.iterations, "converged": result.converged, "seconds": round(result.seconds, 4),
        "energy": result.energy, "means": result.means.round(5).tolist(), "size": [image.height, image.width],
        "label_map": encode_png(Image.fromarray(result.labels.astype("uint8"))),  # pixel value = region
        "phases": body.phases, "tau": body.tau, "lambda": body.lam,
    }  # fmt: skip
    return LabPicture(image=encode_png(labelled_strip(pictures, labels)), labels=labels, info=info)
