"""A1111-compatible routes under ``/sdapi/v1`` (``modules/api/api.py`` v1.10 shapes).

Generation routes queue a job like any other client's and wait for it, so A1111 clients
(e.g. the ``webuiapi`` package) share the fair queue with the browser UI.
"""

from __future__ import annotations

import base64
import datetime
import threading
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from sdstudio import __version__
from sdstudio.api import schemas as s
from sdstudio.api.convert import build_info, convert, decode_image, hires_upscalers
from sdstudio.api.deps import client_id, client_owner, raise_if_failed, studio, wait_finished
from sdstudio.api.text import find_lone_surrogate, surrogate_message
from sdstudio.config import default_backend
from sdstudio.errors import SDStudioError

router = APIRouter(prefix="/sdapi/v1", tags=["A1111 compatible"])
_EXTRAS_LOCK = threading.Lock()  # one Extras upscale at a time: memory of one image and one upscaler

SCHEDULER_FACTS = {  # A1111 modules/sd_schedulers.py: name, default_rho, need_inner_model
    "Automatic": ("automatic", None, False),
    "Uniform": ("uniform", None, True),
    "Karras": ("karras", 7.0, False),
    "Exponential": ("exponential", None, False),
    "Polyexponential": ("polyexponential", 1.0, False),
    "SGM Uniform": ("sgm_uniform", None, True),
}


async def _generate(request: Request, req: s._A1111Base, kind: str) -> s.GenerationResponse:
    st = studio(request)
    converted = await run_in_threadpool(convert_for_studio, st, req, kind)
    # storing the job (PNG-encoding its inputs, SQLite) runs off the event loop
    job = await run_in_threadpool(
        st.submit, converted, client=client_id(request), owner=client_owner(request)
    )
    if converted.model_name and not req.override_settings_restore_afterwards:
        st.manager.select(converted.model_name)  # A1111: the request's model stays for later requests
    await wait_finished(job, st.settings.sync_timeout)
    raise_if_failed(job)
    result = job.result
    images = result.images if result is not None else []
    warnings = list(converted.warnings)
    if job.state == "cancelled":
        warnings.append(f"job {job.state}: {job.error}")
    info = build_info(converted, result, version=f"sdstudio {__version__}")  # as the infotext's "Version"
    encoded = await run_in_threadpool(_encode_files, st, images) if req.send_images else []
    return s.GenerationResponse(
        images=encoded, parameters=converted.parameters, info=info, warnings=warnings, job_id=job.id
    )


def convert_for_studio(st: Any, req: s._A1111Base, kind: str):
    """The A1111 request as a prepared GenerationRequest, with the server's options and the model's
    defaults for omitted knobs (its native size, its card's steps)."""
    overrides = {
        "CLIP_stop_at_last_layers": st.options.get("CLIP_stop_at_last_layers", 1),
        "token_merging_ratio": st.options.get("token_merging_ratio", 0.0),
    }
    req.override_settings = {**overrides, **(req.override_settings or {})}
    model_name = (req.override_settings or {}).get("sd_model_checkpoint") or None
    return convert(
        req,
        limits=st.settings.limits,
        kind=kind,
        defaults=st.defaults_for(model_name),
        upscalers=st.manager.upscalers(),
    )


def _encode_files(st: Any, images: list) -> list[str]:
    """Base64 of each saved file, as A1111 returns images in its samples format with the infotext."""
    out = []
    for im in images:
        data = st.image_bytes(im)
        if data is not None:
            out.append(base64.b64encode(data).decode("ascii"))
    return out


@router.post("/txt2img", response_model=s.GenerationResponse)
async def txt2img(req: s.Txt2ImgRequest, request: Request) -> s.GenerationResponse:
    """Text to image; waits for the queued job and returns base64 PNGs (A1111 TextToImageResponse)."""
    return await _generate(request, req, "txt2img")


@router.post("/img2img", response_model=s.GenerationResponse)
async def img2img(req: s.Img2ImgRequest, request: Request) -> s.GenerationResponse:
    """Image to image / inpaint (mask) / outpaint (sdstudio's outpaint_* margins)."""
    return await _generate(request, req, "img2img")


