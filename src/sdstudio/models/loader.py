"""Load a :class:`StableDiffusionModel` from a diffusers folder or a single-file checkpoint, offline.

read -> build -> place -> attach a backend: the family registry (``sdstudio.families``) says which
family reads the path and builds its modules (detection, key maps, shipped configs); this module
hashes the file, places the weights (``own_tensors``), attaches the tiny VAE and picks the backend.

Model hash (A1111 "Model hash", sha256[:10], cached per file): the file itself for single files;
for diffusers folders the UNet weights file (``unet/diffusion_pytorch_model.safetensors``), since a
folder has no single file and the UNet is what tells fine-tunes apart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import torch

from sdstudio.backends.idle_weights import IdleWeights
from sdstudio.backends.openvino import (
    assign_weights,
    auto_backend_reason,
    cached_unet_fingerprint,
    has_meta_weights,
    openvino_available,
    remember_unet_source,
    restore_torch_decoder,
    unet_source_key,
    use_openvino,
)
from sdstudio.checkpoints.hashing import default_cache_dir, diffusers_weights_file, model_hash, sha256_cached
from sdstudio.checkpoints.io import SAFETENSORS_SUFFIXES, check_model_path
from sdstudio.config import BACKENDS, default_backend
from sdstudio.devices import resolve_device, resolve_dtype
from sdstudio.errors import SDStudioError
from sdstudio.families import loader_for
from sdstudio.families.base import LoadOptions, ModelInfo, ModelParts
from sdstudio.families.sd.keymap import StateDict
from sdstudio.families.sd.load import read_vae
from sdstudio.models.sdmodel import StableDiffusionModel
from sdstudio.models.tiny_vae import TINY_VAE_FOLDER, check_tiny_vae, load_tiny_vae

log = logging.getLogger(__name__)
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "assets" / "default-model"
# Text encoders this large are freed between jobs on OpenVINO (backends.idle_weights): SD 1.5's hold
# 0.23 GiB and read back in ~0.2 s; a small one (the embedded model's) costs more to re-read than it saves.
IDLE_TEXT_BYTES = 64 * 2**20


def load_model(
    path: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    precision: str = "auto",
    prediction_type: str | None = None,
    vae_path: str | Path | None = None,
    cache_dir: str | Path | None = None,
    backend: str | None = None,
    tiny_vae_path: str | Path | None = None,
    default_tiny_vae_path: str | Path | None = None,
) -> StableDiffusionModel:
    """Return a ready (eval, no-grad) model from ``path``: a diffusers folder or single-file checkpoint.

    ``path=None`` loads the embedded default model. ``dtype`` overrides ``precision`` ("auto" = bf16
    on a bf16 CPU, fp16 on CUDA, else fp32). ``prediction_type`` ("epsilon" | "v_prediction")
    overrides detection. ``vae_path`` replaces the VAE. ``cache_dir`` holds ``hashes.json``
    (default ``$SDSTUDIO_CACHE_DIR`` or ``~/.cache/sdstudio``) and the OpenVINO conversions.
    ``backend`` "openvino" also compiles the UNet and the VAE decoder with OpenVINO
    (:mod:`sdstudio.backends.openvino`; converted once per checkpoint, then cached); "torch" runs
    PyTorch only; "auto" (default) is openvino where :func:`auto_backend_reason` finds nothing against
    it (CPU, package installed, a convertible UNet, enough memory) and torch otherwise; ``model.backend``
    says which. None is :func:`sdstudio.config.default_backend` ("auto", or ``$SDSTUDIO_BACKEND``). ``tiny_vae_path``
    is a tiny VAE (TAESD, diffusers ``AutoencoderTiny`` folder) for fast mode; without it a model
    folder's own ``taesd/`` subfolder is used when there is one (``model.tiny_vae``, else None), else
    ``default_tiny_vae_path`` (a server's ``--tiny-vae``: skipped with a warning where it does not
    decode this model's latents, as it is meant for every model of a family).
    """
    backend = backend or default_backend()
    if backend not in BACKENDS:
        raise SDStudioError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}", field="backend")
    target_device = resolve_device(device)
    target_dtype = dtype or resolve_dtype(precision, target_device)
    p = check_model_path(default_model_path() if path is None else path)
    cache_file = Path(cache_dir if cache_dir is not None else default_cache_dir()) / "hashes.json"
    hash_file = _weights_file(p)
    source = _unet_source(backend, target_device, target_dtype, hash_file, cache_file)
    graph = cached_unet_fingerprint(cache_file.parent, source) if source else None
    try:
        model = read_model(p, LoadOptions(prediction_type, target_dtype, lazy_unet=graph is not None))
    except SDStudioError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError, OSError) as exc:
        # a file that reads but whose contents are not a model (odd keys, shapes or dtypes)
        raise SDStudioError(
            f"{p} is not a valid checkpoint: {type(exc).__name__}: {str(exc).strip()[:300]}", field="model"
        ) from exc
    model.model_hash = model_hash(hash_file, cache_file) if hash_file else ""
    if vae_path is not None:
        _replace_vae(model, Path(vae_path), cache_file)
    own_tiny = tiny_vae_path if tiny_vae_path is not None else _folder_tiny_vae(p)
    attach_tiny_vae(model, own_tiny)
    if own_tiny is None and default_tiny_vae_path is not None:
        try:
            attach_tiny_vae(model, default_tiny_vae_path)
        except SDStudioError as exc:
            log.warning("%s: --fast decodes %s with its full VAE", exc, p.name)
    model = _place(model, target_device, target_dtype).eval()
    reload = component_reloader(p, prediction_type, model, "unet")
    compile_kwargs = {
        "reload_unet": reload,
        "unet_fingerprint": graph,
        # the VAE decoder's weights are freed too, unless the VAE came from another file or a pickle
        "reload_vae": component_reloader(p, prediction_type, model, "vae")
        if vae_path is None and _reads_in_part(p)
        else None,
    }
    if backend == "openvino" and target_device.type != "cpu":
        raise SDStudioError("--backend openvino runs on the CPU; use --device cpu", field="backend")
    if backend == "openvino" and "openvino" not in model.family.speed_techniques:
        raise SDStudioError(
            f"--backend openvino does not run {model.family.name} models; use torch", field="backend"
        )
    openvino = "openvino" in model.family.speed_techniques and (
        backend == "openvino" or (backend == "auto" and auto_backend_reason(model) is None)
    )
    idle = _idle_text_encoders(p, prediction_type, model) if openvino else None
    if idle is not None and graph is None:  # converting the UNet is a first load's memory peak:
        idle.release()  # the text encoders wait on disk until the first prompt
    if backend == "openvino":
        use_openvino(model, cache_file.parent, **compile_kwargs)
    elif openvino:
        try:
            use_openvino(model, cache_file.parent, **compile_kwargs)
        except Exception as exc:  # noqa: BLE001 - an unexpected graph: PyTorch runs it as before
            log.warning(
                "OpenVINO could not convert %s (%s: %s); running on PyTorch", p, type(exc).__name__, exc
            )
            restore_torch_decoder(model)
            model.compiled_unet = model.compiled_decoder = model.compiled_tiny_decoder = None
    if model.compiled_unet is None and has_meta_weights(model.unet):  # not read, and PyTorch runs it
        assign_weights(model.unet, reload())
    if model.compiled_unet is not None:
        model.idle_text_encoders = idle
    elif idle is not None:
        idle.restore()
    if model.compiled_unet is not None and graph is None and source:
        remember_unet_source(cache_file.parent, source, model.compiled_unet.graph.fingerprint)
    model.backend = "openvino" if model.compiled_unet is not None else "torch"
    return model


def _weights_file(p: Path) -> Path | None:
    """The file the A1111 model hash is taken from: a single file itself; a folder's denoiser weights
    (``unet/``, or ``transformer/`` for DiT families), since that is what tells fine-tunes apart."""
    if not p.is_dir():
        return p
    return diffusers_weights_file(p, "unet") or diffusers_weights_file(p, "transformer")


def read_model(path: Path, options: LoadOptions) -> StableDiffusionModel:
    """Read and build the model at ``path`` with the family that claims it (not yet placed)."""
    return _as_model(loader_for(path).load(path, options))


def _as_model(parts: ModelParts) -> StableDiffusionModel:
    return StableDiffusionModel(**{f.name: getattr(parts, f.name) for f in fields(parts)})


def _unet_source(
    backend: str, device: torch.device, dtype: torch.dtype, weights: Path | None, cache_file: Path
) -> str | None:
    """The key under which the UNet's OpenVINO graph is recorded (None where OpenVINO cannot run).

    The SHA-256 of the UNet's weights file (the whole single file; a folder's ``unet/`` weights),
    cached in ``hashes.json`` like the model hash, which needs it anyway.
    """
    if backend == "torch" or device.type != "cpu" or weights is None or not openvino_available():
        return None
    return unet_source_key(sha256_cached(weights, cache_file), dtype)


def component_reloader(
    p: Path, prediction_type: str | None, model: StableDiffusionModel, component: str
) -> Callable[[], StateDict]:
    """A function that reads one component's weights (``component``: "unet" or "vae") from ``p``
    again, placed like ``model``'s (for OpenVINO, which frees PyTorch weights while its compiled
    graphs run). From a single file it reads only that component's tensors."""
    device, dtype = model.device, model.dtype

    def reload() -> StateDict:
        module = getattr(
            loader_for(p).load(p, LoadOptions(prediction_type, dtype, only=component)), component
        )
        return own_tensors(module, device, dtype).state_dict()

    return reload


