"""Small helpers shared by the route modules: the studio, client ids, waiting, job views."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import threading
from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from sdstudio.api.schemas import JobImage, JobInfo
from sdstudio.api.service import Studio
from sdstudio.api.text import safe_text
from sdstudio.errors import SDStudioError
from sdstudio.runtime.queue import Job

_CLIENT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def studio(request: Request) -> Studio:
    return request.app.state.studio


def client_id(request: Request) -> str:
    """Who submits (for fair ordering): ``X-Client-Id`` if sane, else :func:`client_owner`."""
    given = request.headers.get("x-client-id", "")
    return given if _CLIENT_ID.match(given) else client_owner(request)


def client_owner(request: Request) -> str:
    """Whom the per-client queue cap counts: auth user + address, never a header the client chooses
    (rotating ``X-Client-Id`` values must not multiply a client's share of the queue)."""
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


class PreviewCache:
    """The latest live preview as base64 PNG, encoded once per (job, preview step) in a worker
    thread: polling ``/sdapi/v1/progress`` never encodes a PNG on the event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[str, int] | None = None
        self._value: str | None = None

    async def get(self, job: Job) -> str | None:
        from sdstudio.api.convert import encode_png

        image, step = job.progress.preview, job.progress.preview_step
        if image is None:
            return None
        key = (job.id, step)
        with self._lock:
            if key == self._key:
                return self._value
        value = await run_in_threadpool(encode_png, image)
        with self._lock:
            self._key, self._value = key, value
        return value


def job_info(s: Studio, job: Job, positions: dict[str, int] | None = None) -> JobInfo:
    """The public view of a job (no images inline; URLs point at saved files). Every text goes
    through :func:`safe_text`, so no stored job can make a listing unserialisable."""
    p = job.progress
    images = []
    result = job.result
    shown = [*(getattr(result, "images", []) or []), *(getattr(result, "also_saved", []) or [])]
    for img in shown:  # the answer's images, then what else the job saved (a plot's cells)
        url = f"/api/images/{img.rel_path}" if img.rel_path else None
        images.append(
            JobImage(
                index=img.index,
                seed=img.seed,
                url=safe_text(url),
                history_id=img.history_id,
                infotext=safe_text(img.infotext),
            )
        )
    return JobInfo(
        id=job.id,
        kind=job.kind,
        client=safe_text(job.client),
        state=job.state,
        phase=safe_text(p.phase) if job.state == "running" else "",
        position=(positions.get(job.id) if positions is not None else s.queue.position(job))
        if job.state == "queued"
        else None,
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
        error=safe_text(job.error),
        error_field=safe_text(job.error_field),
        warnings=[safe_text(w) for w in job.meta.get("warnings", [])],
        model=safe_text(job.meta.get("model")),
        images=images,
        prompt=safe_text(job.meta.get("prompt", "")),
    )
