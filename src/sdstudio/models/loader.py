"""Load a :class:`StableDiffusionModel` from a diffusers folder or a single-file checkpoint, offline.

* diffusers folder (``model_index.json``): components via ``from_pretrained(local_files_only=True)``;
  tokenizers from the folder when present, else the shipped CLIP tokenizer.
* single file (.safetensors, or .ckpt/.pt/.pth/.bin read weights-only): architecture detected from
  keys and shapes, converted in memory with diffusers' converters, modules built empty from the
  shipped config of that architecture (or the configs our converter embeds in the file's metadata)
  and filled with ``load_state_dict(strict, assign)``; any missing, unexpected or mis-shaped key is
  an SDStudioError naming them.

Model hash (A1111 "Model hash", sha256[:10], cached per file): the file itself for single files;
for diffusers folders the UNet weights file (``unet/diffusion_pytorch_model.safetensors``), since a
folder has no single file and the UNet is what tells fine-tunes apart.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdstudio.checkpoints.convert import (
    StateDict,
    canonical_text_keys,
    diffusers_to_original,
    fit_text_keys,
    normalize_original_keys,
    original_to_diffusers,
)
from sdstudio.checkpoints.detect import detect_architecture, normalize_prediction_type
from sdstudio.checkpoints.hashing import default_cache_dir, diffusers_weights_file, model_hash, sha256_cached
from sdstudio.checkpoints.io import (
    SAFETENSORS_SUFFIXES,
    check_model_path,
    metadata_json,
    read_checkpoint,
    write_safetensors,
)
from sdstudio.config import BACKENDS, default_backend
from sdstudio.devices import resolve_device, resolve_dtype
from sdstudio.errors import SDStudioError
from sdstudio.models.architectures import (
    ARCHITECTURES,
    FAMILIES,
    UNET_PREFIX,
    VAE_PREFIX,
    Architecture,
    architecture_for,
    component_config,
    read_json,
)
from sdstudio.models.idle_weights import IdleWeights
from sdstudio.models.openvino_backend import (
    assign_weights,
    auto_backend_reason,
    cached_unet_fingerprint,
    has_meta_weights,
    openvino_available,
    remember_unet_source,
    restore_torch_decoder,
    restore_torch_unet,
    unet_source_key,
    use_openvino,
)
from sdstudio.models.sdmodel import StableDiffusionModel
from sdstudio.models.tiny_vae import TINY_VAE_FOLDER, check_tiny_vae, load_tiny_vae, save_tiny_vae
from sdstudio.models.tokenizer import clip_tokenizer

log = logging.getLogger(__name__)
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "assets" / "default-model"
CONFIG_METADATA_PREFIX = "sdstudio.config."  # + component name: JSON config embedded by our converter
TEXT_PREFIXES = ("cond_stage_model.", "conditioner.")  # SD 1/2 and SDXL text encoders
_SKIP_ALL_BUT = {  # the key prefixes not read when reading only one component
    "unet": (VAE_PREFIX, *TEXT_PREFIXES),
    "vae": (UNET_PREFIX, *TEXT_PREFIXES),
    "text": (UNET_PREFIX, VAE_PREFIX),
}
# Text encoders this large are freed between jobs on OpenVINO (models.idle_weights): SD 1.5's hold
# 0.23 GiB and read back in ~0.2 s; a small one (the embedded model's) costs more to re-read than it saves.
IDLE_TEXT_BYTES = 64 * 2**20
ARCH_INDEX_KEY = "_sdstudio_arch"  # written into model_index.json by save_diffusers


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
    (:mod:`sdstudio.models.openvino_backend`; converted once per checkpoint, then cached); "torch" runs
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
    hash_file = diffusers_weights_file(p, "unet") if p.is_dir() else p
    source = _unet_source(backend, target_device, target_dtype, hash_file, cache_file)
    graph = cached_unet_fingerprint(cache_file.parent, source) if source else None
    try:
        if p.is_dir():
            model = _load_diffusers_folder(p, prediction_type, lazy_unet=graph is not None)
        else:
            model = _load_single_file(p, prediction_type, target_dtype, lazy_unet=graph is not None)
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
    openvino = backend == "openvino" or (backend == "auto" and auto_backend_reason(model) is None)
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
        if p.is_dir():
            from diffusers import AutoencoderKL, UNet2DConditionModel

            cls = UNet2DConditionModel if component == "unet" else AutoencoderKL
            module = _from_pretrained(cls, p, component)
        else:
            module = getattr(_load_single_file(p, prediction_type, dtype, only=component), component)
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
    like ``model``'s), for :class:`~sdstudio.models.idle_weights.IdleWeights`."""
    device, dtype = model.device, model.dtype
    specs = model_architecture(model).text_encoders

    def reload() -> list[StateDict]:
        if p.is_dir():
            encoders = [_from_pretrained(_text_class(spec.class_name), p, spec.subfolder) for spec in specs]
        else:
            encoders = _load_single_file(p, prediction_type, dtype, only="text").text_encoders
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
                if t.is_meta:  # weights not read (models.openvino_backend runs a cached graph)
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