def _idle_text_encoders(
    p: Path, prediction_type: str | None, model: StableDiffusionModel
) -> IdleWeights | None:
    """The text encoders as :class:`IdleWeights` (freed between jobs), or None below ``IDLE_TEXT_BYTES``
    or where they cannot be read back alone (a pickle is unpickled whole: every job would)."""
    if _weights_bytes(model.text_encoders) < IDLE_TEXT_BYTES or not _reads_in_part(p):
        return None
    return IdleWeights(model.text_encoders, text_encoders_reloader(p, prediction_type, model), "text encoder")


def text_encoders_reloader(
    p: Path, prediction_type: str | None, model: StableDiffusionModel
) -> Callable[[], list[StateDict]]:
    """A function that reads the text encoders' weights from ``p`` again (one state dict each, placed
    like ``model``'s), for :class:`~sdstudio.backends.idle_weights.IdleWeights`."""
    device, dtype = model.device, model.dtype

    def reload() -> list[StateDict]:
        encoders = loader_for(p).load(p, LoadOptions(prediction_type, dtype, only="text")).text_encoders
        return [own_tensors(encoder, device, dtype).state_dict() for encoder in encoders]

    return reload


def _reads_in_part(p: Path) -> bool:
    """True where one component's weights can be read without the rest (a diffusers folder, a
    safetensors file); a pickled ``.ckpt`` is read whole."""
    return p.is_dir() or p.suffix.lower() in SAFETENSORS_SUFFIXES