@router.get("/progress", response_model=s.ProgressResponse)
async def progress(request: Request, skip_current_image: bool = False) -> s.ProgressResponse:
    """The running job's progress in A1111's shape (progress 0 and job_count 0 when idle)."""
    st = studio(request)
    job = st.queue.running
    queued = st.queue.pending_count()
    if job is None:  # idle or between jobs: job_count > 0 while anything waits (webuiapi's wait_for_ready)
        state = s.ProgressState(job_count=queued)
        return s.ProgressResponse(progress=0, eta_relative=0, state=state, textinfo=_queue_text(queued))
    p = job.progress
    state = s.ProgressState(
        skipped=job.cancel_token.skipped,
        interrupted=job.cancel_token.interrupted,
        job=f"{job.kind}:{job.id}",
        job_count=max(1, p.batch_count),
        job_timestamp=datetime.datetime.fromtimestamp(job.started_at or job.created_at).strftime(
            "%Y%m%d%H%M%S"
        ),
        job_no=p.batch_index,
        sampling_step=p.step,
        sampling_steps=p.steps,
    )
    image = None if skip_current_image else await request.app.state.preview_cache.get(job)
    return s.ProgressResponse(
        progress=min(1.0, p.fraction),
        eta_relative=job.eta_seconds() or 0.0,
        state=state,
        current_image=image,
        textinfo=p.phase or _queue_text(queued),  # "Loading <model>…" while the worker loads it
    )


def _queue_text(queued: int) -> str:
    return f"{queued} job(s) waiting" if queued else ""


@router.post("/interrupt")
async def interrupt(request: Request) -> dict:
    """Interrupt the running job (images finished so far are kept), as A1111's Interrupt."""
    st = studio(request)
    job = st.queue.running
    if job is not None:
        st.queue.cancel(job.id)
    return {}


@router.post("/skip")
async def skip(request: Request) -> dict:
    """Skip the running job's current batch (A1111 Skip)."""
    st = studio(request)
    job = st.queue.running
    if job is not None:
        st.queue.skip(job.id)
    return {}


def _options(request: Request) -> dict[str, Any]:
    """Every A1111 v1.10 option key (``api/a1111_options.py``) with the value sdstudio works with."""
    from sdstudio.api.a1111_options import reported_defaults

    st = studio(request)
    entry = st.manager.current_entry()
    out = Path(st.settings.outdir)
    opts = reported_defaults()
    opts.update(
        {
            "sd_model_checkpoint": entry.title if entry else None,
            "sd_checkpoint_hash": (entry.sha256 if entry else None) or "",
            "samples_format": st.settings.save_format,
            "outdir_txt2img_samples": str(out / "txt2img-images"),
            "outdir_img2img_samples": str(out / "img2img-images"),
        }
    )
    opts.update({k: v for k, v in st.options.items() if k != "sd_model_checkpoint"})
    return opts


@router.get("/options", response_model=s.OptionsResponse)
async def get_options(request: Request) -> dict[str, Any]:
    """Current options: every A1111 v1.10 key (see ``api/a1111_options.py``)."""
    return _options(request)


