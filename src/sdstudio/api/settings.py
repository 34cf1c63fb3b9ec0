"""Server settings: one frozen dataclass built by ``sdstudio serve`` (or a test) and passed in."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sdstudio.config import Limits


@dataclass(frozen=True)
class ServerSettings:
    """Everything ``create_app`` needs; no globals, no argv."""

    outdir: Path = Path("outputs")
    models_dir: Path | None = Path("models")
    model: str | None = None  # checkpoint path; None = the embedded default (folder files only when selected)
    db_path: Path | None = None  # default: <outdir>/history.sqlite3
    host: str = "127.0.0.1"
    port: int = 7860
    api_auth: tuple[tuple[str, str], ...] = ()  # ((user, password), ...); empty = no auth
    # Host names served besides loopback names, IP literals and ``host`` (DNS-rebinding check)
    allowed_hosts: tuple[str, ...] = ()
    max_queue: int = 100  # queued (not yet running) jobs; more -> 429 with Retry-After
    max_queue_per_client: int | None = None  # queued jobs of one address (+ auth user); None: no cap
    device: str = "cpu"
    precision: str = "auto"
    backend: str | None = None  # what runs the UNet: "auto", "torch", "openvino"; None: config.default_backend()
    tiny_vae: Path | None = None  # TAESD folder --fast decodes with, for models without their own taesd/
    limits: Limits = field(default_factory=Limits)
    max_body_bytes: int = 64 * 1024 * 1024  # whole request body
    preview_interval: float = 0.5  # seconds between live previews
    save_format: str = "png"
    history_page_max: int = 200
    sync_timeout: float = 3600.0  # how long /sdapi/v1/txt2img waits for its job
    workers: str = "local"  # "local": in-process model; "ray": Ray actors (sdstudio.runtime.ray_workers)
    ray_address: str | None = None  # None: start a local Ray cluster; "auto" or HOST:PORT: join one
    ray_workers: int = 0  # 0: one per GPU in the cluster, else one per CPU slot (see ray_workers)

    @property
    def history_db(self) -> Path:
        return Path(self.db_path) if self.db_path else Path(self.outdir) / "history.sqlite3"


def parse_api_auth(text: str) -> tuple[tuple[str, str], ...]:
    """``user:pass[,user2:pass2]`` (A1111 --api-auth syntax) -> ((user, pass), ...)."""
    from sdstudio.errors import SDStudioError

    pairs = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        user, sep, password = item.partition(":")
        if not sep or not user or not password:
            raise SDStudioError("--api-auth must look like user:password[,user2:password2]", field="api_auth")
        pairs.append((user, password))
    return tuple(pairs)
