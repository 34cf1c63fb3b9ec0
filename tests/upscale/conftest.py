"""Tiny random-weight upscalers built from spandrel's own architecture classes (no download)."""

from __future__ import annotations

import pytest
import torch


def _spandrel():
    from sdstudio.upscale.load import import_spandrel

    return import_spandrel()


def tiny_compact(scale: int = 2) -> torch.nn.Module:
    """Real-ESRGAN Compact (SRVGGNetCompact): 4 convs, receptive radius 4 input pixels."""
    _spandrel()
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    return Compact(num_feat=8, num_conv=2, upscale=scale).eval()


def tiny_esrgan(scale: int = 2) -> torch.nn.Module:
    """ESRGAN (RRDBNet) with one RRDB block of 8 filters: receptive radius about 20 input pixels."""
    _spandrel()
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(1)
    return ESRGAN(num_filters=8, num_blocks=1, scale=scale).eval()


def tiny_swinir(scale: int = 2) -> torch.nn.Module:
    """SwinIR: one stage of two Swin blocks, window 4, 12 channels."""
    _spandrel()
    from spandrel.architectures.SwinIR import SwinIR

    torch.manual_seed(2)
    return SwinIR(
        img_size=16, embed_dim=12, depths=[2], num_heads=[2], window_size=4, upscale=scale,
        upsampler="pixelshuffledirect", drop_path_rate=0.0,
    ).eval()  # fmt: skip


BUILDERS = {"Compact": tiny_compact, "ESRGAN": tiny_esrgan, "SwinIR": tiny_swinir}


def save(net: torch.nn.Module, path) -> None:
    """Save ``net``'s state dict as .safetensors or .pth (by suffix)."""
    sd = {k: v.contiguous().clone() for k, v in net.state_dict().items()}
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save(sd, str(path))


@pytest.fixture
def random_image():
    g = torch.Generator().manual_seed(3)
    return torch.rand(1, 3, 50, 70, generator=g)
