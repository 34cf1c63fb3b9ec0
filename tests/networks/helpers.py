"""Build LoRA / LyCORIS / embedding files for tiny models in each key format (written in the tests)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file


def linear_layers(
    module: torch.nn.Module, limit: int = 4, contains: str = ""
) -> list[tuple[str, torch.nn.Linear]]:
    return [(n, m) for n, m in module.named_modules() if isinstance(m, torch.nn.Linear) and contains in n][
        :limit
    ]


def conv3_layers(module: torch.nn.Module, limit: int = 2) -> list[tuple[str, torch.nn.Conv2d]]:
    out = [
        (n, m)
        for n, m in module.named_modules()
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
    ]
    return out[:limit]


def text_name(path: str) -> str:
    """transformers module path -> classic ``text_model.`` path (as kohya writes it)."""
    return path if path.startswith("text_model.") else "text_model." + path


def lora_pair(layer: torch.nn.Module, rank: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(down, up) for a Linear (r, in)/(out, r) or a Conv2d (r, in, k, k)/(out, r, 1, 1) (LoCon)."""
    w = layer.weight
    if w.ndim == 4:
        down = torch.randn(rank, w.shape[1], *w.shape[2:], generator=gen) * 0.3
        up = torch.randn(w.shape[0], rank, 1, 1, generator=gen) * 0.3
    else:
        down = torch.randn(rank, w.shape[1], generator=gen) * 0.3
        up = torch.randn(w.shape[0], rank, generator=gen) * 0.3
    return down, up


def kohya_lora(model, *, rank: int = 2, alpha: float = 1.0, seed: int = 0, sgm_names: dict | None = None):
    """kohya/A1111 keys: a few UNet linears and convs (LoCon) and text-encoder linears.

    Returns (state dict, {(component, module path): (down, up, alpha/rank)}).
    """
    gen = torch.Generator().manual_seed(seed)
    sd, expected = {}, {}
    layers = [("unet", n, m) for n, m in linear_layers(model.unet, 3, "attn") + conv3_layers(model.unet)]
    te_prefixes = ["lora_te_"] if len(model.text_encoders) == 1 else ["lora_te1_", "lora_te2_"]
    components = ["text_encoder", "text_encoder_2"]
    for prefix, comp, enc in zip(te_prefixes, components, model.text_encoders):
        layers += [(comp, n, m) for n, m in linear_layers(enc, 2, "q_proj")]
    for comp, path, layer in layers:
        down, up = lora_pair(layer, rank, gen)
        if comp == "unet":
            name = (sgm_names or {}).get(path, path)
            key = "lora_unet_" + name.replace(".", "_")
        else:
            key = te_prefixes[components.index(comp)] + text_name(path).replace(".", "_")
        sd[f"{key}.lora_down.weight"] = down
        sd[f"{key}.lora_up.weight"] = up
        sd[f"{key}.alpha"] = torch.tensor(alpha)
        expected[(comp, path)] = (down, up, alpha / rank)
    return sd, expected


def peft_lora(model, *, rank: int = 2, seed: int = 1):
    """diffusers/peft keys (``unet.<path>.lora_A.weight`` / ``lora_B``), no alpha (scale 1)."""
    gen = torch.Generator().manual_seed(seed)
    sd, expected = {}, {}
    for path, layer in linear_layers(model.unet, 3, "attn2"):
        down, up = lora_pair(layer, rank, gen)
        sd[f"unet.{path}.lora_A.weight"], sd[f"unet.{path}.lora_B.weight"] = down, up
        expected[("unet", path)] = (down, up, 1.0)
    for path, layer in linear_layers(model.text_encoders[0], 2, "v_proj"):
        down, up = lora_pair(layer, rank, gen)
        sd[f"text_encoder.{text_name(path)}.lora_A.weight"] = down
        sd[f"text_encoder.{text_name(path)}.lora_B.weight"] = up
        expected[("text_encoder", path)] = (down, up, 1.0)
    return sd, expected


def save(sd: dict, path: Path, metadata: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=metadata)
    return path


def module_of(model, component: str, path: str) -> torch.nn.Module:
    root = model.unet if component == "unet" else model.text_encoders[component == "text_encoder_2"]
    return root.get_submodule(path)


def snapshot(model) -> dict[str, torch.Tensor]:
    """Every tensor of every module (cloned) by a unique name."""
    out = {}
    for tag, module in [("unet", model.unet), ("vae", model.vae)] + [
        (f"te{i}", e) for i, e in enumerate(model.text_encoders)
    ]:
        for k, v in module.state_dict().items():
            out[f"{tag}.{k}"] = v.detach().clone()
    return out


def assert_same(model, before: dict[str, torch.Tensor]) -> None:
    after = snapshot(model)
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"weights changed: {changed[:5]}"
