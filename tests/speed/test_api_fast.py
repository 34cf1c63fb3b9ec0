"""The A1111 ``s_min_uncond`` field and sdstudio's ``fast`` option through the real HTTP app."""

from __future__ import annotations

import json

from tests.server.conftest import FAST, client, studio_app  # noqa: F401 (fixtures)


def info(r) -> str:
    return json.loads(r.json()["info"])["infotexts"][0]


def test_s_min_uncond_is_honoured_not_refused(client):  # noqa: F811
    body = {**FAST, "steps": 6, "sampler_name": "DPM++ 2M", "seed": 5}
    plain = client.post("/sdapi/v1/txt2img", json=body)
    ngms = client.post("/sdapi/v1/txt2img", json={**body, "s_min_uncond": 2.0})
    fast = client.post("/sdapi/v1/txt2img", json={**body, "fast": True})
    assert plain.status_code == ngms.status_code == fast.status_code == 200
    assert "NGMS: 2" in info(ngms) and "NGMS" not in info(plain)
    assert "Fast: True" in info(fast) and "Fast" not in info(plain)
    assert ngms.json()["images"][0] != plain.json()["images"][0]  # the uncond pass was skipped
    bad = client.post("/sdapi/v1/txt2img", json={**body, "s_min_uncond": -1})
    assert bad.status_code == 422 and bad.json()["field"] == "s_min_uncond"
