"""Every number a request can carry is bounded at the edge (issue 33).

The table is built from the app itself: every route's body model (nested models included), query
and path parameters. A numeric field without a lower and an upper bound fails the first test; the
others send each bound +-1 (and NaN / Infinity to float fields) and expect a 422 naming the field,
before any work is done.
"""

from __future__ import annotations

import json
import math
import types
import typing

import pytest
from annotated_types import Ge, Gt, Le, Lt
from fastapi.routing import APIRoute
from PIL import Image
from pydantic import BaseModel

NUMBER_TYPES = (int, float)


def _numeric_type(annotation) -> type | None:
    """int or float when ``annotation`` is one (optionally ``| None``); bool is not a number here."""
    if annotation in NUMBER_TYPES:
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and args[0] in NUMBER_TYPES:
            return args[0]
    return None


def _bounds(metadata) -> tuple[float | None, float | None]:
    lo = hi = None
    for m in metadata:
        if isinstance(m, Ge):
            lo = m.ge
        elif isinstance(m, Gt):
            lo = m.gt
        elif isinstance(m, Le):
            hi = m.le
        elif isinstance(m, Lt):
            hi = m.lt
    return lo, hi


def _models(model: type[BaseModel], seen: set) -> list[type[BaseModel]]:
    """``model`` and every model its fields hold (lists and optionals included)."""
    if model in seen:
        return []
    seen.add(model)
    out = [model]
    for f in model.model_fields.values():
        stack = [f.annotation]
        while stack:
            t = stack.pop()
            if isinstance(t, type) and issubclass(t, BaseModel):
                out += _models(t, seen)
            stack += list(typing.get_args(t))
    return out


def _api_routes(routes) -> list[APIRoute]:
    """Every APIRoute, also inside included routers (FastAPI >= 0.16x keeps those as one entry)."""
    out = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            out += _api_routes(inner.routes)
        elif isinstance(route, APIRoute):
            out.append(route)
    return out


def _table(app) -> list[tuple[str, str, str, str, type, float | None, float | None]]:
    """``(method, path, where, field, type, low, high)`` for every numeric input of every route."""
    rows, seen = [], set()
    for route in _api_routes(app.routes):
        method = min(route.methods)
        dependant = route.dependant
        for param in (*dependant.query_params, *dependant.path_params):
            kind = _numeric_type(param.field_info.annotation)
            if kind is not None:
                where = "query" if param in dependant.query_params else "path"
                rows.append(
                    (method, route.path, where, param.name, kind, *_bounds(param.field_info.metadata))
                )
        for param in dependant.body_params:
            model = param.field_info.annotation
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                continue
            for m in _models(model, seen):
                for name, f in m.model_fields.items():
                    kind = _numeric_type(f.annotation)
                    if kind is not None:
                        rows.append(
                            (method, route.path, f"body:{m.__name__}", name, kind, *_bounds(f.metadata))
                        )
    return rows


@pytest.fixture(scope="module")
def full_app(tmp_path_factory, tiny_sd1):
    """The server as ``sdstudio serve`` builds it: A1111, studio and lab routes."""
    from sdstudio.api import ServerSettings, create_app
    from sdstudio.lab.routes import router
    from tests.server.conftest import TEST_HOSTS

    root = tmp_path_factory.mktemp("bounds")
    settings = ServerSettings(
        allowed_hosts=TEST_HOSTS, outdir=root / "outputs", models_dir=root / "models", preview_interval=0.0
    )
    app = create_app(settings, models={"tiny": tiny_sd1}, routers=[router])
    yield app
    app.state.studio.stop()


@pytest.fixture(scope="module")
def full_client(full_app):
    from fastapi.testclient import TestClient

    with TestClient(full_app) as c:
        yield c


def test_every_numeric_request_field_has_both_bounds(full_app):
    rows = _table(full_app)
    names = {(r[2], r[3]) for r in rows}
    # the walk sees what it must: A1111 bodies, lab bodies, query and path parameters
    for expected in [
        ("body:Txt2ImgRequest", "hr_second_pass_steps"),
        ("body:Txt2ImgRequest", "seed_resize_from_w"),
        ("body:Img2ImgRequest", "outpaint_left"),
        ("body:DemolishRequest", "seed"),
        ("body:StudyRequest", "first_seed"),
        ("query", "limit"),
    ]:
        assert expected in names, expected
    unbounded = [f"{r[0]} {r[1]} {r[2]}.{r[3]}" for r in rows if r[5] is None or r[6] is None]
    assert not unbounded, "numeric request fields without a lower and an upper bound:\n" + "\n".join(
        unbounded
    )


def _body_cases(app):
    """One request per (route, body field, bad value): just past each bound, and NaN/Infinity for floats."""
    for method, path, where, name, kind, lo, hi in _table(app):
        if not where.startswith("body:") or method != "POST" or "{" in path:
            continue
        step = 1 if kind is int else 1e-3
        bad = []
        if lo is not None:
            bad.append(lo - step if isinstance(lo, (int, float)) else None)
        if hi is not None:
            bad.append(hi + step if isinstance(hi, (int, float)) else None)
        if kind is float:
            bad += [math.nan, math.inf]
        for value in bad:
            if value is not None:
                yield path, where[5:], name, value


