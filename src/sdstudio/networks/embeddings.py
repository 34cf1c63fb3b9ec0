"""Textual inversion (Gal et al. 2022): embedding files whose name in a prompt becomes learned vectors.

File layouts, as A1111 ``modules/textual_inversion/textual_inversion.py`` reads them:

* A1111 ``.pt``: ``{"string_to_param": {"*": (n, D)}, ...}`` (read weights-only)
* ``.safetensors`` / ``.pt`` with ``emb_params`` (n, D)
* diffusers concept ``.bin``: ``{"<token>": (D,)}`` (exactly one tensor)
* SDXL: ``{"clip_l": (n, 768), "clip_g": (n, 1280)}``

An embedding is usable with a model when its vectors fit every text encoder's width (SD 1.x/2.x:
the single tensor; SDXL: ``clip_l`` for the first encoder, ``clip_g`` for the second); others are
"skipped" as A1111 lists them. The name is the file name without extension. In a prompt, the
name's tokens are found in each emphasis fragment's tokens (so ``(name:1.2)`` works) and replaced
by ``n`` placeholder positions whose token embeddings are swapped for the vectors (A1111
``EmbeddingsWithFixes``); the hash is A1111's ``sha256(file)[:12]``.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sdstudio.errors import SDStudioError

MAX_VECTORS = 75  # one CLIP prompt chunk (A1111 puts an embedding in one chunk of 75 tokens)


@dataclass
class Embedding:
    """One textual-inversion file: its vectors per encoder key ("" for SD 1.x/2.x files)."""

    name: str
    path: str
    vectors: dict[str, torch.Tensor]  # "" | "clip_l" | "clip_g" -> (n, D) float32
    hash: str = ""  # sha256[:12] (A1111 shorthash)

    @property
    def n_vectors(self) -> int:
        return int(next(iter(self.vectors.values())).shape[0])

    @property
    def shape(self) -> int:
        """A1111 ``shape``: the vector width (SDXL: clip_l + clip_g widths)."""
        return sum(int(v.shape[-1]) for v in self.vectors.values())

    def for_model(self, model) -> list[torch.Tensor] | None:
        """The vectors for each of ``model``'s text encoders, or None when they do not fit."""
        keys = ["clip_l", "clip_g"] if len(model.text_encoders) == 2 else [""]
        out = []
        for key, encoder in zip(keys, model.text_encoders):
            vec = self.vectors.get(key)
            if vec is None or vec.shape[-1] != encoder.get_input_embeddings().embedding_dim:
                return None
            out.append(vec)
        return out


def read_embedding(path: str | Path) -> Embedding:
    """Read an embedding file (no code runs: safetensors, or a weights-only pickle)."""
    p = Path(path)
    data = _load(p)
    vectors = _vectors(data, p)
    for key, vec in vectors.items():
        if not torch.isfinite(vec).all():
            raise SDStudioError(f"{p.name}: embedding {key or 'vectors'} hold NaN/Inf", field="prompt")
    return Embedding(p.stem, str(p), vectors)


def _load(p: Path) -> dict:
    if p.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise SDStudioError(f"{p.name} is not a valid safetensors file ({exc})", field="prompt") from exc
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise SDStudioError(
            f"{p.name} needs code execution to load (not a plain tensor pickle); sdstudio never runs "
            "code from a file: convert it to .safetensors",
            field="prompt",
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise SDStudioError(f"{p.name} is not a readable PyTorch file ({exc})", field="prompt") from exc
    if not isinstance(obj, dict):
        raise SDStudioError(f"{p.name} holds a {type(obj).__name__}, not an embedding", field="prompt")
    return obj


def _vectors(data: dict, p: Path) -> dict[str, torch.Tensor]:
    """``{encoder key: (n, D)}`` from any of the layouts in the module docstring."""
    if "clip_l" in data and "clip_g" in data:
        return {"clip_l": _2d(data["clip_l"], p), "clip_g": _2d(data["clip_g"], p)}
    if "string_to_param" in data and isinstance(data["string_to_param"], dict) and data["string_to_param"]:
        return {"": _2d(next(iter(data["string_to_param"].values())), p)}
    if "emb_params" in data:
        return {"": _2d(data["emb_params"], p)}
    tensors = [v for v in data.values() if isinstance(v, torch.Tensor)]
    if len(data) == 1 and len(tensors) == 1:  # diffusers concept: {"<token>": (D,)}
        return {"": _2d(tensors[0], p)}
    raise SDStudioError(
        f"{p.name}: not a textual-inversion embedding (keys: {', '.join(sorted(map(str, data))[:6])}); "
        "expected string_to_param, emb_params, clip_l/clip_g or one tensor",
        field="prompt",
    )


def _2d(t, p: Path) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.ndim not in (1, 2) or t.numel() == 0:
        raise SDStudioError(f"{p.name}: embedding vectors must be a (n, D) tensor", field="prompt")
    t = t[None] if t.ndim == 1 else t
    if t.shape[0] > MAX_VECTORS:
        raise SDStudioError(
            f"{p.name}: embedding has {t.shape[0]} vectors; at most {MAX_VECTORS} fit one prompt chunk",
            field="prompt",
        )
    return t.detach().float()


@dataclass
class EncoderEmbeddings:
    """The embeddings usable with one text encoder, matched by token ids (A1111 ``EmbeddingDatabase``)."""

    tokenizer: object
    vectors: dict[str, torch.Tensor]  # name -> (n, D) for this encoder
    _by_first: dict[int, list[tuple[list[int], str]]] = field(default_factory=dict)
    used: dict[str, None] = field(default_factory=dict)  # names found, in order

    def __post_init__(self) -> None:
        for name in self.vectors:
            ids = self.tokenizer(name, add_special_tokens=False)["input_ids"]
            if ids:
                self._by_first.setdefault(ids[0], []).append((ids, name))
        for candidates in self._by_first.values():
            candidates.sort(key=lambda c: -len(c[0]))  # longest name first, as A1111

    def match(self, tokens: list[int], pos: int) -> tuple[str, torch.Tensor, int] | None:
        """``(name, vectors (n, D), tokens consumed)`` of an embedding starting at ``tokens[pos]``."""
        for ids, name in self._by_first.get(tokens[pos], ()):
            if tokens[pos : pos + len(ids)] == ids:
                self.used[name] = None
                return name, self.vectors[name], len(ids)
        return None