def _weights_bytes(modules: list[torch.nn.Module]) -> int:
    return sum(p.numel() * p.element_size() for module in modules for p in module.parameters())


def _folder_tiny_vae(p: Path) -> Path | None:
    """A model folder's own tiny VAE (``taesd/``), if it has one."""
    folder = p / TINY_VAE_FOLDER
    return folder if p.is_dir() and (folder / "config.json").is_file() else None


def attach_tiny_vae(model: StableDiffusionModel, path: str | Path | None) -> StableDiffusionModel:
    """Load the tiny VAE at ``path`` into ``model.tiny_vae`` (None: leave it), on the model's device and
    dtype; SDStudioError if it does not decode this model's latents."""
    if path is None:
        return model
    tiny = load_tiny_vae(path)
    check_tiny_vae(tiny, model.latent_channels, model.vae_scale_factor, f"tiny VAE {path}")
    model.tiny_vae = own_tensors(tiny, model.device, model.dtype)
    return model


def _place(model: StableDiffusionModel, device: torch.device, dtype: torch.dtype) -> StableDiffusionModel:
    """Give every module tensors of its own on ``device``/``dtype``, contiguous and 64-byte aligned.

    Tensors read from a file (safetensors offsets, converter slices) may start at any byte; oneDNN
    picks other kernels for misaligned data, so the same weights gave outputs differing by ~1e-6
    from an in-memory model on some CPUs (AMD EPYC). A fresh allocation is aligned like any other
    torch tensor, so a loaded model computes exactly as one built in memory; it is also the one
    conversion to the target dtype (no intermediate copy).
    """
    for module in model.torch_modules:
        own_tensors(module, device, dtype)
    model.device, model.dtype = device, dtype
    return model