def test_values_past_every_bound_are_422_naming_the_field(full_client, full_app):
    cases = list(_body_cases(full_app))
    assert len(cases) > 60  # every bounded field of every POST body, both sides
    wrong = []
    for path, model, name, value in cases:
        body = json.dumps({name: value})  # NaN / Infinity as Python's json writes (and reads) them
        r = full_client.post(path, content=body, headers={"content-type": "application/json"})
        fields = [e.get("field") for e in r.json().get("errors", [])] if r.status_code == 422 else []
        if name not in fields:
            wrong.append(f"{path} {model}.{name}={value!r}: {r.status_code} {r.text[:160]}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    "body, field",
    [
        ({"seed_resize_from_w": 1_000_000, "seed_resize_from_h": 64}, "seed_resize_from_w"),
        ({"seed_resize_from_w": 64, "seed_resize_from_h": 4096}, "seed_resize_from_h"),  # over --max-height
        ({"enable_hr": True, "hr_second_pass_steps": 151}, "hr_second_pass_steps"),  # over --max-steps
        ({"enable_hr": True, "hr_second_pass_steps": -5}, "hr_second_pass_steps"),
        ({"enable_hr": True, "hr_scale": 1e308}, "hr_scale"),
        ({"enable_hr": True, "hr_scale": -1}, "hr_scale"),
        ({"enable_hr": True, "hr_resize_x": 100000}, "hr_resize_x"),
        ({"steps": 151}, "steps"),
        ({"batch_size": 9}, "batch_size"),
        ({"eta": -1}, "eta"),
        ({"override_settings": {"token_merging_ratio": "nan"}}, "token_merging_ratio"),
        ({"override_settings": {"CLIP_stop_at_last_layers": 1e308}}, "CLIP_stop_at_last_layers"),
    ],
)
def test_server_limits_hold_for_every_size_and_step_field(client, body, field):
    from tests.server.conftest import FAST

    r = client.post("/sdapi/v1/txt2img", json={**FAST, **body})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field, r.text


def test_hires_second_pass_within_max_steps_still_runs(client):
    from tests.server.conftest import FAST

    body = {**FAST, "width": 64, "height": 64, "enable_hr": True, "hr_scale": 1.0, "hr_second_pass_steps": 2}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    assert len(r.json()["images"]) == 1


def test_demolish_timesteps_are_capped(full_client):
    from sdstudio.lab.routes import MAX_DEMOLISH_TIMESTEPS
    from tests.server.conftest import png_b64

    image = png_b64(Image.new("RGB", (16, 16), "blue"))
    many = ",".join(str(t % 1000) for t in range(MAX_DEMOLISH_TIMESTEPS + 1))
    r = full_client.post("/api/lab/demolish", json={"image": image, "timesteps": many, "size": 16})
    assert r.status_code == 422 and r.json()["field"] == "timesteps", r.text
    r = full_client.post("/api/lab/demolish", json={"image": image, "timesteps": "1," * 1000, "size": 16})
    assert r.status_code == 422 and r.json()["field"] == "timesteps", r.text
    ok = ",".join(str(t * 30) for t in range(MAX_DEMOLISH_TIMESTEPS))
    r = full_client.post("/api/lab/demolish", json={"image": image, "timesteps": ok, "size": 16})
    assert r.status_code == 200, r.text
    assert len(r.json()["labels"]) == MAX_DEMOLISH_TIMESTEPS


@pytest.mark.parametrize(
    "body, field",
    [
        ({"kind": "custom", "variants": ["a cat", "x" * 1_000_000]}, "variants.1"),
        ({"kind": "word-order", "a": "girl\ud800"}, "a"),
        ({"kind": "word-order", "seeds": 10_000}, "seeds"),
    ],
)
def test_study_inputs_are_bounded_at_submit(full_client, body, field):
    payload = json.dumps(body)  # the lone surrogate travels as the JSON escape \\ud800
    r = full_client.post("/api/lab/study", content=payload, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text[:300]
    assert r.json()["field"] == field
    assert not [j for j in full_client.get("/api/jobs").json()["jobs"] if j["kind"] == "lab-study"]


def test_concept_names_are_plotted_as_text():
    from sdstudio.lab.report import plot_dominance

    stat = {"mean": 0.1, "lo": 0.0, "hi": 0.2}
    entry = {"variant": 0, "clip_margin_a_minus_b": stat, "attention_share_a": stat, "map_overlap": stat}
    image = plot_dominance({"dominance": [{**entry, "concepts": [r"$\frac$", r"$\undefinedcmd$"]}]})
    assert image.width > 100 and image.height > 100


def test_a_study_over_the_work_budget_is_refused_before_it_is_queued(tmp_path, tiny_sd1):
    from fastapi.testclient import TestClient

    from sdstudio.api import ServerSettings, create_app
    from sdstudio.config import Limits
    from sdstudio.lab.routes import router
    from tests.server.conftest import TEST_HOSTS

    settings = ServerSettings(
        allowed_hosts=TEST_HOSTS,
        outdir=tmp_path / "out",
        preview_interval=0.0,
        limits=Limits(max_job_steps=50),
    )
    app = create_app(settings, models={"tiny": tiny_sd1}, routers=[router])
    with TestClient(app) as c:
        body = {"kind": "custom", "variants": ["a cat", "a dog"], "seeds": 256, "steps": 50}
        r = c.post("/api/lab/study", json=body)
        assert r.status_code == 422 and r.json()["field"] == "max_job_steps", r.text
        assert not [j for j in c.get("/api/jobs").json()["jobs"] if j["kind"] == "lab-study"]
    app.state.studio.stop()


def test_zero_still_means_the_default_where_a1111_clients_send_it(client):
    from tests.server.conftest import FAST

    body = {**FAST, "clip_skip": 0, "enable_hr": True, "hr_scale": 0, "hr_resize_x": 64, "hr_resize_y": 64}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    assert "Clip skip" not in json.loads(r.json()["info"])["infotexts"][0]  # 0: the default (1)
