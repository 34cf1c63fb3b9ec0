"""Pydantic request/response models: A1111's ``/sdapi/v1`` shapes and sdstudio's ``/api`` shapes.

A1111 field names and defaults follow ``modules/api/models.py`` and the v1.10
``StableDiffusionProcessing*`` dataclasses (e.g. steps 50, cfg_scale 7.0, sampler_index
"Euler", img2img denoising_strength 0.75, inpaint_full_res True). Unknown fields are kept
(``extra="allow"``) so the API can list them in a warning instead of failing.

Every number a request carries has a lower and an upper bound here (a 422 naming the field before
anything is decoded or allocated; ``tests/security/test_bounds.py`` walks every request schema to
keep it so). These are hard ceilings, the same on every server; the server's own limits
(``--max-size``, ``--max-steps``, ...) are checked after them, by ``GenerationRequest.validate``.
NaN and infinity are refused in every float field.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from sdstudio.api.text import find_lone_surrogate, surrogate_message
from sdstudio.config import MAX_HR_SCALE, MAX_SEED, MAX_TOKEN_MERGING_RATIO

MAX_PIXELS_SIDE = 16384  # any pixel size or margin; the server's --max-size is lower
MAX_STEPS = 1_000_000  # steps of any pass; the server's --max-steps is lower (and named when it refuses)
MAX_COUNT = 1_000_000  # batch size, batch count; --max-batch-size and the batch-count limit are lower
MAX_SIGMA = 1000.0  # s_tmin / s_tmax (accepted for A1111 clients, not used)
SQLITE_MAX_INT = 2**63 - 1  # ids and offsets of the history database


class TextSafeModel(BaseModel):
    """Base of every request body: any text field (declared or extra, nested in lists and dicts)
    holding a lone UTF-16 surrogate is a 422 naming the field, before anything stores it; NaN and
    infinity are refused in every float field."""

    model_config = ConfigDict(allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_lone_surrogates(cls, data: Any) -> Any:
        found = find_lone_surrogate(data)
        if found:
            field, index = found
            raise PydanticCustomError("lone_surrogate", surrogate_message(field, index), {"field": field})
        return data


class _A1111Base(TextSafeModel):
    """Fields common to txt2img and img2img (A1111 StableDiffusionProcessing)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    prompt: str = ""
    negative_prompt: str | None = ""
    styles: list[str] | None = None
    seed: int = Field(-1, ge=-1, le=MAX_SEED)
    subseed: int = Field(-1, ge=-1, le=MAX_SEED)
    subseed_strength: float = Field(0.0, ge=0, le=1)
    seed_resize_from_h: int = Field(-1, ge=-1, le=MAX_PIXELS_SIDE)  # -1 / 0 = off; else also <= --max-size
    seed_resize_from_w: int = Field(-1, ge=-1, le=MAX_PIXELS_SIDE)
    sampler_name: str | None = None
    scheduler: str | None = None
    batch_size: int = Field(1, ge=1, le=MAX_COUNT)  # the server's --max-batch-size is checked after this
    n_iter: int = Field(1, ge=1, le=MAX_COUNT)
    steps: int = Field(50, ge=1, le=MAX_STEPS)  # and --max-steps
    cfg_scale: float = Field(7.0, ge=0, le=100)
    width: int = Field(512, ge=16, le=MAX_PIXELS_SIDE)  # and --max-size
    height: int = Field(512, ge=16, le=MAX_PIXELS_SIDE)
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = Field(None, ge=0, le=10)
    denoising_strength: float | None = Field(None, ge=0, le=1)
    s_min_uncond: float | None = Field(None, ge=0, le=100)
    s_churn: float | None = Field(None, ge=0, le=100)
    s_tmax: float | None = Field(None, ge=0, le=MAX_SIGMA)
    s_tmin: float | None = Field(None, ge=0, le=MAX_SIGMA)
    s_noise: float | None = Field(None, ge=0, le=10)
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = Field(None, ge=0, le=1)
    disable_extra_networks: bool = False
    firstpass_image: str | None = None
    comments: dict[str, Any] | None = None
    sampler_index: str = Field("Euler", description="Old alias of sampler_name (A1111 default 'Euler').")
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    force_task_id: str | None = None
    infotext: str | None = None
    # sdstudio extension (ignored by A1111 clients): clip skip without override_settings
    clip_skip: int | None = Field(
        None,
        ge=0,
        le=12,
        description="sdstudio: CLIP skip (A1111: CLIP_stop_at_last_layers); 0: the server's",
    )
    fast: bool | None = Field(
        None,
        description="sdstudio: opt-in fast mode (DeepCache, tiny VAE, int8 UNet on OpenVINO, token downsampling from 512x512; BENCHMARKS.md)",
    )
    token_merging_ratio: float | None = Field(
        None,
        ge=0,
        le=MAX_TOKEN_MERGING_RATIO,
        description="sdstudio: ToMe ratio in [0, 0.9] (A1111: override_settings.token_merging_ratio)",
    )

    @field_validator("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt", check_fields=False)
    @classmethod
    def _bounded_nesting(cls, value: str | None, info: Any) -> str | None:
        """Brackets nested too deep for the prompt grammar, too many ``AND`` parts (positive prompts;
        A1111 leaves ``AND`` in a negative prompt as text): 422 now, not a failed job later."""
        from sdstudio.prompts.schedule import check_and_parts, check_prompt_nesting

        if value:
            check_prompt_nesting(value, field=info.field_name)
            if info.field_name in ("prompt", "hr_prompt"):
                check_and_parts(value, field=info.field_name)
        return value


