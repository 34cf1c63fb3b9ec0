"""Finding upscaler files (A1111/ComfyUI folders), the manager's one-model cache, non-upscalers refused."""

from __future__ import annotations

import os

import pytest
import torch

from sdstudio.errors import SDStudioError
from sdstudio.upscale.files import find_upscaler, find_upscalers
from sdstudio.upscale.load import upscaler_from_state_dict
from tests.upscale.conftest import BUILDERS, save


def test_files_in_every_folder_sorted_first_name_wins(tmp_path):
    for rel in ("ESRGAN/sub/4x_b.pth", "DAT/a.safetensors", "HAT/C.pt", "upscale_models/4x_b.safetensors",
                "SwinIR/Lanczos.pth", "ESRGAN/readme.txt", "Lora/x.safetensors"):  # fmt: skip
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    files = find_upscalers(tmp_path)
    assert [(f.name, f.folder) for f in files] == [("4x_b", "ESRGAN"), ("a", "DAT"), ("C", "HAT")]
    assert find_upscaler(files, "c").path == tmp_path / "HAT" / "C.pt"
    assert find_upscaler(files, "4x_b.pth").folder == "ESRGAN"
    with pytest.raises(
        SDStudioError, match="unknown upscaler 'zz'; installed: None, Lanczos, Nearest, 4x_b, a, C"
    ):
        find_upscaler(files, "zz")
    assert find_upscalers(None) == [] and find_upscalers(tmp_path / "missing") == []


def test_the_manager_keeps_the_last_upscaler_until_the_file_changes(tmp_path):
    from sdstudio.runtime.manager import ModelManager

    (tmp_path / "ESRGAN").mkdir()
    path = tmp_path / "ESRGAN" / "2x.pth"
    save(BUILDERS["Compact"](scale=2), path)
    manager = ModelManager(tmp_path, loader=lambda *a, **k: None)
    assert [f.name for f in manager.upscalers()] == ["2x"]
    first = manager.load_upscaler(path)
    assert manager.load_upscaler(path) is first
    save(BUILDERS["Compact"](scale=4), path)
    os.utime(path, (1, 1))  # a new mtime even within the clock's resolution
    again = manager.load_upscaler(path)
    assert again is not first and again.scale == 4


def test_a_face_restorer_is_not_an_upscaler():
    from sdstudio.upscale.load import import_spandrel

    spandrel = import_spandrel()

    class FaceArch(spandrel.Architecture):
        def __init__(self) -> None:
            super().__init__(id="FaceFake", detect=lambda sd: set(sd) == {"weight", "bias"})

        def load(self, state_dict):
            return spandrel.ImageModelDescriptor(
                torch.nn.Conv2d(3, 3, 1), state_dict, architecture=self, purpose="FaceSR", tags=[],
                supports_half=False, supports_bfloat16=False, scale=1, input_channels=3, output_channels=3,
            )  # fmt: skip

    FaceArch.__module__ = "spandrel.architectures.FaceFake"  # as if spandrel's core defined it
    registry = spandrel.ArchRegistry()
    registry.add(spandrel.ArchSupport.from_architecture(FaceArch()))
    with pytest.raises(SDStudioError, match=r"FaceFake model \(FaceSR\) is not an upscaler"):
        upscaler_from_state_dict(torch.nn.Conv2d(3, 3, 1).state_dict(), registry=registry)
