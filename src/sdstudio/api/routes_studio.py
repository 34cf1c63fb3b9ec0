"""sdstudio's own routes under ``/api``: jobs (queue, progress stream, cancel/skip), models,
samplers, history (gallery) and image files. The browser UI uses only these and /sdapi/v1.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, StreamingResponse

from sdstudio import __version__
from sdstudio.api import schemas as s
from sdstudio.api.convert import hires_upscalers
from sdstudio.api.deps import client_id, client_owner, job_info, png_bytes, studio
from sdstudio.api.routes_a1111 import convert_for_studio, read_png_info
from sdstudio.errors import SDStudioError
from sdstudio.runtime.history import IMAGE_SUFFIXES, ImageRecord
from sdstudio.runtime.queue import Job

ImageId = Annotated[int, PathParam(ge=0, le=s.SQLITE_MAX_INT)]  # SQLite integers are 64-bit

router = APIRouter(prefix="/api", tags=["sdstudio"])


def _job(request: Request, job_id: str) -> Job:
    job = studio(request).queue.get(job_id)
    if job is None:
        raise SDStudioError(f"no job with id {job_id!r}", field="job_id", status=404)
    return job


async def _submit(request: Request, req: s._A1111Base, kind: str) -> s.JobInfo:
    st = studio(request)
    converted = await run_in_threadpool(convert_for_studio, st, req, kind)
    # storing the job (PNG-encoding its inputs, SQLite) runs off the event loop
    job = await run_in_threadpool(
        st.submit, converted, client=client_id(request), owner=client_owner(request)
    )
    return job_info(st, job)


@router.post("/jobs/txt2img", response_model=s.JobInfo, status_code=202)
async def submit_txt2img(req: s.Txt2ImgRequest, request: Request) -> s.JobInfo:
    """Queue a text-to-image job (A1111 txt2img fields); returns at once with the job id."""
    return await _submit(request, req, "txt2img")


@router.post("/jobs/img2img", response_model=s.JobInfo, status_code=202)
async def submit_img2img(req: s.Img2ImgRequest, request: Request) -> s.JobInfo:
    """Queue an image-to-image / inpaint / outpaint job (A1111 img2img fields + outpaint_*)."""
    return await _submit(request, req, "img2img")


@router.get("/jobs", response_model=s.JobList)
async def list_jobs(request: Request, limit: int = Query(50, ge=1, le=500)) -> s.JobList:
    """Recent and queued jobs, newest first."""
    st = studio(request)
    jobs = st.queue.jobs()[:limit]
    running = st.queue.running
    order = {j.id: i for i, j in enumerate(st.queue.pending())}  # one run order for every row
    return s.JobList(
        jobs=[job_info(st, j, order) for j in jobs],
        running=running.id if running else None,
        queued=len(order),
    )


@router.get("/jobs/{job_id}", response_model=s.JobInfo)
async def get_job(job_id: str, request: Request) -> s.JobInfo:
    return job_info(studio(request), _job(request, job_id))


@router.post("/jobs/{job_id}/cancel", response_model=s.JobInfo)
async def cancel_job(job_id: str, request: Request) -> s.JobInfo:
    """Cancel a queued job, or interrupt a running one (finished images are kept)."""
    st = studio(request)
    _job(request, job_id)
    return job_info(st, st.queue.cancel(job_id))


@router.post("/jobs/{job_id}/skip", response_model=s.JobInfo)
async def skip_job(job_id: str, request: Request) -> s.JobInfo:
    """Skip the running batch of a job."""
    st = studio(request)
    _job(request, job_id)
    return job_info(st, st.queue.skip(job_id))


@router.get("/jobs/{job_id}/preview", responses={200: {"content": {"image/png": {}}}})
async def job_preview(job_id: str, request: Request) -> Response:
    """The live preview of a running job (decoded cheaply from the latents), PNG."""
    preview = _job(request, job_id).progress.preview
    if preview is None:
        raise SDStudioError("no preview yet", field="job_id", status=404)
    data = await run_in_threadpool(png_bytes, preview)
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})


@router.get("/jobs/{job_id}/events")
async def job_events(job_id: str, request: Request) -> StreamingResponse:
    """Server-Sent Events: one ``data:`` JSON JobInfo per change, until the job is final."""
    st = studio(request)
    job = _job(request, job_id)

    async def stream():
        version = -1
        idle = 0.0
        while True:
            if job.version != version:
                version = job.version
                info = job_info(st, job)
                yield f"event: job\ndata: {info.model_dump_json()}\n\n"
                idle = 0.0
                if job.finished:
                    return
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.1)
            idle += 0.1
            if idle >= 15:
                yield ": keep-alive\n\n"
                idle = 0.0

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


@router.get("/models", response_model=s.ModelsResponse)
async def models(request: Request) -> s.ModelsResponse:
    """Checkpoints (and in-memory models), LoRA, VAE and embedding files in the models folder (read in
    a worker thread: folder walks and LoRA headers never block the event loop)."""
    return await run_in_threadpool(_models, studio(request))


def _models(st) -> s.ModelsResponse:
    m = st.manager
    current = m.current_entry()
    return s.ModelsResponse(
        models=[
            s.ModelInfo(
                title=e.title,
                model_name=e.model_name,
                hash=e.hash,
                filename=e.filename,
                in_memory=e.in_memory is not None,
                embedded=e.embedded,
                selected=current is not None and e.key == current.key,
                loaded=m.loaded_name == e.key,
                native_size=m.native_size(e),
            )
            for e in m.entries()
        ],
        loras=[s.LoraItem(name=f.name, alias=f.alias, path=f.path) for f in m.networks.files("lora")],
        vaes=[s.SDVaeItem(model_name=f.name, filename=f.path) for f in m.networks.files("vae")],
        embeddings=[Path(f.name).name for f in m.networks.files("embeddings")],
        sd_vae=str(st.options.get("sd_vae", "Automatic")),
        models_dir=str(m.models_dir) if m.models_dir else None,
        last_error=m.last_error,
    )


@router.post("/models/refresh", response_model=s.ModelsResponse)
async def refresh_models(request: Request) -> s.ModelsResponse:
    await run_in_threadpool(studio(request).manager.refresh)
    return await models(request)


@router.post("/models/select", response_model=s.ModelsResponse)
async def select_model(body: s.SelectModelRequest, request: Request) -> s.ModelsResponse:
    """Choose the model for the next jobs; it is loaded by the worker between jobs."""
    studio(request).manager.select(body.name)
    return await models(request)


@router.get("/models/defaults")
async def model_defaults(request: Request, name: str | None = None) -> dict:
    """What omitted knobs get on a model (``name``, else the selected one), known before loading:
    ``size`` (native), ``steps``, ``sampler`` and ``cfg_scale`` from its card; null = not declared.
    The web UI shows these so a prompt and seed give the same image there as in the API and CLI."""
    from dataclasses import asdict

    return asdict(await run_in_threadpool(studio(request).defaults_for, name))


@router.get("/samplers", response_model=s.StudioSamplers)
async def samplers() -> dict:
    """Sampler names with aliases and default schedule, and the schedule types."""
    from sdstudio.sampling import SCHEDULE_TYPES, list_samplers

    return {
        "samplers": [
            {
                "name": x.name,
                "aliases": list(x.aliases),
                "default_schedule": x.default_schedule,
                "schedules": list(x.schedules),
            }
            for x in list_samplers()
        ],
        "schedulers": list(SCHEDULE_TYPES),
    }


@router.get("/info", response_model=s.ServerInfo)
async def info(request: Request) -> s.ServerInfo:
    """Version, limits and feature flags the UI needs."""
    from dataclasses import asdict

    from sdstudio.sampling import SCHEDULE_TYPES, list_samplers

    st = studio(request)
    files = await run_in_threadpool(st.manager.upscalers)  # model upscalers: models/ESRGAN, ...
    return s.ServerInfo(
        version=__version__,
        auth=bool(st.settings.api_auth),
        limits=asdict(st.settings.limits),
        upscalers=[*hires_upscalers(), *(f.name for f in files)],
        samplers=[x.name for x in list_samplers()],
        schedulers=list(SCHEDULE_TYPES),
        img2img_available=True,
        lab_available=any(path.startswith("/api/lab") for path in request.app.openapi()["paths"]),
    )


def _history_item(record: ImageRecord) -> s.HistoryItem:
    d = record.to_dict()
    return s.HistoryItem(**d, url=f"/api/images/{record.path}")


@router.get("/history", response_model=s.HistoryPage)
async def history(
    request: Request,
    q: str = Query("", description="text in the prompt or negative prompt"),
    model: str = Query("", description="model name or hash"),
    sampler: str = "",
    date_from: str = Query("", pattern=r"^(\d{4}-\d{2}-\d{2})?$"),
    date_to: str = Query("", pattern=r"^(\d{4}-\d{2}-\d{2})?$"),
    job_id: str = "",
    offset: int = Query(0, ge=0, le=s.SQLITE_MAX_INT),
    limit: int = Query(48, ge=1, le=500),
) -> s.HistoryPage:
    """Gallery page: saved images filtered by prompt text, model, sampler and date, newest first."""
    st = studio(request)
    limit = min(limit, st.settings.history_page_max)

    def page() -> s.HistoryPage:  # SQLite work runs in a worker thread, off the event loop
        rows, total = st.history.query(
            text=q,
            model=model,
            sampler=sampler,
            date_from=date_from,
            date_to=date_to,
            job_id=job_id,
            offset=offset,
            limit=limit,
        )
        items = [_history_item(r) for r in rows]
        return s.HistoryPage(items=items, total=total, offset=offset, limit=limit, facets=st.history.facets())

    return await run_in_threadpool(page)


@router.get("/history/{image_id}", response_model=s.HistoryItem)
async def history_item(image_id: ImageId, request: Request) -> s.HistoryItem:
    record = studio(request).history.get(image_id)
    if record is None:
        raise SDStudioError(f"no image with id {image_id}", field="image_id", status=404)
    return _history_item(record)


@router.delete("/history/{image_id}", response_model=s.DeletedImage)
async def delete_history_item(image_id: ImageId, request: Request) -> dict:
    """Delete an image: its file and its row together."""
    record = await run_in_threadpool(studio(request).history.delete, image_id)
    if record is None:
        raise SDStudioError(f"no image with id {image_id}", field="image_id", status=404)
    return {"deleted": image_id, "path": record.path}


@router.get("/images/{path:path}", responses={200: {"content": {"image/png": {}}}})
async def image_file(path: str, request: Request) -> FileResponse:
    """An image file under the outputs folder (no ``..``, no absolute paths, no symlink escape)."""
    target = studio(request).history.resolve(path)
    if target is None or not target.is_file() or target.suffix.lower() not in IMAGE_SUFFIXES:
        raise SDStudioError("no such image under the outputs folder", field="path", status=404)
    return FileResponse(target, headers={"Cache-Control": "private, max-age=3600"})


@router.post("/png-info", response_model=s.PNGInfoResponse)
async def png_info(req: s.PNGInfoRequest, request: Request) -> s.PNGInfoResponse:
    """Same as /sdapi/v1/png-info."""
    return await run_in_threadpool(read_png_info, req.image, studio(request).settings.limits)


@router.get("/reconcile", response_model=s.ReconcileResponse)
async def reconcile_report(request: Request) -> dict:
    """What start-up reconciliation of the gallery changed."""
    r = studio(request).reconcile_report
    return json.loads(json.dumps(r.__dict__))