@dataclass(frozen=True)
class ModelInfo:
    """What a model file or folder is, read without building the model (safetensors: header only)."""

    path: str
    format: str  # "diffusers" | "safetensors" | "pickle"
    arch: str  # config folder name: "sd1", "sd1-inpaint", "sd2", "sd2-v", "sdxl", ...
    model_arch: str  # StableDiffusionModel.arch
    inpainting: bool
    prediction_type: str
    parameters: int  # UNet + VAE + text encoders (single files: every tensor in the file)
    dtypes: tuple[str, ...]


def inspect_model(path: str | Path, *, prediction_type: str | None = None) -> ModelInfo:
    """Return a :class:`ModelInfo` for a diffusers folder or single file without loading the weights
    (pickles are read weights-only, which loads them; safetensors only read the header)."""
    p = check_model_path(path)
    if p.is_dir():
        index = read_json(p / "model_index.json")
        arch = _folder_architecture(p, index, read_json(p / "unet" / "config.json"), prediction_type)
        params, dtypes = _folder_tensor_stats(p)
        fmt = "diffusers"
    else:
        shapes, metadata, global_step = _header(p)
        arch = detect_architecture(
            shapes, prediction_type=prediction_type, metadata=metadata, global_step=global_step
        )
        params = sum(math.prod(s.shape) for s in shapes.values())
        dtypes = tuple(sorted({s.dtype for s in shapes.values()}))
        fmt = "safetensors" if p.suffix.lower() == ".safetensors" else "pickle"
    return ModelInfo(
        str(p), fmt, arch.name, arch.model_arch, arch.inpainting, arch.prediction_type, params, dtypes
    )


_SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def _st_dtype(name: str) -> str:
    """Return the torch name ("float16") of a safetensors dtype tag ("F16")."""
    return _SAFETENSORS_DTYPES.get(str(name).upper(), str(name).lower())


@dataclass(frozen=True)
class _TensorHeader:
    shape: tuple[int, ...]
    dtype: str


