"""``sdstudio txt2img`` (and img2img, inpaint, outpaint) through a running studio: when ``sdstudio serve`` answers at the configured
address, the job is submitted there (``POST /api/jobs/txt2img``), followed to the end and its saved
files printed, so a warm server answers in about a second instead of a process start plus a model
load. ``--local`` always runs in this process.

The server saves and records the images as for any client (its outputs folder, its gallery); a
file the server wrote where this process cannot see it is fetched into ``./outputs/`` under the same
relative name. Flags the server cannot honour for one job (another precision, device or backend, a
local LoRA or VAE folder, ``--outdir``, ``--no-history``, ``--format``, ``--from-png``) run locally.
Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

DEFAULT_SERVER = "http://127.0.0.1:7860"
CLIENT_ID = "sdstudio-cli"

# flag -> its default: any other value keeps the job in this process
LOCAL_ONLY = {
    "outdir": None, "no_history": False, "format": "png", "from_png": None, "precision": "auto",
    "device": "cpu", "backend": None, "prediction_type": None, "tiny_vae": None, "models_dir": "models",
    "lora_dir": None, "embeddings_dir": None, "vae": "Automatic",
}  # fmt: skip


def add_remote_args(p) -> None:
    g = p.add_argument_group("running studio")
    g.add_argument(
        "--server",
        default=os.environ.get("SDSTUDIO_SERVER", DEFAULT_SERVER),
        metavar="URL",
        help="a running `sdstudio serve` to submit the job to when it answers (default $SDSTUDIO_SERVER, "
        f"else {DEFAULT_SERVER})",
    )
    g.add_argument("--local", action="store_true", help="run in this process even when a studio is up")


class Remote:
    """The few HTTP calls the CLI makes to a studio (stdlib only)."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"X-Client-Id": CLIENT_ID, **({"Content-Type": "application/json"} if data else {})}
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=timeout or self.timeout) as res:
            return json.loads(res.read() or b"null")

    def up(self) -> bool:
        """True when a studio answers ``/api/info`` (a busy one may take a moment)."""
        try:
            info = self.call("GET", "/api/info", timeout=3.0)  # refused at once when none listens
        except (OSError, ValueError):
            return False
        return isinstance(info, dict) and "limits" in info

    def fetch(self, path: str) -> bytes:
        req = urllib.request.Request(self.url + path, headers={"X-Client-Id": CLIENT_ID})
        with urllib.request.urlopen(req, timeout=self.timeout) as res:
            return res.read()


def local_reason(args) -> str | None:
    """Why this command must run in this process (None: a studio can run it)."""
    if args.local:
        return "--local"
    changed = [k for k, default in LOCAL_ONLY.items() if getattr(args, k, default) != default]
    return f"--{changed[0].replace('_', '-')} is a local setting" if changed else None


def payload(args, model_title: str) -> dict[str, Any]:
    """The A1111 txt2img body for the flags (``sdstudio.fields.KNOBS`` gives each knob's A1111 name).
    Omitted flags stay omitted, so the server applies the model's defaults as the local CLI does."""
    from sdstudio.fields import KNOBS

    body: dict[str, Any] = {"prompt": args.prompt or ""}
    for knob in KNOBS:
        value = getattr(args, knob.name, None)
        if knob.a1111 and value is not None:
            body[knob.a1111] = value
    for flag, field in (("width", "width"), ("height", "height"), ("sampler", "sampler_name")):
        if getattr(args, flag) is not None:
            body[field] = getattr(args, flag)
    if args.scheduler and args.scheduler.lower() != "automatic":
        body["scheduler"] = args.scheduler
    if getattr(args, "hires", False):
        body.update(
            enable_hr=True, hr_scale=args.hr_scale, hr_upscaler=args.hr_upscaler,
            hr_second_pass_steps=args.hr_steps, denoising_strength=args.hr_denoising_strength,
            hr_resize_x=args.hr_resize_x, hr_resize_y=args.hr_resize_y, hr_sampler_name=args.hr_sampler,
            hr_prompt=args.hr_prompt, hr_negative_prompt=args.hr_negative_prompt,
        )  # fmt: skip
    body["override_settings"] = {"sd_model_checkpoint": model_title}
    return body


def model_title(remote: Remote, model: str | None) -> str | None:
    """The server's title for ``--model`` (a path the server lists, or one of its model names);
    without ``--model`` its embedded model, as the local CLI uses. None: the server does not have it."""
    models = remote.call("GET", "/api/models")["models"]
    if model is None:
        return next((m["title"] for m in models if m.get("embedded")), None)
    path = Path(model).expanduser()
    if path.exists():
        wanted = str(path.resolve())
        return next((m["title"] for m in models if m.get("filename") and str(Path(m["filename"]).resolve()) == wanted), None)  # fmt: skip
    for m in models:  # A1111 title, model name, or the title without its hash
        if model in (m["title"], m["model_name"], m["title"].split(" [")[0]):
            return m["title"]
    return None


