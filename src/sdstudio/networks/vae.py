"""VAE swap on a loaded model (A1111 ``modules/sd_vae.py``), without reloading the checkpoint.

Choices, as A1111's ``sd_vae`` option: ``"Automatic"`` uses a VAE named after the checkpoint
(``<stem>.vae.safetensors|.pt|.ckpt`` beside it, else a file in ``models/VAE/`` whose name starts
with the checkpoint's stem, A1111 ``find_vae_near_checkpoint``), or the checkpoint's own VAE;
``"None"`` always uses the checkpoint's own; any other value names a file of ``models/VAE/`` or is a
path (file or diffusers folder). The server takes only names and paths inside ``models/VAE/``
(``any_path=False``: a request must not probe or load files elsewhere on the server); the CLI takes
any path. Either way the path must be a VAE: a weights file (.safetensors, .ckpt, .pt, .pth, .sft)
or a diffusers folder with a ``config.json``. The checkpoint's own VAE module is kept while another
is in use, so switching back costs nothing. Infotext ``VAE`` is the file's stem, ``VAE hash``
sha256[:10].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdstudio.errors import SDStudioError
from sdstudio.networks.library import VAE_SUFFIXES, NetworkLibrary

AUTOMATIC, NONE = "Automatic", "None"
NEAR_SUFFIXES = (".vae.safetensors", ".vae.pt", ".vae.ckpt")


@dataclass
class CheckpointVae:
    """The checkpoint's own VAE, kept aside while another one is in use."""

    module: Any
    name: str
    hash: str


def resolve_vae(
    choice: str | None, checkpoint: str | None, library: NetworkLibrary | None, *, any_path: bool = False
) -> Path | None:
    """The VAE file or folder ``choice`` means for the checkpoint at ``checkpoint`` (None: its own).

    A path outside ``models/VAE/`` is taken only with ``any_path`` (the CLI); a path that is not a
    VAE (a README, an arbitrary folder) never is. Refusals give the same message as a missing
    name, so the answer tells nothing about the server's other files.
    """
    choice = (choice or AUTOMATIC).strip()
    if choice == NONE:
        return None
    if choice == AUTOMATIC:
        return near_checkpoint(checkpoint, library)
    if library is not None:
        for f in library.files("vae"):
            if choice in (f.name, Path(f.name).name, Path(f.name).stem, f.path):
                return Path(f.path)
    p = Path(choice).expanduser()
    if _is_vae(p) and (any_path or _inside(p, library.dirs["vae"] if library is not None else None)):
        return p
    near = near_checkpoint(checkpoint, library)
    if near is not None and choice in (near.name, near.name.rsplit(".", 1)[0]):  # an infotext's "VAE"
        return near
    known = ", ".join(f.name for f in library.files("vae")) if library is not None else ""
    raise SDStudioError(
        f"sd_vae: VAE {choice!r} not found (choose Automatic, None, a file of models/VAE: {known or 'none'}, or a path)",
        field="sd_vae",
    )


def _is_vae(p: Path) -> bool:
    """A VAE weights file, or a diffusers VAE folder (``config.json``, or ``vae/config.json``)."""
    if p.is_file():
        return p.name.lower().endswith(VAE_SUFFIXES)
    return p.is_dir() and ((p / "config.json").is_file() or (p / "vae" / "config.json").is_file())


def _inside(p: Path, root: Path | None) -> bool:
    return root is not None and p.resolve().is_relative_to(root.resolve())


def near_checkpoint(checkpoint: str | None, library: NetworkLibrary | None) -> Path | None:
    """A1111 "Automatic": ``<stem>.vae.*`` beside the checkpoint, else a models/VAE file starting with the stem."""
    if not checkpoint or Path(checkpoint).is_dir():
        return None
    ckpt = Path(checkpoint)
    stem = ckpt.name.rsplit(".", 1)[0]
    for suffix in NEAR_SUFFIXES:
        if (ckpt.parent / (stem + suffix)).is_file():
            return ckpt.parent / (stem + suffix)
    for f in library.files("vae") if library is not None else []:
        if Path(f.path).name.startswith(stem):
            return Path(f.path)
    return None


def use_vae(model, vae: Path | None, cache_file: str | Path | None = None) -> None:
    """Make ``vae`` (None: the checkpoint's own) the model's VAE, placed like the model; a no-op when it
    already is. A file that fails to load leaves the model unchanged (SDStudioError)."""
    from sdstudio.models.loader import _replace_vae, own_tensors

    wanted = str(Path(vae).resolve()) if vae is not None else ""
    if wanted == (model.vae_file or ""):
        return
    own = model.checkpoint_vae or CheckpointVae(model.vae, model.vae_name, model.vae_hash)
    if vae is None:
        model.vae, model.vae_name, model.vae_hash = own.module, own.name, own.hash
        model.checkpoint_vae, model.vae_file = None, ""
        return
    cache = Path(cache_file) if cache_file else _default_cache()
    _replace_vae(model, Path(vae), cache)
    own_tensors(model.vae, model.device, model.dtype).eval().requires_grad_(False)
    model.checkpoint_vae, model.vae_file = own, wanted


def _default_cache() -> Path:
    from sdstudio.checkpoints.hashing import default_cache_dir

    return default_cache_dir() / "hashes.json"
