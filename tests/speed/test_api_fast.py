"""The A1111 ``s_min_uncond`` field, ``token_merging_ratio`` and sdstudio's ``fast`` through the real HTTP app."""

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


def test_token_merging_ratio_through_override_settings_and_the_field(client):  # noqa: F811
    body = {**FAST, "steps": 4, "sampler_name": "DPM++ 2M", "seed": 5}
    plain = client.post("/sdapi/v1/txt2img", json=body)
    half = {"token_merging_ratio": 0.5}
    option = client.post("/sdapi/v1/txt2img", json={**body, "override_settings": half})
    field = client.post("/sdapi/v1/txt2img", json={**body, **half})
    assert plain.status_code == option.status_code == field.status_code == 200
    assert "Token merging ratio: 0.5" in info(option) and "Token merging" not in info(plain)
    assert not any("token_merging_ratio" in w for w in option.json()["warnings"])  # honoured, not ignored
    assert option.json()["images"][0] == field.json()["images"][0] != plain.json()["images"][0]
    for bad in ({"token_merging_ratio": 0.95}, {"override_settings": {"token_merging_ratio": "half"}}):
        r = client.post("/sdapi/v1/txt2img", json={**body, **bad})
        assert r.status_code == 422 and r.json()["field"] == "token_merging_ratio"


def test_token_merging_ratio_as_a_server_option(client):  # noqa: F811
    body = {**FAST, "steps": 2, "seed": 5}
    assert client.post("/sdapi/v1/options", json={"token_merging_ratio": 1.5}).status_code == 422
    assert client.post("/sdapi/v1/options", json={"token_merging_ratio": 0.5}).status_code == 200
    try:
        assert client.get("/sdapi/v1/options").json()["token_merging_ratio"] == 0.5
        assert "Token merging ratio: 0.5" in info(client.post("/sdapi/v1/txt2img", json=body))
        off = {**body, "override_settings": {"token_merging_ratio": 0}}  # the request's own value wins
        assert "Token merging" not in info(client.post("/sdapi/v1/txt2img", json=off))
    finally:
        client.post("/sdapi/v1/options", json={"token_merging_ratio": 0.0})
