"""LoRA / LyCORIS files -> per-layer weight deltas (A1111 ``extensions-builtin/Lora``).

Module types, as A1111's ``network_lora.py`` / ``network_hada.py`` / ``network_full.py`` compute them:

* LoRA (Hu et al. 2021, kohya ``lora_up``/``lora_down``, peft ``lora_B``/``lora_A``) and LyCORIS
  LoCon (the same for convolutions: ``down`` is a (r, in, k, k) conv, ``up`` a (out, r, 1, 1) conv):
  ``delta = up.flatten(1) @ down.flatten(1)``, reshaped to the layer's weight; with ``lora_mid``
  (LoCon CP decomposition) ``delta[i,j,k,l] = sum_nm up[i,n] mid[n,m,k,l] down[m,j]``.
* LoHa (Hyeon-Woo et al. 2021, FedPara): ``delta = (w1_a @ w1_b) * (w2_a @ w2_b)`` (Hadamard product).
* full: ``diff`` is the delta itself.

Scale (kohya / A1111 ``NetworkModule.calc_scale``): ``scale`` if stored, else ``alpha / rank``
(rank = ``lora_down.shape[0]``, LoHa: ``hada_w1_b.shape[0]``) when ``alpha`` is stored, else 1.
The layer receives ``weight + delta * scale * multiplier`` (multiplier: the tag's text-encoder
weight for text-encoder layers, its UNet weight otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from sdstudio.errors import SDStudioError
from sdstudio.networks.keys import ModuleIndex, Target

# key ending -> part name; longest spellings first (".lora.down.weight" before ".down.weight")
SUFFIXES = (
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    (".lora_mid.weight", "mid"),
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora.down.weight", "down"),
    (".lora.up.weight", "up"),
    (".down.weight", "down"),
    (".up.weight", "up"),
    (".hada_w1_a", "w1a"),
    (".hada_w1_b", "w1b"),
    (".hada_w2_a", "w2a"),
    (".hada_w2_b", "w2b"),
    (".hada_t1", "t1"),
    (".hada_t2", "t2"),
    (".diff_b", "diff_b"),
    (".diff", "diff"),
    (".dora_scale", "dora_scale"),
    (".alpha", "alpha"),
    (".scale", "scale"),
)
UNSUPPORTED = {
    "t1": "LoHa with Tucker decomposition (hada_t1/hada_t2)",
    "t2": "LoHa with Tucker decomposition (hada_t1/hada_t2)",
    "dora_scale": "DoRA (dora_scale)",
    "diff_b": "bias deltas (diff_b)",
}


@dataclass
class LayerPatch:
    """The parts a file stores for one layer, e.g. ``{"down": ..., "up": ..., "alpha": ...}``."""

    keys: dict[str, str]  # part -> the file's key (for error messages)
    parts: dict[str, torch.Tensor]

    @property
    def key(self) -> str:
        """The key an error about the whole layer names: its up/w1_a/diff weight."""
        for part in ("up", "w1a", "diff"):
            if part in self.keys:
                return self.keys[part]
        return min(self.keys.values())


def group_keys(state_dict: dict[str, torch.Tensor], path: Path) -> dict[str, LayerPatch]:
    """Group a network file's keys by layer name; an unknown key raises SDStudioError naming it."""
    groups: dict[str, LayerPatch] = {}
    for key in sorted(state_dict):
        layer, part = _split(key, path)
        patch = groups.setdefault(layer, LayerPatch({}, {}))
        patch.keys[part], patch.parts[part] = key, state_dict[key]
    return groups


def _split(key: str, path: Path) -> tuple[str, str]:
    for suffix, part in SUFFIXES:
        if key.endswith(suffix):
            if part in UNSUPPORTED:
                raise SDStudioError(
                    f"{path.name}: {UNSUPPORTED[part]} is not supported (first such key: {key})",
                    field="prompt",
                )
            return key[: -len(suffix)], part
    raise SDStudioError(
        f"{path.name}: unknown key {key!r}; expected LoRA (lora_up/lora_down, lora_A/lora_B), "
        "LoCon, LoHa (hada_w1_a...) or full (diff) weights",
        field="prompt",
    )


