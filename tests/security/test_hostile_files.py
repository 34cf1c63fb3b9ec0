"""Hostile and broken model files: nothing runs, every failure is a readable SDStudioError.

An audit hook (PEP 578) records process/exec events and opens of a marker file while a file is
loaded; every hostile pickle tries to run code or create the marker. Then the same files go
through the server: listed under unique names, refused with a readable error, never selected.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import struct
import sys
import threading
import zipfile
from pathlib import Path

import pytest
import torch

from sdstudio.checkpoints.io import read_checkpoint
from sdstudio.errors import SDStudioError

pytestmark = pytest.mark.security
WATCHED = (
    "os.system",
    "subprocess.Popen",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.fork",
    "ctypes.dlopen",
)
_watch = threading.local()
_events: list[tuple] = []


def _hook(event: str, args: tuple) -> None:
    marker = getattr(_watch, "marker", None)
    if marker is None:
        return
    if event.startswith(WATCHED):
        _events.append((event, repr(args)[:200]))
    elif event == "exec" and getattr(args[0], "co_filename", "") in ("<string>", "<unknown>"):
        _events.append((event, "exec of a string"))  # imports exec real files; pickles exec strings
    elif event == "open" and args and str(marker) in str(args[0]):
        _events.append((event, str(args[0])))


sys.addaudithook(_hook)  # cannot be removed; inert unless a test sets _watch.marker


class _Reduce:
    """Pickles as ``fn(*args)``: what a hostile checkpoint does on unpickling."""

    def __init__(self, fn, *args) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _hostile_pickles(folder: Path, marker: Path) -> dict[str, Path]:
    import builtins
    import functools
    import importlib
    import subprocess

    touch = f"touch {marker}"
    code = f"open({str(marker)!r}, 'w').write('pwned')"
    w = {"model.diffusion_model.x": torch.zeros(2)}
    payloads = {
        "os_system_p2": (_Reduce(os.system, touch), 2),
        "os_system_p4": (_Reduce(os.system, touch), 4),
        "subprocess_popen": (_Reduce(subprocess.Popen, ["touch", str(marker)]), 2),
        "builtins_exec": (_Reduce(builtins.exec, code), 2),
        "builtins_eval": (_Reduce(builtins.eval, code), 2),
        "builtins_open": (_Reduce(builtins.open, str(marker), "w"), 2),
        "import_module": (_Reduce(importlib.import_module, "antigravity"), 2),
        "partial_system": (_Reduce(functools.partial(os.system, touch)), 2),
        "nested_in_state_dict": ({"state_dict": {**w, "evil": _Reduce(os.system, touch)}}, 2),
        "getattr_chain": (_Reduce(getattr, _Reduce(importlib.import_module, "os"), "system"), 2),
    }
    files = {}
    for name, (obj, protocol) in payloads.items():
        files[name] = folder / f"{name}.ckpt"
        files[name].write_bytes(pickle.dumps(obj, protocol=protocol))
    files["protocol0_text"] = folder / "protocol0_text.ckpt"  # hand-written opcodes: c os\nsystem
    files["protocol0_text"].write_bytes(b"cos\nsystem\n(S'" + touch.encode() + b"'\ntR.")
    files["torch_zip_container"] = folder / "torch_zip_container.pt"  # torch.save's own zip format
    torch.save({"state_dict": w, "callback": _Reduce(os.system, touch)}, files["torch_zip_container"])
    lightning = folder / "lightning_name_with_payload.ckpt"  # an allowed Lightning name, hostile state
    lightning.write_bytes(
        b"\x80\x02cpytorch_lightning.callbacks.model_checkpoint\nModelCheckpoint\n)\x81}X\x01\x00\x00\x00"
        b"a" + b"cos\nsystem\nX" + struct.pack("<I", len(touch)) + touch.encode() + b"\x85R" + b"sb."
    )
    files["lightning_name_with_payload"] = lightning
    return files


def _broken_pickles(folder: Path) -> dict[str, Path]:
    rng = random.Random(4)
    files = {f"random_{i}": folder / f"random_{i}.ckpt" for i in range(4)}
    for i, path in enumerate(files.values()):
        path.write_bytes(rng.randbytes(64 + 997 * i))
    good = folder / "good.pt"
    torch.save({"state_dict": {"w": torch.ones(4)}}, good)
    data = good.read_bytes()
    files["truncated_zip"] = folder / "truncated_zip.pt"
    files["truncated_zip"].write_bytes(data[: len(data) // 2])
    files["zip_with_junk_pickle"] = folder / "zip_with_junk_pickle.pt"
    with zipfile.ZipFile(files["zip_with_junk_pickle"], "w") as z:
        z.writestr("archive/data.pkl", rng.randbytes(300))
        z.writestr("archive/version", "3\n")
    files["a_list_not_a_dict"] = folder / "a_list_not_a_dict.ckpt"
    torch.save([torch.ones(2)], files["a_list_not_a_dict"])
    files["no_tensors"] = folder / "no_tensors.ckpt"
    torch.save({"epoch": 3}, files["no_tensors"])
    files["pickle_of_int"] = folder / "pickle_of_int.ckpt"
    files["pickle_of_int"].write_bytes(pickle.dumps(12345, protocol=2))
    good.unlink()
    return files


def _safetensors(header: object, data: bytes = b"", length: int | None = None) -> bytes:
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def _broken_safetensors(folder: Path) -> dict[str, bytes]:
    f32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    rng = random.Random(5)
    cases = {
        "four_bytes": b"\x01\x02\x03\x04",
        "random_bytes": rng.randbytes(4096),
        "header_length_2_63": _safetensors({"w": f32}, b"\0" * 8, length=2**63),
        "header_longer_than_file": _safetensors({"w": f32}, b"\0" * 8, length=10_000),
        "header_not_json": _safetensors(b"{not json", b"\0" * 8),
        "header_a_list": _safetensors([1, 2, 3]),
        "offsets_past_the_end": _safetensors({"w": {**f32, "data_offsets": [0, 800]}}, b"\0" * 8),
        "overlapping_tensors": _safetensors({"w": f32, "v": {**f32, "data_offsets": [4, 12]}}, b"\0" * 12),
        "unknown_dtype": _safetensors({"w": {**f32, "dtype": "Q9"}}, b"\0" * 8),
        "shape_disagrees_with_size": _safetensors({"w": {**f32, "shape": [1000]}}, b"\0" * 8),
        "negative_shape": _safetensors({"w": {**f32, "shape": [-2]}}, b"\0" * 8),
        "no_tensors": _safetensors({"__metadata__": {"a": "b"}}),
        "metadata_not_strings": _safetensors({"__metadata__": {"a": 1}, "w": f32}, b"\0" * 8),
        "truncated_valid_file": _safetensors(
            {"w": {**f32, "shape": [64], "data_offsets": [0, 256]}}, b"\0" * 100
        ),
    }
    for name, data in cases.items():
        (folder / f"{name}.safetensors").write_bytes(data)
    return {name: folder / f"{name}.safetensors" for name in cases}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    marker = folder / "PWNED-marker"
    return marker, _hostile_pickles(folder, marker), _broken_pickles(folder), _broken_safetensors(folder)


def _load_watched(path: Path, marker: Path) -> SDStudioError:
    from sdstudio.models.loader import load_model

    _events.clear()
    _watch.marker = marker
    try:
        with pytest.raises(SDStudioError) as info:
            read_checkpoint(path)
        with pytest.raises(SDStudioError):
            load_model(path)
    finally:
        _watch.marker = None
    assert not _events, f"{path.name} ran something while loading: {_events}"
    assert not marker.exists(), f"{path.name} created the marker file"
    return info.value


def test_the_audit_hook_sees_what_a_payload_does(tmp_path):
    """Control: an unrestricted unpickle of one payload is caught by the hook (so silence means safe)."""
    marker = tmp_path / "PWNED-control"
    data = pickle.dumps(_Reduce(os.system, f"touch {marker}"), protocol=2)
    _events.clear()
    _watch.marker = marker
    try:
        pickle.loads(data)  # what torch.load(weights_only=False) would do
    finally:
        _watch.marker = None
    assert _events and _events[0][0] == "os.system" and marker.exists()


def test_hostile_pickles_run_nothing(files):
    marker, hostile, _, _ = files
    assert len(hostile) >= 10
    for name, path in hostile.items():
        err = _load_watched(path, marker)
        assert "code execution" in str(err) or "not a valid checkpoint" in str(err), (name, str(err))
        assert "Traceback" not in str(err) and err.field == "model"


def test_broken_pickles_are_not_a_valid_checkpoint(files):
    marker, _, broken, _ = files
    for name, path in broken.items():
        err = _load_watched(path, marker)
        assert "not a valid checkpoint" in str(err), (name, str(err))


def test_broken_safetensors_are_not_a_valid_checkpoint(files):
    marker, _, _, broken = files
    assert len(broken) >= 10
    for name, path in broken.items():
        err = _load_watched(path, marker)
        assert "not a valid checkpoint" in str(err), (name, str(err))


def test_cli_random_bytes_ckpt_is_one_readable_line(files, capsys):
    from sdstudio.cli import main

    _, _, broken, _ = files
    assert main(["txt2img", "x", "--model", str(broken["random_1"]), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert (
        "not a valid checkpoint" in err and "Traceback" not in err and "IndexError:" not in err.split(":")[0]
    )


def test_server_lists_unique_names_and_never_selects_a_broken_file(tmp_path, tiny_sd1, files):
    """``garbage.ckpt`` (junk) beside ``garbage.safetensors`` (a real model): two entries; picking the
    safetensors loads it; picking the ckpt fails readably and leaves the working model selected."""
    from fastapi.testclient import TestClient

    from sdstudio.api import ServerSettings, create_app
    from sdstudio.models.save import save_single_file
    from tests.server.conftest import FAST, TEST_HOSTS

    _, hostile, broken, _ = files
    ckpts = tmp_path / "models" / "Stable-diffusion"
    ckpts.mkdir(parents=True)
    save_single_file(tiny_sd1, ckpts / "garbage.safetensors")
    (ckpts / "garbage.ckpt").write_bytes(broken["random_0"].read_bytes())
    (ckpts / "aaa-hostile.ckpt").write_bytes(hostile["os_system_p2"].read_bytes())
    settings = ServerSettings(
        allowed_hosts=TEST_HOSTS, outdir=tmp_path / "out", models_dir=tmp_path / "models"
    )
    with TestClient(create_app(settings)) as c:
        listed = {m["title"]: m for m in c.get("/api/models").json()["models"]}
        assert {"garbage.ckpt", "garbage.safetensors", "aaa-hostile.ckpt"} <= set(listed)
        embedded = [m for m in listed.values() if m["embedded"]]
        if embedded:  # the shipped model is listed beside the files and is the default
            assert embedded[0]["selected"] and not listed["aaa-hostile.ckpt"]["selected"]
        r = c.post("/api/models/select", json={"name": "garbage"})
        assert r.status_code == 422 and "ambiguous" in r.json()["detail"]
        assert c.post("/api/models/select", json={"name": "garbage.safetensors"}).status_code == 200
        ok = c.post("/sdapi/v1/txt2img", json={**FAST, "seed": 1})
        assert ok.status_code == 200 and json.loads(ok.json()["info"])["sd_model_name"] == "garbage"
        for bad in ("garbage.ckpt", "aaa-hostile.ckpt"):
            assert c.post("/sdapi/v1/options", json={"sd_model_checkpoint": bad}).status_code == 200
            r = c.post("/sdapi/v1/txt2img", json={**FAST, "seed": 1})
            assert r.status_code == 422, r.text
            detail = r.json()["detail"]
            assert "not a valid checkpoint" in detail or "code execution" in detail
            current = c.get("/sdapi/v1/options").json()["sd_model_checkpoint"]
            assert current.startswith("garbage.safetensors"), current  # the broken file is not kept
            assert c.post("/sdapi/v1/txt2img", json={**FAST, "seed": 1}).status_code == 200