@router.post("/options", response_model=s.WarningsResponse)
async def set_options(body: dict[str, Any], request: Request) -> dict[str, Any]:
    """Set options. ``sd_model_checkpoint`` selects the model for the next jobs, ``sd_vae`` the VAE,
    ``CLIP_stop_at_last_layers`` the clip skip, ``token_merging_ratio`` the ToMe ratio; keys that
    decide results accept only the value sdstudio implements (else 422 naming it); UI-only keys are
    stored and echoed; unknown keys are warned about. Everything is checked before anything changes."""
    from sdstudio.api.a1111_options import A1111_DEFAULTS, FIXED

    st = studio(request)
    found = find_lone_surrogate(body)
    if found:
        raise SDStudioError(surrogate_message(*found), field=found[0])
    current = _options(request)
    for key, value in body.items():
        if key == "sd_model_checkpoint":
            st.manager.find(str(value))
        elif key == "sd_vae":
            from sdstudio.networks.vae import resolve_vae

            resolve_vae(str(value), None, st.manager.networks)
        elif key == "CLIP_stop_at_last_layers":
            if not isinstance(value, (int, float)) or int(value) != value or not 1 <= value <= 12:
                raise SDStudioError("CLIP_stop_at_last_layers must be an integer in [1, 12]", field=key)
        elif key == "token_merging_ratio":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 0.9:
                raise SDStudioError("token_merging_ratio must be a number in [0, 0.9]", field=key)
        elif key in FIXED and value != current.get(key):
            raise SDStudioError(
                f"option {key}: sdstudio cannot honour {value!r}; it always works with {current.get(key)!r}",
                field=key,
            )
    ignored = []
    for key, value in body.items():
        if key == "sd_model_checkpoint":
            st.manager.select(str(value))
        elif key == "CLIP_stop_at_last_layers":
            st.options[key] = int(value)
        elif key == "token_merging_ratio":
            st.options[key] = float(value)
        elif key == "sd_vae" or (key in A1111_DEFAULTS and key not in FIXED):
            st.options[key] = value if key != "sd_vae" else str(value)
        elif key not in A1111_DEFAULTS:
            ignored.append(key)
    return {"warnings": [f"options ignored: {', '.join(sorted(ignored))}"] if ignored else []}


@router.get("/cmd-flags")
async def cmd_flags(request: Request) -> dict[str, Any]:
    """The server's launch settings under A1111's flag names where one exists."""
    st = studio(request)
    cfg = st.settings
    md = cfg.models_dir
    return {
        "listen": cfg.host not in ("127.0.0.1", "localhost", "::1"),
        "port": cfg.port,
        "api": True,
        "nowebui": False,
        "api_auth": "<set>" if cfg.api_auth else None,
        "ckpt": cfg.model,
        "ckpt_dir": str(Path(md) / "Stable-diffusion") if md else None,
        "vae_dir": str(Path(md) / "VAE") if md else None,
        "lora_dir": str(Path(md) / "Lora") if md else None,
        "embeddings_dir": str(Path(md) / "embeddings") if md else None,
        "models_dir": str(md) if md else None,
        "outdir": str(cfg.outdir),
        "precision": cfg.precision,
        "device": cfg.device,
        "backend": cfg.backend or default_backend(),  # sdstudio's --backend (A1111's --use-ipex/--use-directml have no match)
    }


@router.get("/samplers", response_model=list[s.SamplerItem])
async def samplers() -> list[s.SamplerItem]:
    """Samplers by A1111 name with aliases and options (``{"scheduler": default}``)."""
    from sdstudio.sampling import list_samplers

    return [
        s.SamplerItem(
            name=x.name,
            aliases=list(x.aliases),
            options={"scheduler": x.default_schedule.lower(), **x.options},
        )
        for x in list_samplers()
    ]


@router.get("/schedulers", response_model=list[s.SchedulerItem])
async def schedulers() -> list[s.SchedulerItem]:
    """Schedule types (A1111 ``modules/sd_schedulers.py`` names and labels)."""
    from sdstudio.sampling import SCHEDULE_TYPES

    out = []
    for label in SCHEDULE_TYPES:
        name, rho, inner = SCHEDULER_FACTS.get(label, (label.lower().replace(" ", "_"), None, False))
        out.append(
            s.SchedulerItem(name=name, label=label, aliases=None, default_rho=rho, need_inner_model=inner)
        )
    return out


@router.get("/sd-models", response_model=list[s.SDModelItem])
async def sd_models(request: Request) -> list[s.SDModelItem]:
    """Checkpoints in models/Stable-diffusion (and in-memory models) in A1111's shape."""
    return [
        s.SDModelItem(
            title=e.title,
            model_name=e.model_name,
            hash=e.hash,
            sha256=e.sha256,
            filename=e.filename,
            config=None,
        )
        for e in studio(request).manager.entries()
    ]


@router.post("/refresh-checkpoints")
async def refresh_checkpoints(request: Request) -> None:
    """Rescan the models folder."""
    await run_in_threadpool(studio(request).manager.refresh)