class Txt2ImgRequest(_A1111Base):
    """POST /sdapi/v1/txt2img body (A1111 StableDiffusionTxt2ImgProcessingAPI)."""

    enable_hr: bool = False
    denoising_strength: float | None = Field(0.75, ge=0, le=1)
    firstphase_width: int = Field(0, ge=0, le=MAX_PIXELS_SIDE)
    firstphase_height: int = Field(0, ge=0, le=MAX_PIXELS_SIDE)
    hr_scale: float = Field(2.0, ge=0, le=MAX_HR_SCALE)  # the target size is also held to --max-size
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = Field(0, ge=0, le=MAX_STEPS)  # 0 = as the first pass; and --max-steps
    hr_resize_x: int = Field(0, ge=0, le=MAX_PIXELS_SIDE)
    hr_resize_y: int = Field(0, ge=0, le=MAX_PIXELS_SIDE)
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""


class Img2ImgRequest(_A1111Base):
    """POST /sdapi/v1/img2img body (A1111 StableDiffusionImg2ImgProcessingAPI)."""

    init_images: list[str] | None = Field(
        None,
        max_length=MAX_COUNT,
        description="Base64 images, with or without data: prefix (at most batch_size).",
    )
    resize_mode: int = Field(0, ge=0, le=3)
    denoising_strength: float | None = Field(0.75, ge=0, le=1)
    image_cfg_scale: float | None = Field(None, ge=0, le=100)
    mask: str | None = Field(None, description="Base64 mask image: white = repaint.")
    mask_blur_x: int = Field(4, ge=0, le=64)
    mask_blur_y: int = Field(4, ge=0, le=64)
    mask_blur: int | None = Field(None, ge=0, le=64)
    mask_round: bool = True
    inpainting_fill: int = Field(0, ge=0, le=3)
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = Field(0, ge=0, le=MAX_PIXELS_SIDE)
    inpainting_mask_invert: int = Field(0, ge=0, le=1)
    initial_noise_multiplier: float | None = Field(None, ge=0, le=2)
    latent_mask: str | None = None
    include_init_images: bool = False
    # sdstudio extension: outpainting margins in pixels (the UI's outpaint fields)
    outpaint_left: int = Field(0, ge=0, le=MAX_PIXELS_SIDE)
    outpaint_right: int = Field(0, ge=0, le=MAX_PIXELS_SIDE)
    outpaint_top: int = Field(0, ge=0, le=MAX_PIXELS_SIDE)
    outpaint_bottom: int = Field(0, ge=0, le=MAX_PIXELS_SIDE)


