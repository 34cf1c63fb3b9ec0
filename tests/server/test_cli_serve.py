"""``sdstudio serve``: security rules for --listen, and the real command serving the UI and API."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx

from sdstudio.cli import main
from tests.server.conftest import free_port


def test_listen_requires_auth_or_insecure(capsys):
    assert main(["serve", "--listen"]) == 2
    assert "--api-auth" in capsys.readouterr().err
    assert main(["serve", "--api-auth", "nopass"]) == 2


def test_serve_tiny_vae_is_checked_at_start_and_reaches_the_manager(tmp_path, tiny_sd1, capsys):
    from sdstudio.api import create_app
    from sdstudio.cli import build_parser
    from sdstudio.cli.serve import build_settings
    from sdstudio.models.tiny_vae import save_tiny_vae, tiny_vae_for

    assert main(["serve", "--tiny-vae", str(tmp_path / "missing"), "--outdir", str(tmp_path)]) == 2
    assert "tiny VAE not found" in capsys.readouterr().err
    folder = save_tiny_vae(tiny_vae_for(tiny_sd1, channels=4, blocks=1), tmp_path / "taesd")
    args = build_parser().parse_args(["serve", "--tiny-vae", str(folder), "--outdir", str(tmp_path / "o")])
    settings = build_settings(args)
    assert settings.tiny_vae == folder
    app = create_app(settings)
    assert app.state.studio.manager.tiny_vae == str(folder)
    app.state.studio.stop()


def test_build_settings_rules(tmp_path):
    from sdstudio.cli import build_parser
    from sdstudio.cli.serve import build_settings

    parse = build_parser().parse_args
    s = build_settings(
        parse(
            [
                "serve",
                "--listen",
                "--api-auth",
                "u:p",
                "--outdir",
                str(tmp_path),
                "--max-size",
                "1024",
                "--max-prompt-chars",
                "50",
            ]
        )
    )
    assert (
        s.host == "0.0.0.0"
        and s.api_auth == (("u", "p"),)
        and s.limits.max_width == 1024
        and s.limits.max_prompt_chars == 50
    )
    s = build_settings(parse(["serve", "--listen", "--insecure"]))
    assert s.host == "0.0.0.0" and s.api_auth == ()
    s = build_settings(parse(["serve"]))
    assert (s.host, s.port, str(s.outdir), str(s.models_dir)) == ("127.0.0.1", 7860, "outputs", "models")


def test_serve_command_starts_and_serves(tmp_path):
    """The real command: starts with no model at all (the embedded one loads on the first job only)."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-c", "import sys; from sdstudio.cli import main; sys.exit(main())", "serve", "--port", str(port), "--outdir", str(tmp_path / "out"),
           "--models-dir", str(tmp_path / "models"), "--api-auth", "me:pw"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline, r = time.time() + 60, None
        while time.time() < deadline and proc.poll() is None:
            try:
                r = httpx.get(f"{url}/api/info", auth=("me", "pw"), timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert r is not None, proc.stdout.read() if proc.poll() is not None else "server did not answer"
        assert r.status_code == 200 and r.json()["auth"] is True
        assert httpx.get(f"{url}/", timeout=5).status_code == 401
        assert "sdstudio" in httpx.get(f"{url}/", auth=("me", "pw"), timeout=5).text
        assert (tmp_path / "out" / "history.sqlite3").exists()
    except AssertionError:
        proc.terminate()
        print(proc.communicate(timeout=10)[0][-3000:])
        raise
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
