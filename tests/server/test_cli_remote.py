"""`sdstudio txt2img` through a running studio (issue 32): the job runs on the server when one answers
at --server, with the same PNG bytes as the CLI makes in-process; --local and local-only flags keep it
here; errors are the server's one-line reasons."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest

from sdstudio.cli import build_parser, main
from tests.server.conftest import LiveServer

ARGS = [
    "a red heart",
    "--seed",
    "77",
    "--steps",
    "2",
    "--width",
    "32",
    "--height",
    "32",
    "--sampler",
    "Euler",
]


@pytest.fixture(scope="module")
def studio(tmp_path_factory, tiny_sd1):
    from sdstudio.api import ServerSettings, create_app
    from sdstudio.models.save import save_single_file

    root = tmp_path_factory.mktemp("remote")
    model = save_single_file(tiny_sd1, root / "tiny.safetensors")
    settings = ServerSettings(outdir=root / "outputs", models_dir=None, model=str(model), precision="fp32")
    app = create_app(settings)
    with LiveServer(app) as live:
        yield live, root, model
    app.state.studio.stop()


def _get(url: str) -> dict:
    req = urllib.request.Request(url, headers={"X-Client-Id": "sdstudio-cli"})
    return json.loads(urllib.request.urlopen(req).read())


def _gallery(url: str) -> int:
    return _get(url + "/api/history")["total"]


def test_txt2img_runs_on_the_studio_with_the_local_bytes(studio, monkeypatch, capsys):
    live, root, model = studio
    monkeypatch.chdir(root)
    before = _gallery(live.url)
    assert main(["txt2img", *ARGS, "--model", str(model), "--server", live.url]) == 0
    out, err = capsys.readouterr()
    (printed,) = out.split()
    assert printed.startswith("outputs/txt2img-images/") and (root / printed).is_file()
    job_id = re.search(r"job (\w+) on ", err).group(1)
    job = _get(f"{live.url}/api/jobs/{job_id}")
    assert job["client"] == "sdstudio-cli" and job["state"] == "done"
    assert _gallery(live.url) == before + 1  # the studio saved and recorded it
    # the same request in this process gives the same file, byte for byte
    assert main(["txt2img", *ARGS, "--model", str(model), "--local", "--precision", "fp32",
                 "--outdir", str(root / "local"), "--no-history"]) == 0  # fmt: skip
    out, err = capsys.readouterr()
    (local,) = out.split()
    assert (root / printed).read_bytes() == (root / local).read_bytes()
    assert "job " not in err and _gallery(live.url) == before + 1  # --local did not use the studio


def test_local_only_flags_and_unknown_models_stay_here(studio, tmp_path):
    from sdstudio.cli.remote import Remote, local_reason, model_title

    live, _, model = studio
    parse = build_parser().parse_args
    assert local_reason(parse(["txt2img", "x"])) is None
    assert local_reason(parse(["txt2img", "x", "--local"])) == "--local"
    assert "--outdir" in local_reason(parse(["txt2img", "x", "--outdir", "o"]))
    assert "--precision" in local_reason(parse(["txt2img", "x", "--precision", "fp32"]))
    remote = Remote(live.url)
    assert model_title(remote, str(model)) == model_title(remote, "tiny.safetensors") is not None
    assert model_title(remote, str(tmp_path / "other.safetensors")) is None
    assert model_title(remote, None) == "default-model"  # no --model: the embedded one, as locally


def test_server_errors_are_one_line(studio, monkeypatch, capsys):
    live, root, model = studio
    monkeypatch.chdir(root)
    before = _gallery(live.url)
    rc = main(["txt2img", "x", "--model", str(model), "--server", live.url, "--sampler", "Foo"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown sampler 'Foo'" in err and "Traceback" not in err
    assert main(["txt2img", "x", "--model", str(model), "--server", live.url, "--width", "70"]) == 2
    assert "width must be a multiple of 8" in capsys.readouterr().err
    assert _gallery(live.url) == before


def test_no_studio_runs_here():
    from sdstudio.cli.remote import Remote, try_remote
    from tests.server.conftest import free_port

    assert not Remote(f"http://127.0.0.1:{free_port()}").up()
    args = build_parser().parse_args(["txt2img", "x", "--server", f"http://127.0.0.1:{free_port()}"])
    assert try_remote(args) is None


def test_samplers_from_the_studio_match_the_local_table(studio, monkeypatch, capsys):
    live, _, _ = studio
    monkeypatch.setenv("SDSTUDIO_SERVER", "")
    assert main(["samplers"]) == 0
    local = capsys.readouterr().out
    assert main(["samplers", "--server", live.url]) == 0
    assert capsys.readouterr().out == local and "DPM++ 2M" in local and "schedules: Automatic=" in local


EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
EDITS = {
    "img2img": ["--init", str(EXAMPLES / "face.png"), "--denoising-strength", "0.6"],
    "inpaint": ["--init", str(EXAMPLES / "face.png"), "--mask", str(EXAMPLES / "mouth.png"), "--only-masked"],
    "outpaint": ["--init", str(EXAMPLES / "right.png"), "--left", "24"],
}


@pytest.mark.parametrize("verb", list(EDITS))
def test_image_to_image_verbs_run_on_the_studio_with_the_local_bytes(studio, monkeypatch, capsys, verb):
    live, root, model = studio
    monkeypatch.chdir(root)
    argv = [
        verb,
        "a face",
        *EDITS[verb],
        "--seed",
        "3",
        "--steps",
        "3",
        "--sampler",
        "Euler",
        "--model",
        str(model),
    ]
    assert main([*argv, "--server", live.url]) == 0
    out, err = capsys.readouterr()
    (printed,) = out.split()
    assert "job " in err and printed.startswith("outputs/img2img-images/")
    assert main([*argv, "--local", "--precision", "fp32", "--outdir", str(root / verb), "--no-history"]) == 0
    (local,) = capsys.readouterr().out.split()
    assert (root / printed).read_bytes() == (root / local).read_bytes()
