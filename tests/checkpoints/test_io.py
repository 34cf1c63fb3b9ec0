"""Safe checkpoint reading: safetensors, weights-only pickles, and precise errors for bad files."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

from sdstudio.checkpoints.io import check_model_path, read_checkpoint, write_safetensors
from sdstudio.errors import SDStudioError


class _RunsCode:
    """A pickle payload that would create a marker file if it were ever unpickled for real."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_safetensors_round_trip_with_metadata(tmp_path):
    sd = {"a.weight": torch.randn(3, 4), "b": torch.arange(5)}
    path = write_safetensors(sd, tmp_path / "m.safetensors", {"sdstudio.arch": "sd1"})
    ckpt = read_checkpoint(path)
    assert set(ckpt.state_dict) == {"a.weight", "b"}
    assert torch.equal(ckpt.state_dict["a.weight"], sd["a.weight"])
    assert ckpt.metadata["sdstudio.arch"] == "sd1"
    assert not list(tmp_path.glob("*.tmp"))


def test_ckpt_unwraps_nested_state_dict_and_keeps_global_step(tmp_path):
    inner = {"model.diffusion_model.x": torch.ones(2)}
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": {"state_dict": inner}, "global_step": 875000, "epoch": 3}, path)
    ckpt = read_checkpoint(path)
    assert list(ckpt.state_dict) == ["model.diffusion_model.x"]
    assert ckpt.global_step == 875000


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_pickle_with_code_is_refused_and_never_runs(tmp_path, suffix):
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _RunsCode(marker)}, path)
    with pytest.raises(SDStudioError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert "code execution" in message and "never" in message and "safetensors" in message
    assert "system" in message  # names the blocked callable
    assert not marker.exists()


def test_missing_file(tmp_path):
    with pytest.raises(SDStudioError, match="model not found"):
        read_checkpoint(tmp_path / "nope.safetensors")


def test_folder_without_model_index(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(SDStudioError, match="without model_index.json"):
        check_model_path(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    with pytest.raises(SDStudioError, match="empty"):
        read_checkpoint(path)


def test_wrong_extension(tmp_path):
    path = tmp_path / "model.txt"
    path.write_text("hello")
    with pytest.raises(SDStudioError, match=r"unsupported model file type '\.txt'.*\.safetensors"):
        read_checkpoint(path)


def test_truncated_safetensors(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file({"w": torch.randn(64, 64)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SDStudioError, match="not a valid safetensors file"):
        read_checkpoint(path)


def test_garbage_safetensors(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(os.urandom(256))
    with pytest.raises(SDStudioError, match="not a valid safetensors file"):
        read_checkpoint(path)


def test_corrupt_ckpt(tmp_path):
    path = tmp_path / "junk.ckpt"
    path.write_bytes(b"PK\x03\x04" + os.urandom(200))
    with pytest.raises(SDStudioError, match="not a readable PyTorch checkpoint|code execution"):
        read_checkpoint(path)


def test_pickle_without_tensors(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(SDStudioError, match="not a state dict"):
        read_checkpoint(path)


def test_old_lightning_ckpt_loads_with_inert_stand_ins(tmp_path, monkeypatch):
    """sd-v1-4.ckpt style: a Lightning ModelCheckpoint callback and numpy global_step beside the weights."""
    import sys
    import types

    import numpy as np

    name = "pytorch_lightning.callbacks.model_checkpoint"
    module = types.ModuleType(name)

    class ModelCheckpoint:
        def __init__(self):
            self.monitor = "val/loss"

    ModelCheckpoint.__module__ = name
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    module.ModelCheckpoint = ModelCheckpoint
    for mod in ("pytorch_lightning", "pytorch_lightning.callbacks"):
        monkeypatch.setitem(sys.modules, mod, types.ModuleType(mod))
    monkeypatch.setitem(sys.modules, name, module)
    path = tmp_path / "sd-v1-4.ckpt"
    torch.save(
        {
            "state_dict": {"w": torch.ones(2)},
            "callbacks": {"ModelCheckpoint": ModelCheckpoint()},
            "global_step": np.int64(470000),
        },
        path,
    )
    monkeypatch.delitem(sys.modules, name)  # loading must not need (or import) Lightning
    ckpt = read_checkpoint(path)
    assert list(ckpt.state_dict) == ["w"] and ckpt.global_step == 470000