def layer_delta(patch: LayerPatch, weight_shape: torch.Size, dyn: int | None = None) -> torch.Tensor:
    """``delta * scale`` for one layer (fp32, the layer's weight shape), before the tag's multiplier."""
    p = {k: v.float() for k, v in patch.parts.items()}
    _check_shapes(p)
    if "up" in p and "down" in p:
        up, down = p["up"], p["down"]
        rank = down.shape[0]
        if dyn is not None:
            up, down = up[:, :dyn], down[:dyn]
            if "mid" in p:
                p["mid"] = p["mid"][:dyn, :dyn]
        if "mid" in p:  # LoCon CP decomposition
            delta = torch.einsum("n m k l, i n, m j -> i j k l", p["mid"], up.flatten(1), down.flatten(1))
        else:
            delta = up.flatten(1) @ down.flatten(1)  # (out, in * k * k)
    elif all(k in p for k in ("w1a", "w1b", "w2a", "w2b")):
        rank = p["w1b"].shape[0]
        delta = (p["w1a"] @ p["w1b"]) * (p["w2a"] @ p["w2b"])
    elif "diff" in p:
        rank, delta = None, p["diff"]
    else:
        raise ValueError(f"incomplete weights (has {sorted(patch.parts)})")
    if delta.numel() != weight_shape.numel():
        raise ValueError(
            f"delta of shape {tuple(delta.shape)} does not fit the layer's {tuple(weight_shape)}"
        )
    return delta.reshape(weight_shape) * _scale(p, rank)


def _check_shapes(p: dict[str, torch.Tensor]) -> None:
    """ValueError for parts no real network has: scalar or rank-0 matrices, non-scalar alpha/scale."""
    for name in ("up", "down", "mid", "w1a", "w1b", "w2a", "w2b"):
        if name in p and (p[name].ndim < 2 or 0 in p[name].shape):
            raise ValueError(f"{name} weight of shape {tuple(p[name].shape)}: expected a matrix of rank >= 1")
    if "up" in p and "down" in p and p["up"].shape[1] != p["down"].shape[0]:
        raise ValueError(f"up {tuple(p['up'].shape)} and down {tuple(p['down'].shape)} ranks differ")
    for name in ("alpha", "scale"):
        if name in p and p[name].numel() != 1:
            raise ValueError(f"{name} must be one number, got shape {tuple(p[name].shape)}")


def _scale(parts: dict[str, torch.Tensor], rank: int | None) -> float:
    if "scale" in parts:
        return float(parts["scale"])
    if "alpha" in parts and rank is not None:
        return float(parts["alpha"]) / rank
    return 1.0


def network_deltas(
    groups: dict[str, LayerPatch],
    index: ModuleIndex,
    path: Path,
    *,
    te_weight: float,
    unet_weight: float,
    dyn: int | None = None,
) -> list[tuple[Target, torch.Tensor]]:
    """``(layer, delta * scale * multiplier)`` for every layer of one file; any bad key raises SDStudioError.

    Checked before anything is patched: every layer name exists in this model, every tensor is
    finite, every delta fits its layer's weight (a LoRA for another architecture fails here).
    """
    out = []
    for name, patch in groups.items():
        target = index.find(name)
        if target is None:
            raise SDStudioError(
                f"{path.name}: key {patch.key!r} names no layer of this model "
                "(a LoRA for another architecture, or an unsupported key format?)",
                field="prompt",
            )
        for part, tensor in patch.parts.items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise SDStudioError(f"{path.name}: key {patch.keys[part]!r} holds NaN/Inf", field="prompt")
        try:
            delta = layer_delta(patch, target.module.weight.shape, dyn)
        except (ValueError, RuntimeError, IndexError, ZeroDivisionError) as exc:
            raise SDStudioError(f"{path.name}: key {patch.key!r}: {exc}", field="prompt") from exc
        if not torch.isfinite(delta).all():
            raise SDStudioError(f"{path.name}: key {patch.key!r} gives a NaN/Inf delta", field="prompt")
        out.append((target, delta * (te_weight if target.is_text else unet_weight)))
    return out
