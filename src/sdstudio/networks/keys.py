"""Which model layer a LoRA key names: kohya/A1111, diffusers/peft and LyCORIS spellings.

Spellings of the same layer (checked against A1111 ``extensions-builtin/Lora/networks.py`` and kohya
``networks/lora.py``, where a module's name is ``prefix + path.replace(".", "_")``):

* kohya, diffusers UNet paths (SD 1.x/2.x trainers): ``lora_unet_down_blocks_0_attentions_0_proj_in``
* kohya, original (SGM/LDM) UNet paths (SDXL trainers): ``lora_unet_input_blocks_4_1_proj_in``
* kohya text encoders: ``lora_te_text_model_encoder_layers_0_self_attn_q_proj`` (SD 1.x/2.x),
  ``lora_te1_...`` / ``lora_te2_...`` (SDXL CLIP-L / OpenCLIP-G, transformers naming)
* diffusers / peft: ``unet.down_blocks.0.attentions.0.proj_in``, ``text_encoder.text_model...``,
  ``text_encoder_2...``; old attention-processor files: ``...attn1.processor.to_q_lora``

Every spelling maps to one :class:`Target`: the ``torch.nn.Linear`` / ``Conv2d`` of the loaded
diffusers/transformers module tree, and whether it belongs to a text encoder (the ``te`` weight of
``<lora:name:te:unet>``) or the UNet.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PATCHABLE = (torch.nn.Linear, torch.nn.Conv2d)


@dataclass(frozen=True)
class Target:
    """One patchable layer of the model."""

    component: str  # "unet" | "text_encoder" | "text_encoder_2"
    path: str  # module path inside that component
    module: torch.nn.Module

    @property
    def is_text(self) -> bool:
        return self.component != "unet"


class ModuleIndex:
    """Lookup from every known spelling of a layer name to its :class:`Target`."""

    def __init__(self, model) -> None:
        self.targets: dict[str, Target] = {}
        self._add_unet(model.unet)
        te_prefixes = (("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2"))
        if len(model.text_encoders) == 1:
            te_prefixes = (("lora_te_", "text_encoder"),)
        for (kohya, component), encoder in zip(te_prefixes, model.text_encoders):
            self._add_text(encoder, kohya, component)

    def find(self, name: str) -> Target | None:
        """The layer a network module name refers to, or None."""
        name = _normalize(name)
        return self.targets.get(name) or self.targets.get("unet." + name)

    def _add(self, names: list[str], target: Target) -> None:
        for n in names:
            self.targets.setdefault(n, target)

    def _add_unet(self, unet: torch.nn.Module) -> None:
        original = _original_unet_paths(unet)
        for path, module in unet.named_modules():
            if not isinstance(module, PATCHABLE):
                continue
            target = Target("unet", path, module)
            names = ["lora_unet_" + path.replace(".", "_"), "unet." + path]
            if path in original:
                names.append("lora_unet_" + original[path].replace(".", "_"))
            self._add(names, target)

    def _add_text(self, encoder: torch.nn.Module, kohya: str, component: str) -> None:
        for path, module in encoder.named_modules():
            if not isinstance(module, PATCHABLE):
                continue
            canonical = path if path.startswith(("text_model.", "text_projection")) else "text_model." + path
            bare = canonical.removeprefix("text_model.")
            names = [kohya + canonical.replace(".", "_"), f"{component}.{canonical}", f"{component}.{bare}"]
            self._add(names, Target(component, path, module))


def _normalize(name: str) -> str:
    """diffusers attention-processor names -> module paths (``attn1.processor.to_out_lora`` -> ``attn1.to_out.0``)."""
    if ".processor." in name:
        name = name.replace(".processor.", ".")
    for suffix in ("_lora", ".lora"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            if name.endswith("to_out"):
                name += ".0"
    return name


def _original_unet_paths(unet: torch.nn.Module) -> dict[str, str]:
    """diffusers UNet module path -> original (openaimodel/SGM) module path, from the converter's key map."""
    from sdstudio.families.sd.keymap import unet_to_original

    weights = {  # a peft-wrapped layer keeps its original under .base_layer; adapters are skipped
        k.replace(".base_layer.", "."): k.replace(".base_layer.", ".")
        for k in unet.state_dict()
        if k.endswith(".weight") and "lora_" not in k
    }
    try:
        mapped = unet_to_original(weights, dict(unet.config))
    except (AssertionError, KeyError, TypeError):  # a UNet layout the converter does not know
        return {}
    return {
        diffusers.removesuffix(".weight"): orig.removesuffix(".weight") for orig, diffusers in mapped.items()
    }
