"""service.request_guard: Content-Type allow-list, boundary, body cap and multipart limits, while streaming."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from service.request_guard import (
    RequestGuardMiddleware,
    RequestLimits,
    RequestRejected,
    _QuietRejection,
    media_type,
)

BOUNDARY = "fovea-test-boundary"


class ReadingApp:
    """A stand-in for BentoML: reads the whole body (as starlette's form parser does), then answers 200.
    Like BentoML's endpoint it turns any exception into a 500."""

    def __init__(self) -> None:
        self.read = 0
        self.called = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.called = True
        try:
            while True:
                message = await receive()
                self.read += len(message.get("body", b""))
                if not message.get("more_body"):
                    break
        except Exception:  # noqa: BLE001 - what BentoML does
            await send({"type": "http.response.start", "status": 500, "headers": []})
            await send({"type": "http.response.body", "body": b'{"error": "unexpected"}'})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def call(path: str, headers: dict[str, str], chunks: list[bytes], limits: RequestLimits | None = None,
         method: str = "POST") -> tuple[int, dict[str, Any], ReadingApp, int]:
    """Run one request through the guard; return (status, json body, app, chunks consumed by receive)."""
    app = ReadingApp()
    guard = RequestGuardMiddleware(app, limits or RequestLimits(max_body=1000, max_parts=4, max_part_header=200,
                                                                 max_preamble=64))
    pending = list(chunks)
    consumed = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal consumed
        if not pending:
            return {"type": "http.request", "body": b"", "more_body": False}
        consumed += 1
        body = pending.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path,
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(guard(scope, receive, send))
    status = sent[0]["status"]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return status, json.loads(body) if body else {}, app, consumed


def part(name: str, data: bytes, filename: str | None = "photo.jpg") -> bytes:
    fn = f'; filename="{filename}"' if filename else ""
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"{fn}\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


MULTIPART = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


def test_a_well_formed_upload_passes_whatever_the_chunking() -> None:
    body = form(part("image", b"x" * 300), part("laterality", b"L", filename=None))
    for size in (1, 7, 64, len(body)):
        chunks = [body[i : i + size] for i in range(0, len(body), size)]
        status, _, app, _ = call("/analyze", MULTIPART, chunks)
        assert status == 200 and app.read == len(body), size


@pytest.mark.parametrize("ctype", ["application/vnd.bentoml+pickle", "Application/VND.BentoML+Pickle",
                                   "application/python-pickle", "application/x-python-pickle; charset=binary"])
@pytest.mark.parametrize("path", ["/analyze", "/info", "/some/other/route"])
def test_pickle_media_types_are_415_before_the_app_runs(ctype: str, path: str) -> None:
    status, body, app, consumed = call(path, {"content-type": ctype, "content-length": "10"}, [b"\x80\x05K\x01."])
    assert status == 415 and body["error"]["code"] == "unsupported_media_type" and "pickle" in body["error"]["message"]
    assert not app.called and consumed == 0


@pytest.mark.parametrize("ctype", ["text/html", "application/x-www-form-urlencoded", "application/octet-stream",
                                   "image/jpeg"])
def test_types_outside_the_allow_list_are_415(ctype: str) -> None:
    status, body, app, _ = call("/info", {"content-type": ctype, "content-length": "2"}, [b"{}"])
    assert status == 415 and not app.called and "multipart/form-data" in body["error"]["message"]


def test_json_is_allowed_where_no_file_is_taken_but_not_on_upload_routes() -> None:
    status, _, _, _ = call("/info", {"content-type": "application/json", "content-length": "2"}, [b"{}"])
    assert status == 200
    # {"image": "http://..."} would make BentoML download the URL (SSRF): uploads are multipart only.
    for path in ("/analyze", "/analyze_study", "/jobs/analyze_study/submit"):
        status, body, app, _ = call(path, {"content-type": "application/json", "content-length": "30"},
                                    [b'{"image": "http://10.0.0.1/x"}'])
        assert status == 415 and not app.called, path
        status, _, app, _ = call(path, {"content-length": "30"}, [b'{"image": "http://10.0.0.1/x"}'])
        assert status == 415 and not app.called, path


def test_a_get_without_body_passes() -> None:
    status, _, app, _ = call("/readyz", {}, [], method="GET")
    assert status == 200 and app.called


@pytest.mark.parametrize("boundary", ["", "a" * 71, "bad\x00boundary", "ends-with-space "])
def test_bad_boundaries_are_400(boundary: str) -> None:
    status, body, app, _ = call("/analyze", {"content-type": f'multipart/form-data; boundary="{boundary}"'}, [b""])
    assert status == 400 and "boundary" in body["error"]["message"] and not app.called


def test_70_character_boundary_is_accepted() -> None:
    b = "b" * 70
    data = f"--{b}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a\"\r\n\r\nxx\r\n--{b}--\r\n"
    status, _, _, _ = call("/analyze", {"content-type": f"multipart/form-data; boundary={b}"}, [data.encode()])
    assert status == 200


def test_declared_length_over_the_cap_is_413_before_reading() -> None:
    status, body, app, consumed = call("/analyze", {**MULTIPART, "content-length": "1001"}, [b"x" * 1001])
    assert status == 413 and body["error"]["code"] == "payload_too_large" and not app.called and consumed == 0


def test_chunked_body_over_the_cap_is_413_as_it_streams_not_after() -> None:
    # No Content-Length (chunked transfer): 100 chunks of 100 bytes against a 1000-byte cap. The guard must
    # stop the app at the 11th chunk, not after all 100.
    head = part("image", b"")[:-2]
    chunks = [head] + [b"x" * 100] * 100
    status, body, app, consumed = call("/analyze", {**MULTIPART, "transfer-encoding": "chunked"}, chunks)
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    assert consumed <= 12 and app.read < 1100


def test_too_many_parts_is_413_while_streaming() -> None:
    body = form(*[part("images", b"y") for _ in range(5)])
    status, body_json, app, _ = call("/analyze_study", MULTIPART, [body[i : i + 16] for i in range(0, len(body), 16)])
    assert status == 413 and "parts" in body_json["error"]["message"]


def test_endless_part_header_is_400() -> None:
    header = f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a\"\r\n".encode()
    chunks = [header] + [b"X-Junk: " + b"j" * 40 + b"\r\n"] * 20
    status, body, _, consumed = call("/analyze", MULTIPART, chunks)
    assert status == 400 and "part header" in body["error"]["message"] and consumed < 21


def test_long_preamble_and_epilogue_are_400() -> None:
    status, body, _, _ = call("/analyze", MULTIPART, [b"p" * 200 + form(part("image", b"z"))])
    assert status == 400 and "before the first" in body["error"]["message"]
    status, body, _, _ = call("/analyze", MULTIPART, [form(part("image", b"z")) + b"e" * 200])
    assert status == 400 and "after the closing" in body["error"]["message"]


def test_a_file_field_sent_as_text_is_refused() -> None:
    # BentoML would GET this URL from the server (SSRF).
    status, body, _, _ = call("/analyze", MULTIPART, [form(part("image", b"http://169.254.169.254/", None))])
    assert status == 400 and "must be a file upload" in body["error"]["message"]


def test_boundary_straddling_chunks_is_found() -> None:
    body = form(*[part("images", b"q" * 10) for _ in range(5)])
    # any chunking: the fifth part is still counted
    for size in (3, 5, 11, 29):
        status, _, _, _ = call("/analyze_study", MULTIPART, [body[i : i + size] for i in range(0, len(body), size)])
        assert status == 413, size


def test_media_type_parsing() -> None:
    assert media_type(b'Multipart/Form-Data; boundary="abc"; x=1') == ("multipart/form-data",
                                                                         {"boundary": "abc", "x": "1"})
    assert media_type(None) == ("", {})


def test_refusals_are_logged_without_a_traceback() -> None:
    record = logging.LogRecord("bentoml._internal.server.http_app", logging.ERROR, __file__, 1, "Exception on %s",
                               ("/analyze",), (RequestRejected, RequestRejected(413, "payload_too_large", "m"), None))
    assert _QuietRejection().filter(record) and record.exc_info is None and record.levelno == logging.INFO


def _chunked(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


@pytest.mark.parametrize(("path", "parts", "status", "code", "named"), [
    ("/analyze", [part("photo", b"x")], 400, "missing_field", "'image' is missing"),
    ("/analyze", [part("photo", b"x")], 400, "missing_field", "got 'photo'"),
    ("/analyze", [part("image", b"x"), part("extra", b"x")], 400, "unexpected_field", "'extra'"),
    ("/analyze", [part("image", b"x"), part("image", b"y")], 400, "bad_request", "'image' is given more than once"),
    ("/analyze_study", [part("images", b"x"), part("image", b"y")], 400, "unexpected_field", "'image'"),
    ("/analyze", [part("image", b"x"), part("laterality", b"L"), part("laterality", b"R", None)], 400,
     "bad_request", "'laterality' must be a text value"),
    ("/analyze", [part("image", b"x"), part("laterality", b"\xff\xd8\xff\xe0", None)], 400, "bad_request",
     "'laterality' must be text"),
    ("/analyze", [part("image", b"x"), part("laterality", b"L" * 1100, None)], 400, "bad_request",
     "'laterality' is longer than"),
    ("/info", [part("x", b"x")], 400, "unexpected_field", "/info takes no form fields, got 'x'"),
    ("/analyze", [part("", b"x"), part("image", b"x")], 400, "unexpected_field", "(a part without a name)"),
])
def test_the_form_shape_is_checked_per_route_whatever_the_chunking(path: str, parts: list[bytes], status: int,
                                                                   code: str, named: str) -> None:
    body = form(*parts)
    limits = RequestLimits(max_body=4000, max_parts=4, max_part_header=200, max_preamble=64)
    for size in (1, 5, 64, len(body)):
        got, answer, _, _ = call(path, MULTIPART, _chunked(body, size), limits)
        assert (got, answer["error"]["code"]) == (status, code), (size, answer)
        assert named in answer["error"]["message"], (size, answer)


def test_a_study_takes_many_images_and_one_laterality_list() -> None:
    body = form(part("images", b"a"), part("images", b"b"), part("laterality", b"R,L", None))
    for size in (1, 3, len(body)):
        status, _, app, _ = call("/analyze_study", MULTIPART, _chunked(body, size))
        assert status == 200 and app.read == len(body), size


@pytest.mark.parametrize(("body", "message"), [
    (part("image", b"x"), "ends before its closing boundary"),  # no closing delimiter
    (b"no delimiter at all", "no part delimited by the boundary"),
    (b"--other\r\n\r\nx\r\n--other--\r\n", "no part delimited by the boundary"),  # another boundary
])
def test_a_body_that_does_not_close_is_400(body: bytes, message: str) -> None:
    status, answer, _, _ = call("/analyze", MULTIPART, [body])
    assert status == 400 and message in answer["error"]["message"]


def test_an_unprintable_field_name_is_shown_safely() -> None:
    status, answer, _, _ = call("/analyze", MULTIPART, [form(part("image", b"x"), part("a\x01b" + "c" * 60, b"y"))])
    assert status == 400 and "'a?b" in answer["error"]["message"] and "…'" in answer["error"]["message"]