class GenerationResponse(BaseModel):
    """A1111 TextToImageResponse / ImageToImageResponse (+ sdstudio's warnings and job id)."""

    images: list[str] | None = Field(None, description="The generated images in base64 PNG format.")
    parameters: dict[str, Any]
    info: str = Field(description="JSON string: prompt, all_seeds, infotexts, ... as A1111's Processed.js()")
    warnings: list[str] = Field(default_factory=list, description="sdstudio: ignored fields and the like")
    job_id: str | None = None


class PNGInfoRequest(TextSafeModel):
    image: str = Field(description="The base64 encoded image (PNG, JPEG or WebP)")


class PNGInfoResponse(BaseModel):
    info: str = Field(description="The A1111 infotext ('parameters') the image carries")
    items: dict[str, Any] = Field(description="Other text items of the image")
    parameters: dict[str, Any] = Field(description="The infotext parsed into fields")


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0


class ProgressResponse(BaseModel):
    progress: float = Field(description="0..1")
    eta_relative: float = Field(description="Seconds left (estimate)")
    state: ProgressState
    current_image: str | None = Field(None, description="Live preview, base64 PNG")
    textinfo: str | None = None


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float | None = None
    need_inner_model: bool | None = None


class SDModelItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None


class SDVaeItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    filename: str


class LoraItem(BaseModel):
    name: str
    alias: str
    path: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class HypernetworkItem(BaseModel):
    name: str
    path: str | None = None


class FaceRestorerItem(BaseModel):
    name: str
    cmd_dir: str | None = None


class RealesrganItem(BaseModel):
    name: str
    path: str | None = None
    scale: int | None = None


class UpscalerItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class PromptStyleItem(BaseModel):
    name: str
    prompt: str | None = None
    negative_prompt: str | None = None


class EmbeddingItem(BaseModel):
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    shape: int
    vectors: int


class EmbeddingsResponse(BaseModel):
    loaded: dict[str, EmbeddingItem]
    skipped: dict[str, EmbeddingItem]


class MemoryResponse(BaseModel):
    ram: dict[str, Any]
    cuda: dict[str, Any]


class ScriptsList(BaseModel):
    txt2img: list[str] = Field(default_factory=list)
    img2img: list[str] = Field(default_factory=list)


# -- sdstudio's own routes ----------------------------------------------------------------------


class JobImage(BaseModel):
    index: int
    seed: int
    url: str | None = Field(None, description="GET URL of the saved file")
    history_id: int | None = None
    infotext: str = ""


class JobInfo(BaseModel):
    """State of one queued generation (GET /api/jobs/{id})."""

    id: str
    kind: str
    client: str
    state: str = Field(description="queued | running | done | failed | cancelled")
    phase: str = Field("", description="before the first step: what the worker does, e.g. 'Loading <model>…'")
    position: int | None = Field(None, description="0-based place in the run order while queued")
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    step: int = 0
    steps: int = 0
    job_step: int = 0
    job_steps: int = 0
    batch_index: int = 0
    batch_count: int = 0
    progress: float = 0.0
    eta_seconds: float | None = None
    preview_url: str | None = None
    preview_step: int = 0
    error: str | None = None
    error_field: str | None = None
    warnings: list[str] = Field(default_factory=list)
    model: str | None = None
    images: list[JobImage] = Field(default_factory=list)
    prompt: str = ""


class JobList(BaseModel):
    jobs: list[JobInfo]
    running: str | None = None
    queued: int


class HistoryItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    id: int
    path: str
    url: str
    job_id: str | None = None
    kind: str = ""
    created_at: float
    day: str
    prompt: str = ""
    negative_prompt: str = ""
    seed: int | None = None
    sampler: str = ""
    model_name: str = ""
    model_hash: str = ""
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    file_size: int | None = None
    infotext: str = ""
    request: dict[str, Any] = Field(default_factory=dict)


class HistoryPage(BaseModel):
    items: list[HistoryItem]
    total: int
    offset: int
    limit: int
    facets: dict[str, list[str]] = Field(default_factory=dict)


