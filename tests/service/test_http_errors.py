"""service.http_errors: one error shape, oversize bodies refused before reading."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from service.http_errors import ErrorShapeMiddleware


async def _foreign(request: Request) -> JSONResponse:
    return JSONResponse({"error": "1 validation error", "detail": [{"loc": ["body", "image"], "msg": "Field required"}]},
                        status_code=400)


async def _ours(request: Request) -> JSONResponse:
    return JSONResponse({"error": {"code": "unsupported_dicom", "message": "no pixel data"}}, status_code=422)


async def _crash(request: Request) -> JSONResponse:
    return JSONResponse({"error": "An unexpected error has occurred, please check the server log."}, status_code=500)


async def _ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(len(await request.body())))


app = ErrorShapeMiddleware(Starlette(routes=[Route("/foreign", _foreign), Route("/ours", _ours),
                                             Route("/ok", _ok, methods=["POST"]), Route("/crash", _crash)]), max_body=100)
client = TestClient(app)


def test_foreign_error_body_is_rewritten() -> None:
    r = client.get("/foreign")
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "missing_field"
    assert "missing form field 'image'" in r.json()["error"]["message"]


def test_our_error_body_passes_through() -> None:
    r = client.get("/ours")
    assert r.status_code == 422 and r.json()["error"]["code"] == "unsupported_dicom"


def test_oversize_body_is_refused_and_small_one_passes() -> None:
    r = client.post("/ok", content=b"x" * 101)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    r = client.post("/ok", content=b"x" * 50)
    assert r.status_code == 200 and r.text == "50"
    assert client.get("/missing").status_code == 404


def test_server_errors_get_the_shape_without_details() -> None:
    r = client.get("/crash")
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    assert "server log" in r.json()["error"]["message"]


def test_plain_text_errors_of_the_framework_get_the_json_shape() -> None:
    from starlette.responses import PlainTextResponse
    from starlette.testclient import TestClient

    from service.http_errors import ErrorShapeMiddleware

    async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        await PlainTextResponse("Method Not Allowed", status_code=405, headers={"Allow": "GET"})(scope, receive, send)

    r = TestClient(ErrorShapeMiddleware(app)).post("/jobs/analyze_study/status")
    assert r.status_code == 405 and r.headers["content-type"] == "application/json"
    assert r.json()["error"]["code"] == "method_not_allowed" and r.headers["allow"] == "GET"
