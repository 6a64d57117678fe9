"""ASGI middleware giving every HTTP error one shape and refusing oversize bodies before they are read.

BentoML answers its own input-validation failures (e.g. a missing form field) with its own JSON shape, and the
framework under it answers some errors in plain text (``405 Method Not Allowed``); this middleware rewrites
any 4xx/5xx body that is not already ``{"error": {"code", "message"}}`` into that shape, so clients parse one
format (HTML error pages excepted: those are for browsers). It never echoes request content back.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          413: "payload_too_large", 415: "unsupported_media_type", 422: "unprocessable", 429: "too_many_requests"}


def _code_and_message(status: int, body: bytes) -> tuple[str, str]:
    """Code and readable message for a foreign error body (BentoML's validation errors name the field)."""
    code = _CODES.get(status, "internal_error" if status >= 500 else "bad_request")
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        details = data.get("detail")
        if isinstance(details, list) and details and isinstance(details[0], dict):
            loc = ".".join(str(p) for p in details[0].get("loc", []) if p != "body")
            msg = str(details[0].get("msg", "invalid input"))
            if msg == "Field required" and loc:
                return "missing_field", (f"missing form field '{loc}': send the file as multipart/form-data, "
                                         f"e.g. curl -F {loc}=@photo.jpg")
            return code, f"{loc}: {msg}" if loc else msg
        if isinstance(data.get("error"), str) and status < 500:
            return code, data["error"]
    if status >= 500:
        return code, "internal error; the server log has the details (tracked by the response time and path)"
    if status == 405:
        return code, "this route does not accept this HTTP method (see /docs for each route's methods)"
    if status == 404:
        return code, "no such route (see /docs for the API)"
    return code, "invalid request"


class ErrorShapeMiddleware:
    """See the module docstring. ``max_body`` bytes (from Content-Length) are allowed per request."""

    def __init__(self, app: ASGIApp, max_body: int = 80 * 1024 * 1024) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            # Refuse before reading: a multipart body would otherwise be spooled to disk first.
            await _send_json(send, 413, "payload_too_large",
                             f"request body is {int(length)} bytes; the limit is {self.max_body} bytes")
            return

        state: dict[str, Any] = {"start": None, "body": b"", "rewrite": False}

        async def wrapped_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                ctype = dict(message.get("headers") or []).get(b"content-type", b"")
                state["rewrite"] = status >= 400 and not ctype.startswith(b"text/html")
                if not state["rewrite"]:
                    await send(message)
                    return
                state["start"] = message
                return
            if message["type"] == "http.response.body" and state["rewrite"]:
                state["body"] += message.get("body", b"")
                if message.get("more_body"):
                    return
                status = state["start"]["status"]
                body = state["body"]
                try:
                    parsed = json.loads(body)
                except ValueError:
                    parsed = None
                ok = isinstance(parsed, dict) and isinstance(parsed.get("error"), dict)
                if not ok:
                    code, text = _code_and_message(status, state["body"])
                    body = json.dumps({"error": {"code": code, "message": text}}).encode()
                hdrs = [(k, v) for k, v in state["start"].get("headers", [])
                        if k.lower() not in (b"content-length", b"content-type")]
                hdrs += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                await send({**state["start"], "headers": hdrs})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, wrapped_send)


async def _send_json(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