class ModelInfo(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    title: str
    model_name: str
    hash: str | None = None
    filename: str
    in_memory: bool
    embedded: bool = False
    selected: bool
    loaded: bool
    native_size: int | None = Field(None, description="pixel size the model was trained at, when known")


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
    loras: list[LoraItem]
    vaes: list[SDVaeItem]
    embeddings: list[str]
    models_dir: str | None = None
    last_error: str | None = None
    sd_vae: str = "Automatic"  # the A1111 sd_vae option in effect (Automatic, None or a models/VAE name)


class SelectModelRequest(TextSafeModel):
    name: str


class ServerInfo(BaseModel):
    version: str
    auth: bool
    limits: dict[str, Any]
    upscalers: list[str]
    samplers: list[str]
    schedulers: list[str]
    img2img_available: bool
    lab_available: bool


class OptionsResponse(BaseModel):
    """GET /sdapi/v1/options: the A1111 option keys sdstudio honours or reports."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    sd_model_checkpoint: str | None = None
    sd_checkpoint_hash: str | None = None
    sd_vae: str = "Automatic"
    CLIP_stop_at_last_layers: int = 1
    samples_save: bool = True
    samples_format: str = "png"
    outdir_samples: str = ""
    outdir_txt2img_samples: str = ""
    outdir_img2img_samples: str = ""
    enable_pnginfo: bool = True
    eta_ancestral: float = 1.0
    eta_ddim: float = 0.0
    eta_noise_seed_delta: int = 0
    randn_source: str = "CPU"
    live_previews_enable: bool = True
    show_progress_every_n_steps: int = 1


class WarningsResponse(BaseModel):
    warnings: list[str] = Field(default_factory=list)


class LatentUpscalerModeItem(BaseModel):
    name: str


class StudioSampler(BaseModel):
    name: str
    aliases: list[str]
    default_schedule: str
    schedules: list[str]


class StudioSamplers(BaseModel):
    samplers: list[StudioSampler]
    schedulers: list[str]


class DeletedImage(BaseModel):
    deleted: int
    path: str


class ReconcileResponse(BaseModel):
    removed_rows: list[str]
    added_files: list[str]
    unreadable: list[str]
    rebuilt_database: str | None = None


# -- Extras (A1111 ExtrasBaseRequest / ExtrasSingleImageRequest / ExtrasBatchImagesRequest) ----------
MAX_EXTRAS_SCALE = 8.0  # A1111's Extras slider; the result is also held to --max-image-pixels
MAX_EXTRAS_IMAGES = 100  # images in one extra-batch-images request


class _ExtrasBase(TextSafeModel):
    """A1111 ``ExtrasBaseRequest``: upscaler 1 (+ upscaler 2 blended in) by a factor or to a size;
    face restoration fields are accepted with 0 (no restorer is installed)."""

    resize_mode: int = Field(0, ge=0, le=1, description="0: by upscaling_resize; 1: to upscaling_resize_w/h")
    show_extras_results: bool = True
    gfpgan_visibility: float = Field(0.0, ge=0, le=1)
    codeformer_visibility: float = Field(0.0, ge=0, le=1)
    codeformer_weight: float = Field(0.0, ge=0, le=1)
    upscaling_resize: float = Field(2.0, gt=0, le=MAX_EXTRAS_SCALE)
    upscaling_resize_w: int = Field(512, ge=1, le=MAX_PIXELS_SIDE)
    upscaling_resize_h: int = Field(512, ge=1, le=MAX_PIXELS_SIDE)
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = Field(0.0, ge=0, le=1)
    upscale_first: bool = False


class ExtrasSingleImageRequest(_ExtrasBase):
    image: str = Field("", description="The base64 encoded image")


class ExtrasFileData(TextSafeModel):
    data: str = Field(description="The base64 encoded image")
    name: str = Field("", description="The file name")


class ExtrasBatchImagesRequest(_ExtrasBase):
    imageList: list[ExtrasFileData] = Field(default_factory=list, max_length=MAX_EXTRAS_IMAGES)


class ExtrasSingleImageResponse(BaseModel):
    html_info: str = Field(description="The postprocessing parameters")
    image: str = Field(description="The upscaled image, base64 PNG")


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str = Field(description="The postprocessing parameters")
    images: list[str] = Field(description="The upscaled images, base64 PNG")
