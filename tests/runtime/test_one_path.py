"""One job path: the API and the CLI make the same PNG bytes for the same request, and a CLI image is
in a running server's gallery at once (shared history database, WAL + busy timeout)."""

from __future__ import annotations

import base64

import pytest

from sdstudio.cli import main as cli_main
from sdstudio.models.save import save_single_file
from tests.server.conftest import TEST_HOSTS

REQUEST = {"prompt": "a red heart", "seed": 77, "steps": 2, "width": 32, "height": 32,
           "sampler_name": "Euler", "cfg_scale": 6.5, "negative_prompt": "blurry"}  # fmt: skip


@pytest.fixture()
def workspace(tmp_path, tiny_sd1, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SDSTUDIO_CACHE_DIR", str(tmp_path / "cache"))
    model = save_single_file(tiny_sd1, tmp_path / "tiny.safetensors")
    return tmp_path, model


@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_api_and_cli_write_identical_png_bytes_and_one_gallery(workspace, capsys, backend):
    from fastapi.testclient import TestClient

    from sdstudio.api import ServerSettings, create_app

    root, model = workspace
    settings = ServerSettings(
        allowed_hosts=TEST_HOSTS, outdir=root / "outputs", models_dir=None, model=str(model), precision="fp32",
        backend=backend,
    )
    app = create_app(settings)
    with TestClient(app) as client:
        r = client.post("/sdapi/v1/txt2img", json=REQUEST)
        assert r.status_code == 200, r.text
        api_bytes = base64.b64decode(r.json()["images"][0])

        argv = ["txt2img", REQUEST["prompt"], "--model", str(model), "--precision", "fp32",
                "--seed", "77", "--steps", "2", "--width", "32", "--height", "32", "--sampler", "Euler",
                "--cfg-scale", "6.5", "--negative-prompt", "blurry", "--backend", backend]  # fmt: skip
        capsys.readouterr()
        assert cli_main(argv) == 0
        printed = capsys.readouterr().out.strip().splitlines()
        assert len(printed) == 1 and printed[0].startswith("outputs/txt2img-images/")
        cli_bytes = (root / printed[0]).read_bytes()
        assert cli_bytes == api_bytes  # same pixels and the same infotext chunk

        history = client.get("/api/history").json()
        paths = [item["path"] for item in history["items"]]
        assert printed[0].removeprefix("outputs/") in paths  # the CLI image is in the gallery at once
        assert len(paths) == 2
    app.state.studio.stop()


def test_cli_without_history_writes_files_only(workspace, capsys):
    root, model = workspace
    argv = ["txt2img", "a cat", "--model", str(model), "--precision", "fp32", "--seed", "1", "--steps", "1",
            "--width", "32", "--height", "32", "--no-history"]  # fmt: skip
    assert cli_main(argv) == 0
    assert (root / capsys.readouterr().out.strip()).is_file()
    assert not (root / "outputs" / "history.sqlite3").exists()


def test_lab_xyz_cell_is_the_same_png_as_the_cli_image(workspace, capsys):
    """A one-cell X/Y/Z plot runs the same request through the same service: the same file bytes."""
    root, model = workspace
    common = ["--model", str(model), "--precision", "fp32", "--seed", "77", "--steps", "2", "--width", "32",
              "--height", "32", "--sampler", "Euler", "--cfg-scale", "6.5", "--no-history"]  # fmt: skip
    assert cli_main(["txt2img", "a red heart", *common]) == 0
    plain = capsys.readouterr().out.strip()
    assert cli_main(["lab", "xyz", "a red heart", *common, "--x-type", "Seed", "--x-values", "77"]) == 0
    cells = [line.split()[-1] for line in capsys.readouterr().out.splitlines() if line.startswith("cell ")]
    assert len(cells) == 1 and cells[0] != plain
    assert (root / cells[0]).read_bytes() == (root / plain).read_bytes()