@router.post("/unload-checkpoint")
async def unload_checkpoint(request: Request) -> dict[str, Any]:
    """Drop the loaded checkpoint from memory (a job running with it finishes first); the next job,
    or ``/reload-checkpoint``, loads it again."""
    await run_in_threadpool(_unload_all, studio(request))
    return {}


@router.post("/reload-checkpoint")
async def reload_checkpoint(request: Request) -> dict[str, Any]:
    """Read the selected checkpoint from its file again, before the next job (a file replaced on
    disk is picked up). sdstudio loads lazily: the model is read when the next job starts."""
    await run_in_threadpool(_unload_all, studio(request))
    return {}


def _unload_all(st) -> None:
    for worker in st.workers:
        worker.unload()


@router.post("/refresh-vae")
async def refresh_vae() -> None:
    """VAE files are listed fresh on every call (files are re-read when their mtime changes)."""


@router.post("/refresh-loras")
async def refresh_loras() -> None:
    """LoRA files are listed fresh on every call (files are re-read when their mtime changes)."""


@router.post("/refresh-embeddings")
async def refresh_embeddings() -> None:
    """Embedding files are listed fresh on every call (files are re-read when their mtime changes)."""


@router.get("/sd-vae", response_model=list[s.SDVaeItem])
async def sd_vae(request: Request) -> list[s.SDVaeItem]:
    """VAE files in models/VAE (A1111 ``sd_vae`` values besides Automatic and None)."""
    return [s.SDVaeItem(model_name=f.name, filename=f.path) for f in studio(request).manager.networks.files("vae")]


@router.get("/loras", response_model=list[s.LoraItem])
async def loras(request: Request) -> list[s.LoraItem]:
    """LoRA files in models/Lora with their safetensors metadata (A1111 Lora extension shape); the
    folder walk and header parsing run in a worker thread, never on the event loop."""
    files = await run_in_threadpool(studio(request).manager.networks.files, "lora")
    return [s.LoraItem(name=f.name, alias=f.alias, path=f.path, metadata=f.metadata) for f in files]


@router.get("/hypernetworks", response_model=list[s.HypernetworkItem])
async def hypernetworks(request: Request) -> list[s.HypernetworkItem]:
    """Hypernetwork files in models/hypernetworks (listed; ``<hypernet:...>`` is refused with a message)."""
    return [s.HypernetworkItem(name=f.name, path=f.path) for f in studio(request).manager.networks.files("hypernetworks")]


@router.get("/face-restorers", response_model=list[s.FaceRestorerItem])
async def face_restorers() -> list[s.FaceRestorerItem]:
    """No face restorer (CodeFormer, GFPGAN) is installed in sdstudio: always empty."""
    return []


@router.get("/realesrgan-models", response_model=list[s.RealesrganItem])
async def realesrgan_models(request: Request) -> list[s.RealesrganItem]:
    """Upscaler files in models/RealESRGAN (A1111 lists its Real-ESRGAN upscalers here)."""
    files = await run_in_threadpool(studio(request).manager.upscalers)
    found = [f for f in files if f.folder == "RealESRGAN"]
    return [s.RealesrganItem(name=f.name, path=str(f.path), scale=f.scale) for f in found]


@router.get("/embeddings", response_model=s.EmbeddingsResponse)
async def embeddings(request: Request) -> s.EmbeddingsResponse:
    """Textual-inversion files: ``loaded`` = usable with the loaded model, ``skipped`` = another width
    or unreadable (A1111 shape; with no model loaded yet every readable file counts as loaded)."""
    return await run_in_threadpool(_embeddings, studio(request).manager)


def _embeddings(manager: Any) -> s.EmbeddingsResponse:
    from sdstudio.networks.embeddings import read_embedding

    library, model = manager.networks, manager.loaded
    loaded, skipped = {}, {}
    for f in library.files("embeddings"):
        name = Path(f.name).name
        try:
            emb = library.cached(f.path, read_embedding)
        except SDStudioError:
            skipped[name] = s.EmbeddingItem(shape=0, vectors=0)
            continue
        item = s.EmbeddingItem(shape=emb.shape, vectors=emb.n_vectors)
        fits = model is None or emb.for_model(model) is not None
        (loaded if fits else skipped)[name] = item
    return s.EmbeddingsResponse(loaded=loaded, skipped=skipped)


