"""Hostile text at the edge: lone surrogates, bracket bombs, Host headers (issue 13, items 1-3)."""

from __future__ import annotations

import json
import random

import pytest

from tests.server.conftest import FAST, wait_job

pytestmark = pytest.mark.security
SURROGATE = "a\ud800b"


def _raw(client, path: str, body: dict, **headers):
    """POST ``body`` as JSON with ``\\ud800`` escapes kept (valid JSON, invalid Unicode)."""
    data = json.dumps(body)  # ensure_ascii: the surrogate travels as the escape "\ud800"
    return client.post(path, content=data, headers={"content-type": "application/json", **headers})


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/sdapi/v1/txt2img", {"prompt": SURROGATE}, "prompt"),
        ("/sdapi/v1/img2img", {"prompt": "x", "negative_prompt": SURROGATE}, "negative_prompt"),
        ("/api/jobs/txt2img", {"prompt": SURROGATE}, "prompt"),
        ("/api/jobs/txt2img", {"styles": ["ok", SURROGATE]}, "styles.1"),
        ("/api/jobs/img2img", {"hr_prompt": SURROGATE}, "hr_prompt"),  # an unknown (extra) field
        ("/api/jobs/txt2img", {"override_settings": {"k": SURROGATE}}, "override_settings.k"),
        ("/sdapi/v1/options", {"sd_model_checkpoint": SURROGATE}, "sd_model_checkpoint"),
        ("/sdapi/v1/png-info", {"image": SURROGATE}, "image"),
        ("/api/models/select", {"name": SURROGATE}, "name"),
    ],
)
def test_lone_surrogate_is_a_422_naming_the_field(client, path, body, field):
    r = _raw(client, path, {**FAST, **body} if "jobs" in path or "2img" in path else body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field and "surrogate" in r.json()["detail"]


def test_no_stored_job_breaks_the_listing(client, studio_app):
    """A job whose text holds a surrogate (however it got there) is listed with the text escaped."""
    queue = studio_app.state.studio.queue
    job = queue.submit(lambda ctx: None, client="x", kind="txt2img", meta={"prompt": SURROGATE})
    job.wait(10)
    r = client.get("/api/jobs")
    assert r.status_code == 200
    listed = next(j for j in r.json()["jobs"] if j["id"] == job.id)
    assert listed["prompt"] == "a\\ud800b"
    assert client.get(f"/api/jobs/{job.id}").json()["prompt"] == "a\\ud800b"


@pytest.mark.parametrize(
    "prompt",
    ["[a:" * 300 + "b" + ":0.5]" * 300, "(" * 300 + "x" + ")" * 300, "[" * 5000],
)
def test_bracket_bomb_is_a_422_not_a_recursion_error(client, prompt):
    for path in ("/sdapi/v1/txt2img", "/api/jobs/txt2img"):
        r = client.post(path, json={**FAST, "prompt": prompt})
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "prompt" and "nested" in r.json()["detail"]
    r = client.post("/api/jobs/txt2img", json={**FAST, "negative_prompt": "[x:" * 30 + ":1]" * 30})
    assert r.status_code == 422 and r.json()["field"] == "negative_prompt"


def test_nesting_within_the_limit_still_generates(client):
    from sdstudio.prompts.schedule import MAX_NESTING

    prompt = "[a:" * MAX_NESTING + "b" + ":0.5]" * MAX_NESTING
    job = client.post("/api/jobs/txt2img", json={**FAST, "prompt": prompt, "seed": 3}).json()
    assert wait_job(client, job["id"])["state"] == "done"


def test_cli_bracket_bomb_is_a_clear_error(tmp_path, capsys):
    from sdstudio.cli import main

    prompt = "[a:" * 300 + "b" + ":0.5]" * 300
    assert main(["txt2img", prompt, "--steps", "1", "--outdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "nested 300 deep" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


REALISTIC = [
    "cat", "dog", "style: anime", "score: 9", "a hat", "(hat:1.2)", "((sky))", "[blue]", "[cat:dog:0.5]",
    "[red|green]", "[ in a box::0.3]", "[: at night:12]", "(a [b:c:0.4] d)", "\\(x\\)", "BREAK", "t: 12:30",
]  # fmt: skip
SOUP = ["a", "b", " ", "(", ")", "[", "]", ":", "|", "0.5", "3", "\\(", ",", "[a:b:0.5]", "[x|y]", "(c:1.2)"]


def _whole_prompt_schedule(prompt: str, steps: int):
    """The schedule from one Earley parse of the whole prompt (the code before issue 13)."""
    import lark

    from sdstudio.prompts import schedule as sch

    try:
        tree = sch._parser().parse(prompt)
    except lark.exceptions.LarkError:
        return [(steps, prompt)]
    return [(end, sch._text_at(tree, end)) for end in sch._switch_steps(tree, steps)]


def test_group_wise_parse_gives_the_whole_prompt_schedules():
    """Per-group parsing (linear time) = whole-prompt parsing on realistic prompts and bracket soup.

    Known difference (1 in 9,000 soups here): a stray top-level ``:`` beside nested groups, which the
    whole-prompt Earley parse resolves by leaving an inner ``[a:b:0.5]`` unparsed; skipped below.
    """
    from sdstudio.prompts.schedule import prompt_schedule

    rng = random.Random(13)
    tried = 0
    for _ in range(150):
        prompt = ", ".join(rng.choice(REALISTIC) for _ in range(rng.randint(1, 6)))
        steps = rng.choice([4, 20])
        assert prompt_schedule(prompt, steps) == _whole_prompt_schedule(prompt, steps), prompt
        soup = "".join(rng.choice(SOUP) for _ in range(rng.randint(1, 8)))
        if soup.rstrip().endswith(":") or "::" in soup:
            continue
        tried += 1
        assert prompt_schedule(soup, 4) == _whole_prompt_schedule(soup, 4), soup
    assert tried > 100


def test_long_bracketed_prompt_parses_group_by_group():
    """10,000 characters of editing groups: every group scheduled (one Earley parse took minutes)."""
    from sdstudio.prompts.schedule import prompt_schedule

    prompt = "word [a:b:0.5] (x:1.2) " * 430  # 9,890 characters, 430 groups
    (end1, first), (end2, last) = prompt_schedule(prompt, 20)
    assert (end1, end2) == (10, 20)
    assert first.count("word a (x:1.2)") == 430 and last.count("word b (x:1.2)") == 430


# -- Host header (DNS rebinding) -----------------------------------------------------------------


@pytest.fixture(scope="module")
def host_app(tmp_path_factory, tiny_sd1):
    from sdstudio.api import ServerSettings, create_app

    root = tmp_path_factory.mktemp("hosts")
    settings = ServerSettings(outdir=root / "out", models_dir=None, allowed_hosts=("studio.lan", ".home"))
    app = create_app(settings, models={"tiny": tiny_sd1})
    yield app
    app.state.studio.stop()


@pytest.mark.parametrize(
    "host",
    ["localhost", "localhost:7860", "127.0.0.1:7860", "[::1]:7860", "192.168.1.5:7860", "app.localhost",
     "studio.lan", "STUDIO.LAN:80", "pc.home", "studio.lan."],
)  # fmt: skip
def test_allowed_hosts_are_served(host_app, host):
    from fastapi.testclient import TestClient

    with TestClient(host_app, base_url=f"http://{host}") as c:
        assert c.get("/sdapi/v1/options").status_code == 200


@pytest.mark.parametrize(
    "host",
    ["evil.example", "evil.example:7860", "localhost.evil.example", "127.0.0.1.nip.io", "studio.lan.evil"],
)
def test_rebinding_hosts_get_403_on_every_route(host_app, host):
    from fastapi.testclient import TestClient

    with TestClient(host_app, base_url=f"http://{host}") as c:
        for method, path in [("GET", "/"), ("GET", "/api/jobs"), ("GET", "/api/history"),
                             ("POST", "/sdapi/v1/options"), ("POST", "/api/jobs/txt2img")]:  # fmt: skip
            origin = {"origin": f"http://{host}"}  # the attacker's page is same-origin with itself
            r = c.request(method, path, json={"CLIP_stop_at_last_layers": 3}, headers=origin)
            assert r.status_code == 403, (path, r.text)
            assert "not allowed" in r.json()["detail"] and "--allowed-hosts" in r.json()["detail"]
    assert host_app.state.studio.options.get("CLIP_stop_at_last_layers", 1) == 1


def test_listen_serves_the_lan_name_only_when_allowed(tmp_path, tiny_sd1):
    from fastapi.testclient import TestClient

    from sdstudio.api import ServerSettings, create_app

    for allowed, status in (((), 403), (("mypc.local",), 200)):
        settings = ServerSettings(
            outdir=tmp_path / "o", models_dir=None, host="0.0.0.0", allowed_hosts=allowed
        )
        with TestClient(
            create_app(settings, models={"tiny": tiny_sd1}), base_url="http://mypc.local:7860"
        ) as c:
            assert c.get("/api/info").status_code == status


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"origin": "http://evil.example"}, 403),
        ({"origin": "null"}, 403),
        ({"sec-fetch-site": "cross-site"}, 403),
        ({"sec-fetch-site": "same-site"}, 403),
        ({"origin": "http://testserver"}, 200),
        ({"sec-fetch-site": "same-origin"}, 200),
        ({}, 200),
    ],
)
def test_cross_site_requests(client, studio_app, headers, status):
    r = client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1}, headers=headers)
    assert r.status_code == status, r.text