def _header(path: Path) -> tuple[dict[str, Any], dict[str, str], int | None]:
    """Return ({key: shape/dtype}, metadata, global_step) of a single file; safetensors read lazily."""
    if path.suffix.lower() != ".safetensors":
        ckpt = read_checkpoint(path)
        sd = normalize_original_keys(ckpt.state_dict)
        heads = {k: _TensorHeader(tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in sd.items()}
        return heads, ckpt.metadata, ckpt.global_step
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            heads = {}
            for key in f.keys():  # noqa: SIM118 (safe_open is no dict)
                view = f.get_slice(key)
                heads[key] = _TensorHeader(tuple(view.get_shape()), _st_dtype(view.get_dtype()))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise SDStudioError(
            f"{path} is not a valid checkpoint: not a valid safetensors file (truncated or corrupt: {exc})",
            field="model",
        ) from exc
    return normalize_original_keys(heads), metadata, None


def _folder_tensor_stats(folder: Path) -> tuple[int, tuple[str, ...]]:
    """Return (parameter count, dtypes) over a diffusers folder's safetensors weights (headers only)."""
    from safetensors import safe_open

    total, dtypes = 0, set()
    for f in sorted(folder.glob("*/*.safetensors")):
        with safe_open(str(f), framework="pt", device="cpu") as st:
            for key in st.keys():  # noqa: SIM118
                view = st.get_slice(key)
                total += math.prod(view.get_shape())
                dtypes.add(_st_dtype(view.get_dtype()))
    return total, tuple(sorted(dtypes))


def default_model_path() -> Path:
    """Return the embedded default model folder, or raise SDStudioError while none is shipped."""
    if not (DEFAULT_MODEL_DIR / "model_index.json").is_file():
        raise SDStudioError("no default model shipped yet; pass --model PATH", field="model")
    return DEFAULT_MODEL_DIR


# ----------------------------------------------------------------------------- diffusers folders


def _load_diffusers_folder(
    folder: Path, prediction_type: str | None, lazy_unet: bool = False
) -> StableDiffusionModel:
    """Build the model from a diffusers folder; ``lazy_unet`` leaves the UNet's weights unread (``meta``)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    index = read_json(folder / "model_index.json")
    for sub in ("unet", "vae", "text_encoder"):
        if not (folder / sub / "config.json").is_file():
            raise SDStudioError(f"diffusers folder {folder} has no {sub}/config.json", field="model")
    if lazy_unet:
        config = read_json(folder / "unet" / "config.json")
        unet = _build_module(_unet_factory(config), None, "UNet", folder)
    else:
        unet = _from_pretrained(UNet2DConditionModel, folder, "unet")
    vae = _from_pretrained(AutoencoderKL, folder, "vae")
    arch = _folder_architecture(folder, index, dict(unet.config), prediction_type)
    text_encoders, tokenizers = [], []
    for spec in arch.text_encoders:
        text_encoders.append(_from_pretrained(_text_class(spec.class_name), folder, spec.subfolder))
        tokenizers.append(_folder_tokenizer(folder / spec.tokenizer_subfolder, spec.pad_token))
    sched_file = folder / "scheduler" / "scheduler_config.json"
    scheduler = read_json(sched_file) if sched_file.is_file() else component_config(arch, "scheduler")
    return StableDiffusionModel(
        name=folder.name,
        arch=arch.model_arch,
        unet=unet,
        vae=vae,
        text_encoders=text_encoders,
        tokenizers=tokenizers,
        scheduler_config=_scheduler_config(scheduler, arch.prediction_type),
        path=str(folder),
    )


def _folder_architecture(
    folder: Path, index: dict[str, Any], unet_config: dict[str, Any], prediction_type: str | None
) -> Architecture:
    """Return a diffusers folder's architecture: recorded by save_diffusers, else inferred from its configs."""
    recorded = index.get(ARCH_INDEX_KEY)
    if recorded in ARCHITECTURES:
        family = ARCHITECTURES[recorded].family.name
    elif "text_encoder_2" in index or unet_config.get("addition_embed_type") == "text_time":
        family = "sdxl"
    elif unet_config.get("cross_attention_dim") == 1024 or _tokenizer_pad(folder / "tokenizer") == "!":
        family = "sd2"  # OpenCLIP ViT-H context (1024-d), padded with "!"
    else:
        family = "sd1"
    sched_file = folder / "scheduler" / "scheduler_config.json"
    found = read_json(sched_file).get("prediction_type") if sched_file.is_file() else None
    prediction = normalize_prediction_type(prediction_type) or normalize_prediction_type(found) or "epsilon"
    inpainting = int(unet_config.get("in_channels", 4)) == 9
    return architecture_for(family, inpainting=inpainting, prediction_type=prediction)


def _tokenizer_pad(tok_dir: Path) -> str | None:
    """Return the pad token a diffusers tokenizer folder declares, or None."""
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if (tok_dir / name).is_file():
            pad = read_json(tok_dir / name).get("pad_token")
            return pad.get("content") if isinstance(pad, dict) else pad
    return None


def _from_pretrained(cls: Any, folder: Path, subfolder: str) -> Any:
    try:
        return cls.from_pretrained(str(folder), subfolder=subfolder, local_files_only=True)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise SDStudioError(
            f"cannot load {subfolder} from {folder}: {str(exc).splitlines()[0]}", field="model"
        ) from exc


def _text_class(name: str) -> Any:
    import transformers

    if name not in ("CLIPTextModel", "CLIPTextModelWithProjection"):
        raise SDStudioError(f"unsupported text encoder class {name}", field="model")
    return getattr(transformers, name)


def _folder_tokenizer(tok_dir: Path, pad_token: str) -> Any:
    has_bpe = (tok_dir / "vocab.json").is_file() and (tok_dir / "merges.txt").is_file()
    if has_bpe or (tok_dir / "tokenizer.json").is_file():
        from transformers import CLIPTokenizer

        return CLIPTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    return clip_tokenizer(pad_token=pad_token)


def _scheduler_config(config: dict[str, Any], prediction_type: str) -> dict[str, Any]:
    """Return the scheduler config without diffusers' bookkeeping keys, with the resolved prediction type."""
    clean = {k: v for k, v in config.items() if not k.startswith("_")}
    clean["prediction_type"] = prediction_type
    return clean


# ----------------------------------------------------------------------------- single files


def _load_single_file(
    path: Path,
    prediction_type: str | None,
    dtype: torch.dtype | None = None,
    lazy_unet: bool = False,
    only: str | None = None,
) -> StableDiffusionModel:
    """Build the model from one file; ``dtype`` converts each tensor as it is read (no full-size copy
    in the file's dtype beside the target one; ``_place`` then finds the tensors already owned).
    ``lazy_unet`` leaves the UNet's weights unread (``meta``; safetensors only); ``only`` ("unet", "vae"
    or "text") leaves every other component's unread instead (re-reading what was freed)."""
    skip = (UNET_PREFIX,) if lazy_unet else _SKIP_ALL_BUT.get(only, ())
    checkpoint = read_checkpoint(path, dtype, skip=skip)
    state_dict = normalize_original_keys(checkpoint.state_dict)
    arch = detect_architecture(
        state_dict,
        prediction_type=prediction_type,
        metadata=checkpoint.metadata,
        global_step=checkpoint.global_step,
    )
    configs = _component_configs(arch, checkpoint.metadata)
    components = original_to_diffusers(state_dict, arch, configs)
    del checkpoint, state_dict
    unet = _build_module(_unet_factory(configs["unet"]), components.pop("unet"), f"{arch.name} UNet", path)
    vae = _build_module(_vae_factory(configs["vae"]), components.pop("vae"), f"{arch.name} VAE", path)
    text_encoders = []
    for spec in arch.text_encoders:
        factory = _text_factory(spec.class_name, configs[spec.subfolder])
        text_encoders.append(
            _build_module(factory, components.pop(spec.subfolder), f"{arch.name} {spec.subfolder}", path)
        )
    return StableDiffusionModel(
        name=path.stem,
        arch=arch.model_arch,
        unet=unet,
        vae=vae,
        text_encoders=text_encoders,
        tokenizers=[clip_tokenizer(pad_token=spec.pad_token) for spec in arch.text_encoders],
        scheduler_config=_scheduler_config(configs["scheduler"], arch.prediction_type),
        path=str(path),
    )


def _component_configs(arch: Architecture, metadata: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Return component configs: those embedded by our converter, else the shipped ones for ``arch``."""
    names = ["unet", "vae", "scheduler", *(spec.subfolder for spec in arch.text_encoders)]
    return {
        name: metadata_json(metadata, CONFIG_METADATA_PREFIX + name) or component_config(arch, name)
        for name in names
    }


def _unet_factory(config: dict[str, Any]) -> Callable[[], Any]:
    from diffusers import UNet2DConditionModel

    return lambda: UNet2DConditionModel.from_config(config)


def _vae_factory(config: dict[str, Any]) -> Callable[[], Any]:
    from diffusers import AutoencoderKL

    return lambda: AutoencoderKL.from_config(config)


def _text_factory(class_name: str, config: dict[str, Any]) -> Callable[[], Any]:
    from transformers import CLIPTextConfig

    cls = _text_class(class_name)
    return lambda: cls(CLIPTextConfig.from_dict(config))


def _build_module(factory: Callable[[], Any], state_dict: StateDict | None, what: str, path: Path) -> Any:
    """Build a module with empty (meta) weights and assign ``state_dict`` strictly; SDStudioError on
    mismatch. ``state_dict=None`` leaves the module on ``meta``."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        module = factory()
    if state_dict is None:
        return module.eval()
    expected = module.state_dict()
    if "text_encoder" in what:
        state_dict = fit_text_keys(state_dict, expected.keys())
    problems = _state_dict_problems(expected, state_dict)
    if problems:
        raise SDStudioError(f"{path.name} does not match the {what} layout: {problems}", field="model")
    module.load_state_dict(state_dict, strict=True, assign=True)
    return module.eval()


def _state_dict_problems(expected: dict[str, torch.Tensor], given: StateDict, show: int = 4) -> str:
    """Return a one-line description of missing, unexpected and mis-shaped keys ("" if none)."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    mismatched = [
        f"{k} {tuple(given[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in given and tuple(given[k].shape) != tuple(expected[k].shape)
    ]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatches", mismatched)):
        if items:
            more = f", ... ({len(items)} in all)" if len(items) > show else ""
            parts.append(f"{len(items)} {label} ({', '.join(items[:show])}{more})")
    return "; ".join(parts)


# ----------------------------------------------------------------------------- separate VAE


def _replace_vae(model: StableDiffusionModel, vae_path: Path, cache_file: Path) -> None:
    """Load a VAE (diffusers folder, or a single file in LDM or diffusers layout) into ``model``."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    if not vae_path.exists():
        raise SDStudioError(f"VAE not found: {vae_path}", field="vae")
    if vae_path.is_dir():
        sub = "vae" if (vae_path / "vae" / "config.json").is_file() else ""
        vae = _from_pretrained(AutoencoderKL, vae_path, sub) if sub else _vae_folder(vae_path)
        hash_file = diffusers_weights_file(vae_path, sub or ".")
    else:
        config = dict(model.vae.config)
        state_dict = read_checkpoint(vae_path).state_dict
        if not any(k.startswith("encoder.down_blocks.") for k in state_dict):
            state_dict = convert_ldm_vae_checkpoint(state_dict, config)
        vae = _build_module(_vae_factory(config), state_dict, "model's VAE", vae_path)
        hash_file = vae_path
    model.replace_vae(
        vae,
        vae_path.stem if vae_path.is_file() else vae_path.name,
        model_hash(hash_file, cache_file) if hash_file else "",
    )


def _vae_folder(folder: Path) -> Any:
    from diffusers import AutoencoderKL

    try:
        return AutoencoderKL.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise SDStudioError(
            f"cannot load a VAE from {folder}: {str(exc).splitlines()[0]}", field="vae"
        ) from exc


# ----------------------------------------------------------------------------- saving


def model_architecture(model: StableDiffusionModel) -> Architecture:
    """Return the :class:`Architecture` of an in-memory model (family from ``model.arch``)."""
    family = "sd2" if model.arch.startswith("sd2") else model.arch
    if family not in FAMILIES:
        raise SDStudioError(f"unknown model architecture {model.arch!r}", field="model")
    return architecture_for(family, inpainting=model.is_inpainting, prediction_type=model.prediction_type)


def _module_config(module: Any) -> dict[str, Any]:
    """Return a module's config as a plain dict without load-time bookkeeping (paths, defaults used)."""
    config = module.config.to_dict() if hasattr(module.config, "to_dict") else dict(module.config)
    return {k: v for k, v in config.items() if k not in ("_use_default_values", "_name_or_path")}


def _scheduler_file_config(model: StableDiffusionModel, arch: Architecture) -> dict[str, Any]:
    shipped = component_config(arch, "scheduler")
    return {"_class_name": shipped["_class_name"], **model.scheduler_config}


def model_components(
    model: StableDiffusionModel,
) -> tuple[Architecture, dict[str, StateDict], dict[str, dict]]:
    """Return (architecture, diffusers component state dicts, component configs) of a model."""
    arch = model_architecture(model)
    restore_torch_unet(model)  # OpenVINO may have freed the PyTorch UNet's weights
    restore_torch_decoder(model)  # and the VAE decoder's
    if model.idle_text_encoders is not None:
        model.idle_text_encoders.restore()  # and, between jobs, the text encoders'
    components = {"unet": model.unet.state_dict(), "vae": model.vae.state_dict()}
    configs = {"unet": _module_config(model.unet), "vae": _module_config(model.vae)}
    for spec, encoder in zip(arch.text_encoders, model.text_encoders, strict=True):
        components[spec.subfolder] = canonical_text_keys(encoder.state_dict())
        configs[spec.subfolder] = _module_config(encoder)
    configs["scheduler"] = _scheduler_file_config(model, arch)
    return arch, components, configs


def save_single_file(model: StableDiffusionModel, path: str | Path, *, half: bool = False) -> Path:
    """Write ``model`` as one original-layout (A1111/CompVis) .safetensors file; return its path.

    The component configs and prediction type go into the file's metadata
    (``sdstudio.config.<component>``, ``sdstudio.prediction_type``), so non-standard sizes load
    back exactly; other tools ignore them. ``half`` stores floating tensors as fp16.
    """
    p = Path(path)
    if p.suffix.lower() != ".safetensors":
        raise SDStudioError(f"single-file output must end in .safetensors, got {p.name}", field="dst")
    arch, components, configs = model_components(model)
    state_dict = diffusers_to_original(components, arch, configs)
    if half:
        state_dict = {k: v.half() if v.is_floating_point() else v for k, v in state_dict.items()}
    metadata = {"sdstudio.arch": arch.name, "sdstudio.prediction_type": arch.prediction_type}
    for name, config in configs.items():
        metadata[CONFIG_METADATA_PREFIX + name] = json.dumps(config, sort_keys=True, default=list)
    return write_safetensors(state_dict, p, metadata)


def save_diffusers(model: StableDiffusionModel, folder: str | Path, *, half: bool = False) -> Path:
    """Write ``model`` as a diffusers folder (safetensors weights, configs, tokenizers, ``taesd/`` if it
    has a tiny VAE); return it."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    arch, _, configs = model_components(model)  # also reloads weights OpenVINO freed
    model.unet.save_pretrained(out / "unet", safe_serialization=True)
    model.vae.save_pretrained(out / "vae", safe_serialization=True)
    index: dict[str, Any] = {
        "_class_name": arch.family.pipeline_class,
        ARCH_INDEX_KEY: arch.name,
        "scheduler": ["diffusers", configs["scheduler"]["_class_name"]],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    for spec, encoder, tokenizer in zip(
        arch.text_encoders, model.text_encoders, model.tokenizers, strict=True
    ):
        encoder.save_pretrained(out / spec.subfolder, safe_serialization=True)
        tokenizer.save_pretrained(out / spec.tokenizer_subfolder)
        index[spec.subfolder] = ["transformers", type(encoder).__name__]
        index[spec.tokenizer_subfolder] = ["transformers", "CLIPTokenizer"]
    (out / "scheduler").mkdir(exist_ok=True)
    _write_json(out / "scheduler" / "scheduler_config.json", configs["scheduler"])
    _write_json(out / "model_index.json", index)
    if half:
        for name in ("unet", "vae", *(s.subfolder for s in arch.text_encoders)):
            _halve_folder(out / name)
    if model.tiny_vae is not None:  # the loader attaches it again from here
        save_tiny_vae(model.tiny_vae, out / TINY_VAE_FOLDER, half=half)
    return out


def _halve_folder(sub: Path) -> None:
    """Rewrite a component folder's safetensors weights as fp16 in place."""
    from safetensors.torch import load_file, save_file

    for f in sub.glob("*.safetensors"):
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(f)).items()}
        save_file(tensors, str(f), metadata={"format": "pt"})


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=list) + "\n", encoding="utf-8")