def edit_fields(args, kind: str) -> dict[str, Any]:
    """The img2img body's image fields for ``sdstudio img2img|inpaint|outpaint`` flags, as
    ``cli/edit.py`` builds them locally: the init image(s) and mask as base64 files, and without
    --width/--height the first init image's size rounded down to a multiple of 8 (at least 64)."""
    import base64

    from sdstudio.errors import SDStudioError

    def b64(path: str, flag: str) -> str:
        try:
            return base64.b64encode(Path(path).read_bytes()).decode()
        except OSError as exc:
            raise SDStudioError(f"{flag}: cannot read {path}: {exc.strerror}") from None

    inits = args.init if isinstance(args.init, list) else [args.init]
    body: dict[str, Any] = {"init_images": [b64(x, "--init") for x in inits]}
    if args.denoising_strength is not None:
        body["denoising_strength"] = args.denoising_strength
    elif kind == "outpaint":  # the API fills A1111's 0.75 for an omitted strength; outpaint's own is 0.8
        from sdstudio.pipelines.outpaint import DEFAULT_STRENGTH

        body["denoising_strength"] = DEFAULT_STRENGTH
    if kind != "outpaint":
        body["resize_mode"] = args.resize_mode
        if args.width is None and args.height is None:
            from PIL import Image

            with Image.open(inits[0]) as im:
                body["width"], body["height"] = (max(64, v // 8 * 8) for v in im.size)
    if kind != "img2img":
        body.update(mask_blur=args.mask_blur, inpainting_fill=args.inpainting_fill)
    if kind == "inpaint":
        body.update(
            mask=b64(args.mask, "--mask"), inpainting_mask_invert=int(args.mask_invert),
            inpaint_full_res=args.only_masked, inpaint_full_res_padding=args.only_masked_padding,
        )  # fmt: skip
    if kind == "outpaint":
        body.update(
            outpaint_left=args.left, outpaint_right=args.right, outpaint_top=args.up, outpaint_bottom=args.down,
            inpaint_full_res=False,
        )  # fmt: skip
    return body


def try_remote(args, kind: str = "txt2img") -> int | None:
    """Run ``args`` on a running studio; None when it must run locally (no studio up, or a local-only
    flag), with a line on stderr saying why when a studio was up."""
    if local_reason(args) or not args.server:
        return None
    remote = Remote(args.server)
    if not remote.up():
        return None
    title = model_title(remote, args.model)
    if title is None:
        print(
            f"sdstudio: the studio at {remote.url} does not list {args.model}; running here", file=sys.stderr
        )
        return None
    from sdstudio.cli.common import check_flags

    check_flags(args)  # the same one-line errors as locally, before anything is sent
    body = payload(args, title)
    if kind != "txt2img":
        body.update(edit_fields(args, kind))
    return run_remote(remote, body, "txt2img" if kind == "txt2img" else "img2img")


def run_remote(remote: Remote, body: dict[str, Any], route: str = "txt2img") -> int:
    """Submit, follow with a progress bar on stderr, print each saved file; Ctrl+C cancels the job."""
    from sdstudio.errors import SDStudioError

    try:
        job = remote.call("POST", f"/api/jobs/{route}", body)
    except urllib.error.HTTPError as exc:
        raise SDStudioError(_detail(exc)) from None
    print(f"sdstudio: job {job['id']} on {remote.url}", file=sys.stderr)
    try:
        job = _follow(remote, job, route)
    except KeyboardInterrupt:
        remote.call("POST", f"/api/jobs/{job['id']}/cancel")
        raise
    for warning in job.get("warnings") or []:
        print(f"sdstudio: warning: {warning}", file=sys.stderr)
    if job["state"] == "failed":
        raise SDStudioError(job.get("error") or "the job failed")
    outdir = Path(remote.call("GET", "/sdapi/v1/cmd-flags").get("outdir") or "outputs")
    for image in job["images"]:
        print(_local_copy(remote, outdir, image["url"]), flush=True)
    return 0 if job["state"] == "done" else 130


def _follow(remote: Remote, job: dict[str, Any], route: str) -> dict[str, Any]:
    from tqdm import tqdm

    bar = tqdm(total=None, unit="step", desc=route, dynamic_ncols=True, file=sys.stderr, leave=False)
    try:
        while job["state"] not in ("done", "failed", "cancelled"):
            time.sleep(0.1)
            job = remote.call("GET", f"/api/jobs/{job['id']}")
            if job["state"] == "queued":
                bar.set_description_str(f"queued ({job.get('position') or 0} ahead)")
            elif job["job_steps"]:
                bar.set_description_str(route)
                bar.total, bar.n = job["job_steps"], job["job_step"]
                bar.set_postfix_str(f"batch {job['batch_index'] + 1}/{job['batch_count']}", refresh=False)
            bar.refresh()
    finally:
        bar.close()
    return job


def _local_copy(remote: Remote, outdir: Path, url: str) -> Path:
    """The saved file as this process sees it: the server's own path when it is visible here, else a
    copy fetched into ./outputs/ under the same relative name."""
    rel = url.removeprefix("/api/images/")
    path = outdir / rel
    if path.is_file():
        return _shown(path)
    copy = Path("outputs") / rel
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_bytes(remote.fetch(url))
    return copy


def _shown(path: Path) -> Path:
    try:
        return path.resolve().relative_to(Path.cwd())
    except ValueError:
        return path


def _detail(exc: urllib.error.HTTPError) -> str:
    """The server's one-line reason (422 names the field)."""
    try:
        return str(json.loads(exc.read()).get("detail"))
    except (ValueError, AttributeError):
        return f"{exc.code} {exc.reason}"