@router.get("/upscalers", response_model=list[s.UpscalerItem])
async def upscalers(request: Request) -> list[s.UpscalerItem]:
    """Image upscalers (hires fix, SD upscale, Extras): None, Lanczos, Nearest, then the model files
    in models/ESRGAN, RealESRGAN, SwinIR, DAT, HAT and upscale_models (A1111: ``model_name`` is the
    upscaler kind, here the folder; ``scale`` as the file name states it). Latent modes are in
    /latent-upscale-modes."""
    names = ["None"] + [n for n in hires_upscalers() if not n.startswith("Latent") and n != "None"]
    builtin = [s.UpscalerItem(name=n, scale=4.0 if n != "None" else None) for n in names]
    files = await run_in_threadpool(studio(request).manager.upscalers)
    return builtin + [
        s.UpscalerItem(name=f.name, model_name=f.folder, model_path=str(f.path), scale=f.scale) for f in files
    ]


@router.post("/extra-single-image", response_model=s.ExtrasSingleImageResponse)
async def extra_single_image(
    request: Request, req: s.ExtrasSingleImageRequest
) -> s.ExtrasSingleImageResponse:
    """A1111 Extras, one image: upscaler 1 (+ upscaler 2 blended) by a factor or to a size."""
    images, html_info = await run_in_threadpool(_run_extras, studio(request), req, [req.image])
    return s.ExtrasSingleImageResponse(html_info=html_info, image=images[0])


@router.post("/extra-batch-images", response_model=s.ExtrasBatchImagesResponse)
async def extra_batch_images(
    request: Request, req: s.ExtrasBatchImagesRequest
) -> s.ExtrasBatchImagesResponse:
    """A1111 Extras, a list of images (``imageList``: ``{data, name}``), each upscaled alike."""
    datas = [item.data for item in req.imageList]
    images, html_info = await run_in_threadpool(_run_extras, studio(request), req, datas)
    return s.ExtrasBatchImagesResponse(html_info=html_info, images=images)


def _run_extras(st: Any, req: s._ExtrasBase, datas: list[str]) -> tuple[list[str], str]:
    """Decode (held to --max-image-pixels), check every result size against the same limit, then
    upscale one image at a time (one Extras run per process at a time: the memory of one image)."""
    import html

    from sdstudio.api.convert import encode_png
    from sdstudio.upscale.extras import ExtrasOptions, run_extras

    if req.gfpgan_visibility > 0 or req.codeformer_visibility > 0:
        field = "gfpgan_visibility" if req.gfpgan_visibility > 0 else "codeformer_visibility"
        raise SDStudioError("face restoration is not available: no face restorer is installed", field=field)
    field = "image" if isinstance(req, s.ExtrasSingleImageRequest) else "imageList"
    if not datas:
        raise SDStudioError("no image given", field=field)
    files = st.manager.upscalers()
    options = ExtrasOptions(
        upscaler_1=_upscaler_name(files, req.upscaler_1, "upscaler_1"),
        upscaler_2=_upscaler_name(files, req.upscaler_2, "upscaler_2"),
        upscaler_2_visibility=req.extras_upscaler_2_visibility,
        resize_mode=req.resize_mode,
        scale=req.upscaling_resize,
        size=(req.upscaling_resize_w, req.upscaling_resize_h),
        crop=req.upscaling_crop,
    )
    limits = st.settings.limits
    images = [decode_image(d, field_name=field, limits=limits) for d in datas]
    for im in images:
        options.check(im.size, limits.max_image_pixels)
    paths = {f.name: f.path for f in files}

    def load(name: str) -> Any:
        return st.manager.load_upscaler(paths[name])

    tile, overlap = _tile_options(st.options)
    out, info = [], {}
    with _EXTRAS_LOCK:
        for im in images:
            result, info = run_extras(im, options, load, tile=tile, overlap=overlap)
            out.append(encode_png(result))
    text = ", ".join(f"{k}: {v}" for k, v in info.items())
    return out, f"<p>{html.escape(text)}</p>"