ALIGNMENT = 64  # bytes; torch's CPU allocator aligns every allocation to 64


def own_tensors(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Replace each parameter/buffer that is misplaced, misaligned or a view by a fresh aligned copy.

    Floating tensors go to ``dtype``; others keep theirs. Shared tensors stay shared.
    """
    fresh: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(old) -> (old kept alive, new)
    for sub in module.modules():
        for store in (sub._parameters, sub._buffers):
            for name, t in store.items():
                if t is None:
                    continue
                want = dtype if t.is_floating_point() else t.dtype
                if t.is_meta:  # weights not read (backends.openvino runs a cached graph)
                    continue
                if id(t) in fresh:
                    store[name] = fresh[id(t)][1]
                    continue
                if t.device == device and t.dtype == want and _is_owned(t):
                    continue
                data = torch.empty(t.shape, dtype=want, device=device).copy_(t.detach())
                new = (
                    torch.nn.Parameter(data, requires_grad=t.requires_grad)
                    if store is sub._parameters
                    else data
                )
                fresh[id(t)] = (t, new)
                store[name] = new
    return module


def _is_owned(t: torch.Tensor) -> bool:
    """Contiguous, starting its own storage, aligned (what a fresh allocation gives)."""
    return (
        t.is_contiguous()
        and t.storage_offset() == 0
        and (t.device.type != "cpu" or t.data_ptr() % ALIGNMENT == 0)
    )


def inspect_model(path: str | Path, *, prediction_type: str | None = None) -> ModelInfo:
    """Return a :class:`ModelInfo` for a diffusers folder or single file without loading the weights
    (pickles are read weights-only, which loads them; safetensors only read the header)."""
    p = check_model_path(path)
    return loader_for(p).inspect(p, prediction_type)


def default_model_path() -> Path:
    """Return the embedded default model folder, or raise SDStudioError while none is shipped."""
    if not (DEFAULT_MODEL_DIR / "model_index.json").is_file():
        raise SDStudioError("no default model shipped yet; pass --model PATH", field="model")
    return DEFAULT_MODEL_DIR


# ----------------------------------------------------------------------------- diffusers folders


# ----------------------------------------------------------------------------- single files


# ----------------------------------------------------------------------------- separate VAE


def _replace_vae(model: StableDiffusionModel, vae_path: Path, cache_file: Path) -> None:
    """Load a VAE (diffusers folder, or a single file in LDM or diffusers layout) into ``model``."""
    if not vae_path.exists():
        raise SDStudioError(f"VAE not found: {vae_path}", field="vae")
    vae = read_vae(vae_path, dict(model.vae.config))
    if vae_path.is_dir():
        sub = "vae" if (vae_path / "vae" / "config.json").is_file() else "."
        hash_file = diffusers_weights_file(vae_path, sub)
    else:
        hash_file = vae_path
    model.replace_vae(
        vae,
        vae_path.stem if vae_path.is_file() else vae_path.name,
        model_hash(hash_file, cache_file) if hash_file else "",
    )
