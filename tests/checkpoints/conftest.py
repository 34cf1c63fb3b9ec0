"""Fixtures for model-file tests: tiny models written once per session as diffusers folders and single files."""

from __future__ import annotations

import pytest
import torch


def original_state_dict(model):
    """Return (architecture, original-layout state dict) of an in-memory model via our converter."""
    from sdstudio.families.sd.keymap import diffusers_to_original
    from sdstudio.models.save import model_components

    arch, components, configs = model_components(model)
    return arch, diffusers_to_original(components, arch, configs)


@pytest.fixture(scope="session")
def tiny_models(tiny_sd1, tiny_inpaint, tiny_sd2, tiny_sd2_v, tiny_sdxl):
    return {
        "sd1": tiny_sd1,
        "sd1-inpaint": tiny_inpaint,
        "sd2": tiny_sd2,
        "sd2-v": tiny_sd2_v,
        "sdxl": tiny_sdxl,
    }


@pytest.fixture(scope="session")
def saved_models(tiny_models, tmp_path_factory):
    """{arch name: {"model", "diffusers", "safetensors", "ckpt"}} written with our own savers."""
    from sdstudio.models.save import save_diffusers, save_single_file

    root = tmp_path_factory.mktemp("models")
    out = {}
    for name, model in tiny_models.items():
        folder = save_diffusers(model, root / f"{name}-diffusers")
        single = save_single_file(model, root / f"{name}.safetensors")
        _, state_dict = original_state_dict(model)
        ckpt = root / f"{name}.ckpt"
        from safetensors import safe_open

        with safe_open(str(single), framework="pt") as f:
            metadata = f.metadata()
        # A1111/LDM .ckpt layout: {"state_dict": {...}, "global_step": N}; our metadata travels as strings
        torch.save({"state_dict": state_dict, "global_step": 1, "sdstudio_metadata": metadata}, ckpt)
        out[name] = {"model": model, "diffusers": folder, "safetensors": single, "ckpt": ckpt}
    return out
