"""``sdstudio serve``: the HTTP API (A1111-compatible + sdstudio's own) and the web UI in one server.

Binds 127.0.0.1 by default. ``--listen`` (0.0.0.0) refuses to start without ``--api-auth``
unless ``--insecure`` is given, because the API can write files and run long jobs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sdstudio.cli.common import add_backend_arg
from sdstudio.errors import SDStudioError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the studio server (web UI + A1111-compatible API)",
        description="Serve the web UI and the HTTP API (/sdapi/v1/* as AUTOMATIC1111, /api/* for jobs and history).",
    )
    p.add_argument(
        "--model",
        help="checkpoint to use by default (default: the embedded model; files in --models-dir are used when selected)",
    )
    p.add_argument(
        "--models-dir",
        default="models",
        help="A1111-style models folder: Stable-diffusion/, Lora/, VAE/, embeddings/",
    )
    p.add_argument(
        "--outdir", default="outputs", help="where images and the history database go (default: outputs)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860, as A1111)")
    p.add_argument("--listen", action="store_true", help="bind 0.0.0.0 (needs --api-auth or --insecure)")
    p.add_argument("--api-auth", metavar="USER:PASS[,USER:PASS]", help="HTTP basic auth for every route")
    p.add_argument("--insecure", action="store_true", help="allow --listen without --api-auth")
    p.add_argument(
        "--allowed-hosts",
        default="",
        metavar="NAME[,NAME]",
        help="Host names to serve besides localhost, IP addresses and --host (DNS-rebinding check); "
        "'.lan' allows every *.lan name, '*' allows any",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=100,
        help="most queued jobs; more get 429 + Retry-After (default 100)",
    )
    p.add_argument(
        "--max-queue-per-client",
        type=int,
        default=0,
        metavar="N",
        help="most queued jobs of one client (its address, with --api-auth its user and address; not "
        "X-Client-Id, which a client chooses); more get 429 "
        "+ Retry-After (default 0: no cap beyond --max-queue)",
    )
    p.add_argument(
        "--tiny-vae",
        default=None,
        metavar="FOLDER",
        help="tiny VAE (TAESD AutoencoderTiny folder) that --fast decodes with, for every model without "
        "a taesd/ of its own whose latents it fits (e.g. from `sdstudio train taesd`)",
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "fp16", "bf16"],
        help="model weights precision",
    )
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    add_backend_arg(p)
    p.add_argument("--max-body-mb", type=float, default=64, help="largest request body in MiB (default 64)")
    p.add_argument(
        "--max-size",
        type=int,
        default=None,
        help="largest width/height (default 2048, and at most 4 times the model's native pixels; "
        "given explicitly, only this limit applies)",
    )
    p.add_argument("--max-steps", type=int, default=150, help="most sampling steps per image (default 150)")
    p.add_argument("--max-batch-size", type=int, default=8, help="largest batch size (default 8)")
    p.add_argument(
        "--max-image-pixels", type=int, default=4096 * 4096, help="largest uploaded image in pixels"
    )
    p.add_argument("--max-prompt-chars", type=int, default=10_000, help="longest prompt + negative prompt")
    p.add_argument(
        "--max-job-steps",
        type=int,
        default=0,
        metavar="N",
        help="most work per job, in sampling steps of a 512x512 image (images x steps x size x CFG and "
        "AND passes, hires pass and script cells included); default: one batch at --max-size, "
        "--max-steps and --max-batch-size (38400 with the defaults)",
    )
    p.add_argument(
        "--workers",
        default="local",
        choices=["local", "ray"],
        help="where models run: local (this process, default) or ray (Ray actors, one per GPU/CPU slot)",
    )
    p.add_argument(
        "--ray-address",
        metavar="auto|HOST:PORT",
        help="with --workers ray: join this Ray cluster (default: start a local one)",
    )
    p.add_argument(
        "--ray-workers",
        type=int,
        default=0,
        metavar="N",
        help="with --workers ray: how many model workers (default: one per GPU, else 1 on CPU)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=0,
        metavar="N",
        help="most open connections (default: half the file-descriptor limit, at most 1024); more are "
        "answered 503 and closed, and a client that has not sent a whole request head within 10 s is "
        "disconnected",
    )
    p.add_argument(
        "--max-connections-per-client",
        type=int,
        default=64,
        metavar="N",
        help="most open connections from one client address (default 64)",
    )
    p.add_argument(
        "--quiet-access-log",
        action="store_true",
        help="no access log lines at all (polls by the web UI and /sdapi/v1/progress are left out anyway)",
    )
    p.set_defaults(func=run)


def build_settings(args: argparse.Namespace):
    """Check the security rules and turn parsed arguments into :class:`ServerSettings`."""
    from sdstudio.api.settings import ServerSettings, parse_api_auth
    from sdstudio.config import Limits

    host = "0.0.0.0" if args.listen else args.host
    auth = parse_api_auth(args.api_auth) if args.api_auth else ()
    public = host not in ("127.0.0.1", "localhost", "::1")
    if public and not auth and not args.insecure:
        raise SDStudioError(
            f"refusing to listen on {host} without --api-auth user:pass (add --insecure to allow it anyway)",
            field="listen",
        )
    if args.max_queue < 1:
        raise SDStudioError("--max-queue must be at least 1", field="max_queue")
    if args.tiny_vae is not None:
        from sdstudio.models.tiny_vae import load_tiny_vae

        load_tiny_vae(args.tiny_vae)  # a wrong folder is an error now, not at the first fast job
    if getattr(args, "max_job_steps", 0) < 0:
        raise SDStudioError(
            "--max-job-steps must be 0 (derived from the other limits) or more", field="max_job_steps"
        )
    if args.max_queue_per_client < 0:
        raise SDStudioError("--max-queue-per-client must be 0 (no cap) or more", field="max_queue_per_client")
    if args.model and not Path(args.model).exists():
        raise SDStudioError(f"--model: no such file or folder: {args.model}", field="model")
    limits = Limits(
        max_width=args.max_size or 2048,
        max_height=args.max_size or 2048,
        max_steps=args.max_steps,
        max_batch_size=args.max_batch_size,
        max_image_pixels=args.max_image_pixels,
        max_prompt_chars=args.max_prompt_chars,
        max_job_steps=getattr(args, "max_job_steps", 0),
        max_native_factor=0.0 if args.max_size else 4.0,  # an explicit --max-size is the only size limit
    )
    return ServerSettings(
        outdir=Path(args.outdir),
        models_dir=Path(args.models_dir) if args.models_dir else None,
        model=args.model,
        host=host,
        port=args.port,
        api_auth=auth,
        allowed_hosts=tuple(n.strip() for n in args.allowed_hosts.split(",") if n.strip()),
        max_queue=args.max_queue,
        max_queue_per_client=args.max_queue_per_client or None,
        device=args.device,
        precision=args.precision,
        backend=args.backend,
        tiny_vae=Path(args.tiny_vae).expanduser() if args.tiny_vae else None,
        limits=limits,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        workers=args.workers,
        ray_address=args.ray_address,
        ray_workers=_ray_workers(args),
    )


def _ray_workers(args: argparse.Namespace) -> int:
    if args.ray_workers < 0:
        raise SDStudioError(
            f"--ray-workers must be 0 (automatic) or more, got {args.ray_workers}", field="ray_workers"
        )
    if args.workers != "ray" and (args.ray_address or args.ray_workers):
        raise SDStudioError("--ray-address and --ray-workers need --workers ray", field="workers")
    return args.ray_workers


def _extra_routers() -> list:
    """Routers from layers above the API: the lab's ``sdstudio.lab.routes.router`` (a broken import
    fails the start loudly, never a silently missing lab)."""
    from sdstudio.lab.routes import router

    return [router]


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from sdstudio.api.app import create_app

    settings = build_settings(args)
    app = create_app(settings, routers=_extra_routers())
    shown = "127.0.0.1" if settings.host == "0.0.0.0" else settings.host
    print(f"sdstudio: web UI and API on http://{shown}:{settings.port}/  (A1111 API under /sdapi/v1)")
    studio = app.state.studio
    if settings.workers == "ray":
        names = ", ".join(w.name for w in studio.workers)
        print(f"sdstudio: {len(studio.workers)} Ray model worker(s): {names}")
    if studio.recovered:
        print(f"sdstudio: {len(studio.recovered)} job(s) queued before the last stop are queued again")
    if not studio.sole_server:
        print(f"sdstudio: another server uses {settings.outdir}; its queued and running jobs stay its own")
    from sdstudio.api.connections import ConnectionLimits, uvicorn_options
    from sdstudio.cli.access_log import log_config

    limits = ConnectionLimits(
        max_connections=getattr(args, "max_connections", 0),
        max_per_client=getattr(args, "max_connections_per_client", 64),
    )
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level="info", log_config=log_config(),
        access_log=not args.quiet_access_log, **uvicorn_options(limits),
    )  # fmt: skip
    return 0
