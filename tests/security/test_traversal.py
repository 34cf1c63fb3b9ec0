"""Path traversal on every route that serves a file: /api/images/{path}, /static/{path}, /."""

from __future__ import annotations

import pytest
from PIL import Image

pytestmark = pytest.mark.security
SECRET = b"TOP-SECRET-NOT-AN-OUTPUT"


@pytest.fixture(scope="module")
def planted(studio_app):
    """A secret file beside the outputs folder, a symlink to it inside, and a real saved image."""
    outdir = studio_app.state.studio.outdir
    secret = outdir.parent / "secret.png"
    secret.write_bytes(SECRET)
    (outdir / "txt2img-images").mkdir(parents=True, exist_ok=True)
    link = outdir / "txt2img-images" / "link.png"
    if not link.exists():
        link.symlink_to(secret)
    Image.new("RGB", (8, 8)).save(outdir / "txt2img-images" / "real.png")
    return secret


ATTACKS = [
    "../secret.png", "..%2fsecret.png", "%2e%2e/secret.png", "%2e%2e%2fsecret.png", "..%252fsecret.png",
    "txt2img-images/../../secret.png", "txt2img-images/..%2f..%2fsecret.png", "/etc/passwd", "%2fetc%2fpasswd",
    "//etc/passwd", "..\\secret.png", "..%5csecret.png", "txt2img-images/link.png", "history.sqlite3",
    "real.png%00.png", "txt2img-images/real.png/../../../secret.png", "....//secret.png", "%c0%ae%c0%ae/secret.png",
    "txt2img-images/./../../secret.png", "~/secret.png",
]  # fmt: skip


@pytest.mark.parametrize("prefix", ["/api/images/", "/static/", "/static/../", "/"])
def test_no_file_outside_its_folder_is_served(client, planted, prefix):
    for attack in ATTACKS:
        r = client.get(prefix + attack)
        assert SECRET not in r.content, (prefix, attack)
        assert r.status_code in (400, 403, 404, 405, 422), (prefix, attack, r.status_code)
        assert b"root:" not in r.content


def test_a_real_output_is_served(client, planted):
    r = client.get("/api/images/txt2img-images/real.png")
    assert r.status_code == 200 and r.content[:4] == b"\x89PNG"


def test_history_and_job_routes_refuse_odd_ids(client):
    for path in ("/api/history/../../etc", "/api/history/-1", "/api/jobs/..%2f..", "/api/jobs/x/preview"):
        r = client.get(path)
        assert r.status_code in (404, 422), (path, r.status_code)
    assert client.delete("/api/history/999999").status_code == 404
