"""Small helpers shared by the route modules: the studio, client ids, waiting, job views."""

from __future__ import annotations

import asyncio
import base64
import io
import re
from typing import Any

from fastapi import Request

from sdstudio.api.schemas import JobImage, JobInfo
from sdstudio.api.service import Studio
from sdstudio.errors import SDStudioError
from sdstudio.runtime.queue import Job

_CLIENT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def studio(request: Request) -> Studio:
    return request.app.state.studio


def client_id(request: Request) -> str:
    """Who submits (for fair ordering): ``X-Client-Id`` if sane, else auth user + address."""
    given = request.headers.get("x-client-id", "")
    if _CLIENT_ID.match(given):
        return given
    user = ""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("basic "):
        try:
            user = base64.b64decode(auth[6:]).decode().split(":", 1)[0]
        except (ValueError, UnicodeDecodeError):
            user = ""
    host = request.client.host if request.client else "local"
    return f"{user}@{host}" if user else host


async def wait_finished(job: Job, timeout: float) -> None:
    """Wait (without blocking the event loop) until the job is final; 504 on timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not job.finished:
        if loop.time() > deadline:
            raise SDStudioError(f"job {job.id} did not finish within {timeout:.0f} s", status=504)
        await asyncio.sleep(0.05)


def raise_if_failed(job: Job) -> None:
    if job.state == "failed":
        raise SDStudioError(job.error or "generation failed", field=job.error_field, status=job.error_status)


def png_bytes(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def job_info(s: Studio, job: Job) -> JobInfo:
    """The public view of a job (no images inline; URLs point at saved files)."""
    p = job.progress
    images = []
    result = job.result
    for img in getattr(result, "images", []) or []:
        url = f"/api/images/{img.rel_path}" if img.rel_path else None
        images.append(
            JobImage(
                index=img.index, seed=img.seed, url=url, history_id=img.history_id, infotext=img.infotext
            )
        )
    return JobInfo(
        id=job.id,
        kind=job.kind,
        client=job.client,
        state=job.state,
        position=s.queue.position(job) if job.state == "queued" else None,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        step=p.step,
        steps=p.steps,
        job_step=p.job_step,
        job_steps=p.job_steps,
        batch_index=p.batch_index,
        batch_count=p.batch_count,
        progress=1.0 if job.state == "done" else p.fraction,
        eta_seconds=job.eta_seconds(),
        preview_url=f"/api/jobs/{job.id}/preview?step={p.preview_step}" if p.preview is not None else None,
        preview_step=p.preview_step,
        error=job.error,
        error_field=job.error_field,
        warnings=list(job.meta.get("warnings", [])),
        model=job.meta.get("model"),
        images=images,
        prompt=job.meta.get("prompt", ""),
    )
