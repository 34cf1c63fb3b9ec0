"""The command line answers before it loads anything it does not need (issue 32): help and png-info
without torch, bad flags before any model is read, and a warning for a size far from the model's."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from sdstudio.cli import main
from sdstudio.errors import SDStudioError

# rc of sdstudio.cli.main and whether torch got imported, in a fresh interpreter
PROBE = "import sys, json; from sdstudio.cli import main; rc = main(json.loads(sys.argv[1])); " \
        "print(json.dumps([rc, 'torch' in sys.modules]))"  # fmt: skip


def _probe(argv: list[str]) -> tuple[int, bool, str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argv)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    rc, torch = json.loads(out.stdout.strip().splitlines()[-1])
    return rc, torch, out.stderr


@pytest.fixture(autouse=True)
def no_studio(monkeypatch):
    """These commands run in this process, whatever listens on 127.0.0.1:7860."""
    monkeypatch.setenv("SDSTUDIO_SERVER", "")


@pytest.fixture
def png(tmp_path):
    info = PngInfo()
    info.add_text("parameters", "cat face\nSteps: 15, Sampler: DPM++ 2M, CFG scale: 7, Seed: 1, Size: 64x64")
    path = tmp_path / "cat.png"
    Image.new("RGB", (64, 64)).save(path, pnginfo=info)
    return path


@pytest.mark.parametrize(
    ("argv", "rc", "stderr"),
    [
        (["png-info", "PNG"], 0, ""),
        (["txt2img", "cat face", "--width", "70"], 2, "width must be a multiple of 8"),
        (["txt2img", "cat face", "--steps", "0"], 2, "steps must be between 1"),
        (["img2img", "cat face", "--init", "PNG", "--batch-size", "99"], 2, "batch_size must be between"),
        (["txt2img", "cat face", "--model", "no/such.safetensors"], 2, "no such file or folder"),
    ],
)
def test_answers_without_importing_torch(png, argv, rc, stderr):
    got_rc, torch, err = _probe([str(png) if a == "PNG" else a for a in argv])
    assert (got_rc, torch) == (rc, False), err
    assert stderr in err


def test_help_without_importing_torch():
    code = "import sys; from sdstudio.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120
    )
    assert out.stdout.strip() == "False", out.stderr


@pytest.fixture
def no_load(monkeypatch):
    """Loading a model is an error: a check that needs one comes too late."""

    def refuse(args):
        raise AssertionError("the model was loaded before the request was checked")

    monkeypatch.setattr("sdstudio.cli.common.load_model_from_args", refuse)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sampler", "Foo"], "unknown sampler 'Foo'"),
        (["--scheduler", "sideways"], "sideways"),
        (["--hires", "--hr-upscaler", "Foo"], "Foo"),
    ],
)
def test_bad_flags_fail_before_the_model_loads(no_load, capsys, argv, message):
    assert main(["txt2img", "cat face", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_far_size_warns_before_loading(monkeypatch, capsys):
    """The embedded model is 64 px: 512 px is noise, and the CLI says so before it starts."""

    def stop(args):
        raise SDStudioError("stopped at the load")

    monkeypatch.setattr("sdstudio.cli.common.load_model_from_args", stop)
    assert main(["txt2img", "cat face", "--width", "512", "--height", "512"]) == 2
    err = capsys.readouterr().err
    assert "warning: width 512 and height 512 is far from the model's native 64x64 px" in err
    assert err.index("warning") < err.index("stopped at the load")
    assert main(["txt2img", "cat face", "--width", "96"]) == 2  # within 2x: no warning
    assert "warning" not in capsys.readouterr().err


def test_embedded_models_defaults_are_known_before_loading():
    import argparse

    from sdstudio.cli.common import model_defaults_from_args
    from sdstudio.models.loader import default_model_path

    card = json.loads((default_model_path() / "sdstudio.json").read_text())
    d = model_defaults_from_args(argparse.Namespace(model=None))
    assert (d.size, d.steps, d.sampler) == (64, card["default_steps"], card["default_sampler"])


def test_samplers_ask_a_running_studio_without_torch(monkeypatch):
    """With a studio up, `sdstudio samplers` reads its table over HTTP and never imports torch."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    table = {"samplers": [{"name": "Euler", "aliases": ["k_euler"], "default_schedule": "Uniform",
                           "schedules": ["Uniform", "Karras"]}]}  # fmt: skip

    class Studio(BaseHTTPRequestHandler):
        def do_GET(self):
            body = {"/api/info": {"limits": {}}, "/api/samplers": table}[self.path]
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Studio)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("SDSTUDIO_SERVER", f"http://127.0.0.1:{httpd.server_port}")
        out = subprocess.run(
            [sys.executable, "-c", PROBE, json.dumps(["samplers"])],
            check=False, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        httpd.shutdown()
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "Euler (aliases: k_euler)" and "Automatic=Uniform, Uniform, Karras" in lines[1]
    assert json.loads(lines[-1]) == [0, False], out.stderr


def test_a_terminal_is_told_the_model_is_loading(monkeypatch, capsys):
    def stop(args):
        raise SDStudioError("stopped at the load")

    monkeypatch.setattr("sdstudio.cli.common.load_model_from_args", stop)
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    assert main(["txt2img", "cat face"]) == 2
    err = capsys.readouterr().err
    assert err.index("loading the embedded model") < err.index("stopped at the load")
