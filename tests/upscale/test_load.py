"""Loading upscaler files: detection of each architecture, weights-only pickles, licences, bad files."""

from __future__ import annotations

import os

import pytest
import torch

from sdstudio.errors import SDStudioError
from sdstudio.upscale.load import check_licence, load_upscaler, upscaler_from_state_dict
from tests.upscale.conftest import BUILDERS, save


@pytest.mark.parametrize("arch", sorted(BUILDERS))
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_each_architecture_is_detected_and_matches_its_reference(tmp_path, arch, suffix, random_image):
    net = BUILDERS[arch](scale=2)
    path = tmp_path / f"2x_tiny{suffix}"
    save(net, path)
    up = load_upscaler(path)
    assert (up.architecture, up.scale) == (arch, 2)
    x = random_image[:, :, :32, :32]
    with torch.inference_mode():
        ref = net(x).clamp(0, 1)  # the spandrel model's own forward: the reference
        out = up.model(x)
    assert out.shape == (1, 3, 64, 64)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)


def test_basicsr_params_ema_nesting_is_unwrapped(tmp_path):
    net = BUILDERS["Compact"](scale=4)
    path = tmp_path / "realesr-general-x4v3.pth"
    torch.save(
        {"params_ema": net.state_dict(), "params": {k: v * 0 for k, v in net.state_dict().items()}}, path
    )
    up = load_upscaler(path)
    assert up.scale == 4
    x = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(up.model(x), net(x).clamp(0, 1))  # the EMA weights, not the zeros


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_calls_os_system_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "4x-evil.pth"
    torch.save({"conv.weight": torch.zeros(1), "payload": _Evil(str(marker))}, path)
    with pytest.raises(SDStudioError, match="code execution") as err:
        load_upscaler(path)
    assert err.value.field == "upscaler"
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a pickle at all", b"PK\x03\x04truncated"])
def test_a_malformed_file_is_a_clear_error(tmp_path, content):
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(SDStudioError, match="broken.pth"):
        load_upscaler(path)


def test_unknown_weights_and_wrong_suffix_are_refused(tmp_path):
    with pytest.raises(SDStudioError, match="no known upscaler architecture"):
        upscaler_from_state_dict({"foo.weight": torch.zeros(3, 3)})
    (tmp_path / "x.onnx").write_bytes(b"x")
    with pytest.raises(SDStudioError, match="unsupported upscaler file type"):
        load_upscaler(tmp_path / "x.onnx")


def test_an_architecture_outside_the_mit_core_is_refused_naming_its_licence():
    from sdstudio.upscale.load import import_spandrel

    spandrel = import_spandrel()

    class CodeFormerArch(spandrel.Architecture):  # what spandrel-extra-arches would register
        def __init__(self) -> None:
            super().__init__(id="CodeFormer", detect=lambda sd: "codeformer.marker" in sd)

        def load(self, state_dict):  # pragma: no cover - must never be reached
            raise AssertionError("a refused architecture was built")

    registry = spandrel.ArchRegistry()
    registry.add(spandrel.ArchSupport.from_architecture(CodeFormerArch()))
    with pytest.raises(SDStudioError, match=r"CodeFormer is under S-Lab License 1.0 \(non-commercial\)"):
        upscaler_from_state_dict({"codeformer.marker": torch.zeros(1)}, registry=registry)
    with pytest.raises(SDStudioError, match="has not reviewed"):
        check_licence("Foo", "someone_elses_package.arches", "foo.pth")
    check_licence("ESRGAN", "spandrel.architectures.ESRGAN")  # the core loads
