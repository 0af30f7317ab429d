"""One error hierarchy, four documented shapes: each route family's bodies for the same kinds of
failure (bad field, unknown resource, wrong method, no key, over quota), from the real app."""

from __future__ import annotations

import base64

import httpx
import pytest

from conftest import disk_image, png_bytes

pytestmark = pytest.mark.serve

JOB = "00000000-0000-4000-8000-000000000000"
PNG64 = base64.b64encode(png_bytes(disk_image(8, 8))).decode()


def shape(body: dict) -> str:
    if set(body) == {"message"}:
        return "message"
    if set(body) == {"detail"}:
        return "detail"
    if set(body.get("error", {})) == {"code", "message", "request_id"}:
        return "code"
    if set(body.get("error", {})) == {"type", "message", "details"}:
        return "type"
    return f"unknown: {body}"


@pytest.mark.parametrize("method, path, kwargs, status, family", [
    # spec 000, Image API v1: {"message"}; a bad form field is a 422 there
    ("POST", "/image/blur/v1", {"files": {"image": ("a.png", b"x", "image/png")},
                                "data": {"blur_strength": "strong"}}, 422, "message"),
    ("GET", "/image/matte/v1", {}, 405, "message"),
    # spec 000, HD and video: {"detail"}; 400 for bad fields, 404 for unknown tasks
    ("POST", "/image/hd/submit/v1", {"files": {"nope": ("a", b"x")}}, 400, "detail"),
    ("POST", "/video/submit/v1", {"files": {"video": ("a", b"x")},
                                  "data": {"bg_color": "red"}}, 400, "detail"),
    ("GET", f"/video/result/{JOB}", {}, 404, "message"),  # spec: {"message","status"} (below)
    ("GET", f"/image/hd/result/{JOB}", {}, 404, "detail"),
    # specs 001/002: {"error": {"code","message","request_id"}}; no 422 there
    ("POST", "/v1/jobs", {"json": {"image_url": 5}}, 400, "code"),
    ("POST", "/v1/jobs", {"content": b"{not json", "headers": {"content-type": "application/json"}},
     400, "code"),
    ("GET", f"/v1/jobs/{JOB}", {}, 404, "code"),
    ("DELETE", f"/v1/jobs/{JOB}", {}, 405, "code"),
    ("GET", "/api/download/x", {}, 404, "code"),
    # spec 003: {"error": {"type","message","details"}}
    ("POST", "/remove-background", {"json": {"image": 5}}, 400, "type"),
    ("POST", "/upscale", {"json": {"image": PNG64, "scale_factor": 3}}, 400, "type"),
    ("GET", "/no/such/route", {}, 404, "type"),
])
def test_each_family_has_its_shape(client, method, path, kwargs, status, family):
    resp = client.request(method, path, **kwargs)
    body = resp.json()
    if path.startswith("/video/result/"):  # the one 404 spec 000 writes with two fields
        assert (resp.status_code, body) == (404, {"message": "Task not found",
                                                  "status": "not_found"})
        return
    assert resp.status_code == status, body
    assert shape(body) == family, body
    if family == "code":
        assert body["error"]["request_id"] == resp.headers["X-Request-ID"]
    if family == "type" and status == 400:
        assert body["error"]["type"] == "validation_error" and "field" in body["error"]["details"]


def test_pydantic_failures_never_leak_the_framework_body(client):
    """FastAPI's own 422 body ({"detail": [ {loc, msg, type}... ]}) never reaches a client."""
    for method, path, kwargs in [
        ("POST", "/v1/jobs", {"json": {"auto_start": {"x": 1}}}),
        ("POST", "/log-selection", {"json": {"job_id": []}}),
        ("GET", "/selections/stats", {"params": {"category": "x" * 500}}),
        ("POST", "/image/shadow/v1", {"files": {"image": ("a.png", b"x")},
                                      "data": {"shadow_offset_x": "far"}}),
    ]:
        body = client.request(method, path, **kwargs).json()
        assert not isinstance(body.get("detail"), list), (path, body)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_a_non_finite_number_is_refused_not_a_500(client, value):
    """Python's JSON reader takes NaN and Infinity; echoed back as the value received, they made
    the error body itself unencodable (found by bench_reliability's fuzz: 500s)."""
    for path, body in [("/upscale", f'{{"image": "{PNG64}", "scale_factor": {value}}}'),
                       ("/process", f'{{"image": "{PNG64}", "upscale_factor": {value}}}'),
                       ("/log-selection", f'{{"job_id": {value}}}'),
                       ("/v1/jobs", f'{{"image_url": {value}}}')]:
        resp = client.post(path, content=body, headers={"content-type": "application/json"})
        assert resp.status_code == 400, (path, resp.status_code, resp.text[:200])
        assert shape(resp.json()) in ("type", "code"), resp.json()


def test_401_and_429_per_family(base_url):
    with httpx.Client(base_url=base_url, timeout=30) as anonymous:
        shapes = {p: shape(anonymous.request(m, p).json()) for m, p in [
            ("POST", "/image/matte/v1"), ("POST", "/image/hd/submit/v1"),
            ("GET", f"/v1/jobs/{JOB}"), ("POST", "/remove-background")]}
    assert shapes == {"/image/matte/v1": "message", "/image/hd/submit/v1": "detail",
                      f"/v1/jobs/{JOB}": "code", "/remove-background": "type"}


@pytest.mark.parametrize("path, family", [("/image/matte/v1", "message"),
                                          ("/image/hd/submit/v1", "detail"),
                                          ("/video/submit/v1", "detail"),
                                          ("/v1/jobs", "code"), ("/api/upload", "code"),
                                          ("/remove-background", "type")])
def test_dependency_failures_per_family(path, family):
    """A database outage is 503 + Retry-After, full storage 507, in each family's shape
    (test_dependencies.py drives the real outage; these are the bodies it relies on)."""
    import json

    from starlette.requests import Request

    from serve_app.core.errors import DependencyUnavailable, StorageUnavailable
    from serve_app.errors import render

    def rendered(exc):
        request = Request({"type": "http", "method": "POST", "path": path, "root_path": "",
                           "headers": [], "query_string": b""})
        response = render(request, exc)
        return response.status_code, response.headers, json.loads(response.body)

    status, headers, body = rendered(DependencyUnavailable(
        "the job database cannot be reached right now; retry in a few seconds.",
        {"dependency": "database", "retry_after_s": 5}))
    assert status == 503 and headers["retry-after"] == "5" and shape(body) == family
    if family == "code":
        assert body["error"]["code"] == "service_unavailable"
    if family == "type":
        assert body["error"]["type"] == "service_unavailable"
    status, headers, body = rendered(StorageUnavailable(
        "storage is full (no space left on device); nothing was stored.",
        {"dependency": "storage", "reason": "full"}))
    assert status == 507 and "retry-after" not in headers and shape(body) == family
    if family == "code":
        assert body["error"]["code"] == "insufficient_storage"
    if family == "type":
        assert body["error"]["type"] == "insufficient_storage"