def _tile_options(options: dict[str, Any]) -> tuple[int, int]:
    """(tile, overlap) from A1111's options ``ESRGAN_tile`` (192) and ``ESRGAN_tile_overlap`` (8), held
    to [32, 1024] and [0, tile): A1111's 0 ("no tiling") becomes 1024, so memory stays bounded."""
    try:
        tile, overlap = int(options.get("ESRGAN_tile", 192)), int(options.get("ESRGAN_tile_overlap", 8))
    except (TypeError, ValueError, OverflowError):
        tile, overlap = 192, 8
    tile = 1024 if tile <= 0 else min(max(tile, 32), 1024)
    return tile, min(max(overlap, 0), tile - 1)


def _upscaler_name(files: list, name: str | None, field: str) -> str:
    """The canonical name of a built-in (None, Lanczos, Nearest; any case) or installed upscaler."""
    from sdstudio.upscale.files import BUILTIN_UPSCALERS, find_upscaler

    key = (name or "None").strip().lower()
    for builtin in BUILTIN_UPSCALERS:
        if builtin.lower() == key:
            return builtin
    try:
        return find_upscaler(files, name or "").name
    except SDStudioError as exc:
        raise SDStudioError(str(exc), field=field) from None


@router.get("/latent-upscale-modes", response_model=list[s.LatentUpscalerModeItem])
async def latent_upscale_modes() -> list[dict[str, str]]:
    return [{"name": n} for n in hires_upscalers() if n.startswith("Latent")]


@router.get("/prompt-styles", response_model=list[s.PromptStyleItem])
async def prompt_styles() -> list[s.PromptStyleItem]:
    """sdstudio keeps no styles database: always empty."""
    return []


@router.get("/scripts", response_model=s.ScriptsList)
async def scripts() -> s.ScriptsList:
    """The A1111 scripts sdstudio runs through ``script_name`` (lower-case titles, as A1111 lists them)."""
    from sdstudio.pipelines.scripts import script_names

    return s.ScriptsList(txt2img=script_names("txt2img"), img2img=script_names("img2img"))


@router.get("/script-info")
async def script_info() -> list[dict[str, Any]]:
    return []


@router.get("/extensions")
async def extensions() -> list[dict[str, Any]]:
    return []


@router.get("/memory", response_model=s.MemoryResponse)
async def memory() -> s.MemoryResponse:
    """Process RSS and system RAM (bytes); CUDA stats when a GPU is present."""
    return s.MemoryResponse(ram=_ram(), cuda=_cuda())


@router.post("/png-info", response_model=s.PNGInfoResponse)
async def png_info(req: s.PNGInfoRequest, request: Request) -> s.PNGInfoResponse:
    """Read the A1111 infotext of an image and parse it into fields."""
    return await run_in_threadpool(read_png_info, req.image, studio(request).settings.limits)


def read_png_info(data: str, limits) -> s.PNGInfoResponse:
    from sdstudio.runtime.history import _parse, read_image_text

    image = decode_image(data, field_name="image", limits=limits)
    text, items = read_image_text(image)
    return s.PNGInfoResponse(info=text, items=items, parameters=_parse(text) if text else {})


def _ram() -> dict[str, Any]:
    try:
        info = dict(
            line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line
        )
        total = int(info["MemTotal"].split()[0]) * 1024
        free = int(info.get("MemAvailable", info["MemFree"]).split()[0]) * 1024
        status = dict(
            line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line
        )
        rss = int(status["VmRSS"].split()[0]) * 1024
        return {"free": free, "used": total - free, "total": total, "process_rss": rss}
    except (OSError, KeyError, ValueError) as exc:
        return {"error": str(exc)}


def _cuda() -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"error": "unavailable"}
    free, total = torch.cuda.mem_get_info()
    return {"system": {"free": free, "used": total - free, "total": total}}
