"""ASGI middleware that refuses hostile HTTP requests before BentoML parses them.

Contract
--------
:class:`RequestGuardMiddleware` sits in front of the BentoML app and, for every HTTP request:

1. **Content-Type allow-list** (checked from the headers, before any body byte is read). A pickle media type
   (``application/vnd.bentoml+pickle``, ``application/python-pickle``, anything naming pickle) is ``415``:
   BentoML deserialises ``application/vnd.bentoml+pickle`` bodies with ``pickle.loads`` (CVE-2024-2912,
   CVE-2025-27520, CVE-2025-32375: unauthenticated remote code execution), and it only refuses it itself in
   the entry service and by an exact, case-sensitive comparison. Any other type outside
   :data:`ALLOWED_MEDIA_TYPES` is ``415`` too. The upload routes (:data:`UPLOAD_ROUTES`) accept
   ``multipart/form-data`` only: BentoML would read a JSON or url-encoded ``image`` string as a URL and
   download it (server-side request forgery, CVE-2025-54381).
2. **Multipart boundary** (headers): present, 1-70 characters from RFC 2046 section 5.1.1's ``bchars``;
   else ``400``.
3. **Body cap while streaming**: a declared ``Content-Length`` over ``max_body`` is ``413`` before reading;
   a chunked body (no length) is counted as it streams and refused with ``413`` as soon as it passes
   ``max_body``, without reading the rest.
4. **Multipart structure while streaming** (the parts are inspected as the bytes pass; nothing is buffered
   beyond one part header): at most ``max_parts`` parts, each part header block at most
   ``max_part_header`` bytes (python-multipart had CPU-exhaustion bugs on huge or endless part headers:
   CVE-2026-42561), at most ``max_preamble`` bytes before the first boundary (CVE-2026-40347), and a field
   named in :data:`FILE_FIELDS` must be a file part (``filename=`` in its Content-Disposition): a text
   field there is the same URL download as above. Violations are ``400`` (``413`` for too many parts).

Every refusal is the project's JSON error shape ``{"error": {"code", "message"}}``; messages name limits and
header values we control, never request content. Requests without a body (GET, an empty POST) pass the
Content-Type check only when they declare a type (a pickle type is refused whatever the method).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Final

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Media types the service's routes read. multipart/related, application/dicom and application/dicom+json are
#: DICOMweb's (PS3.18 STOW-RS request bodies); text/plain is what BentoML's own page sends for no-input APIs.
ALLOWED_MEDIA_TYPES: Final = frozenset(
    {"multipart/form-data", "application/json", "multipart/related", "application/dicom",
     "application/dicom+json"}
)
#: Routes that take uploaded files: multipart/form-data only (see the module docstring, item 1).
UPLOAD_ROUTES: Final = frozenset({"/analyze", "/analyze_study", "/jobs/analyze_study/submit"})
#: Form fields that must be file parts (a text value would be downloaded by BentoML as a URL).
FILE_FIELDS: Final = frozenset({"image", "images"})
# RFC 2046 5.1.1: boundary := 0*69<bchars> bcharsnospace; bchars are DIGIT / ALPHA / '()+_,-./:=? and space.
_BOUNDARY_RE: Final = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_NAME_RE: Final = re.compile(rb'(?i)content-disposition:[^\r\n]*?[;\s]name="?([^";\r\n]*)')
_FILENAME_RE: Final = re.compile(rb'(?i)content-disposition:[^\r\n]*?[;\s]filename\*?=')

log = logging.getLogger("fovea")


@dataclass(frozen=True, kw_only=True)
class RequestLimits:
    """Limits of :class:`RequestGuardMiddleware` (see the module docstring)."""

    max_body: int = 64 * 1024 * 1024
    max_parts: int = 64
    max_part_header: int = 8 * 1024
    max_preamble: int = 1024


class RequestRejected(Exception):
    """Raised from the wrapped ``receive`` when the streaming body breaks a limit; carries the response."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class _QuietRejection(logging.Filter):
    """BentoML logs a traceback for any exception its endpoint sees; ours is a refusal, not a fault: one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], RequestRejected):
            exc = record.exc_info[1]
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "request refused while streaming: %s %s", (exc.status, exc.code)
        return True


_FILTER = _QuietRejection()


def media_type(value: bytes | None) -> tuple[str, dict[str, str]]:
    """``(type/subtype lower-cased, parameters)`` of a Content-Type header value (``("", {})`` if absent)."""
    if not value:
        return "", {}
    text = value.decode("latin-1")
    head, _, rest = text.partition(";")
    params: dict[str, str] = {}
    for item in rest.split(";"):
        key, sep, val = item.partition("=")
        if sep:
            val = val.strip()
            if len(val) >= 2 and val[0] == val[-1] == '"':
                val = val[1:-1]
            params[key.strip().lower()] = val
    return head.strip().lower(), params


def check_headers(scope: Scope, limits: RequestLimits) -> tuple[int, str, str] | None:
    """The refusal ``(status, code, message)`` the request's headers alone call for, else ``None``."""
    headers = dict(scope.get("headers") or [])
    ctype, params = media_type(headers.get(b"content-type"))
    path = str(scope.get("path", ""))
    length = headers.get(b"content-length")
    has_body = (length is not None and length.strip() not in (b"", b"0")) or b"transfer-encoding" in headers
    if "pickle" in ctype:
        # Security: BentoML unpickles these bodies (remote code execution, see the module docstring).
        return 415, "unsupported_media_type", f"Content-Type {ctype[:64]} is not accepted (no pickle, ever)"
    if ctype and ctype not in ALLOWED_MEDIA_TYPES:
        # Security: an allow-list, not a deny-list: only the parsers our routes need are ever reached.
        return 415, "unsupported_media_type", (
            f"Content-Type {ctype[:64]} is not accepted; send multipart/form-data (curl -F image=@photo.jpg)")
    if path in UPLOAD_ROUTES and (has_body or ctype) and ctype != "multipart/form-data":
        # Security: a JSON / url-encoded file field is fetched by BentoML as a URL (SSRF): uploads are multipart.
        return 415, "unsupported_media_type", (
            f"{path} takes multipart/form-data uploads only (curl -F image=@photo.jpg), not {ctype or 'no type'}")
    if ctype == "multipart/form-data":
        boundary = params.get("boundary", "")
        if not _BOUNDARY_RE.fullmatch(boundary):
            # RFC 2046 5.1.1: 1-70 bchars. A long boundary makes every delimiter search costlier.
            return 400, "bad_request", "multipart/form-data needs a boundary of 1-70 characters (RFC 2046)"
    if length is not None:
        if not length.strip().isdigit():
            return 400, "bad_request", "Content-Length is not a number"
        if int(length) > limits.max_body:
            # Refuse before reading: a multipart body would otherwise be spooled to disk first.
            return 413, "payload_too_large", (
                f"request body is {int(length)} bytes; the limit is {limits.max_body} bytes")
    return None


class _MultipartScanner:
    """Incremental multipart/form-data structure check (see the module docstring, item 4).

    Feeds on the body chunk by chunk; keeps at most one delimiter length of carry-over plus one part header.
    The boundary never occurs inside a part (RFC 2046 5.1.1), so a delimiter match is a real delimiter.
    """

    def __init__(self, boundary: str, limits: RequestLimits) -> None:
        self.delimiter = b"--" + boundary.encode("latin-1")
        self.limits = limits
        self.pending = b""  # unconsumed bytes: a possible partial delimiter, or the part header so far
        self.offset = 0  # absolute body offset of pending[0]
        self.in_header = False
        self.parts = 0
        self.seen_delimiter = False
        self.closed = False
        self.epilogue = 0

    def feed(self, chunk: bytes) -> None:
        if self.closed:
            self._epilogue(len(chunk))
            return
        data, self.pending = self.pending + chunk, b""
        while data and not self.closed:
            if self.in_header:
                end = data.find(b"\r\n\r\n")
                if (end if end >= 0 else len(data)) > self.limits.max_part_header:
                    raise RequestRejected(400, "bad_request", (
                        f"a multipart part header is longer than {self.limits.max_part_header} bytes"))
                if end < 0:
                    self.pending = data  # bounded by max_part_header
                    return
                self._part_header_done(data[:end])
                self.in_header = False
                self.offset += end + 4
                data = data[end + 4 :]
                continue
            at = data.find(self.delimiter)
            if at < 0:
                if not self.seen_delimiter and self.offset + len(data) > self.limits.max_preamble + len(
                        self.delimiter) + 2:
                    raise RequestRejected(400, "bad_request", (
                        f"more than {self.limits.max_preamble} bytes before the first multipart boundary"))
                keep = min(len(data), len(self.delimiter) + 1)  # a delimiter may straddle two chunks
                self.offset += len(data) - keep
                self.pending = data[len(data) - keep :]
                return
            if not self.seen_delimiter:
                if self.offset + at > self.limits.max_preamble:
                    raise RequestRejected(400, "bad_request", (
                        f"more than {self.limits.max_preamble} bytes before the first multipart boundary"))
                self.seen_delimiter = True
            after = at + len(self.delimiter)
            if len(data) - after < 2:  # cannot tell a close delimiter from a part yet
                self.offset += at
                self.pending = data[at:]
                return
            if data[after : after + 2] == b"--":
                self.closed = True  # close delimiter; parsers ignore the epilogue, but it costs them CPU
                self._epilogue(len(data) - after - 2)
                return
            self.parts += 1
            if self.parts > self.limits.max_parts:
                raise RequestRejected(413, "payload_too_large", (
                    f"the multipart body has more than {self.limits.max_parts} parts"))
            self.in_header = True
            self.offset += after
            data = data[after:]

    def _epilogue(self, n: int) -> None:
        self.epilogue += n
        if self.epilogue > self.limits.max_preamble:
            raise RequestRejected(400, "bad_request", (
                f"more than {self.limits.max_preamble} bytes after the closing multipart boundary"))

    def _part_header_done(self, header: bytes) -> None:
        # header starts with the rest of the delimiter line (transport padding, CRLF), then the part's headers.
        name = _NAME_RE.search(header)
        field = name.group(1).decode("latin-1") if name else ""
        if field in FILE_FIELDS and not _FILENAME_RE.search(header):
            # Security: BentoML downloads a text value of a file field as a URL (SSRF): files only.
            raise RequestRejected(400, "bad_request", (
                f"form field '{field}' must be a file upload (curl -F {field}=@photo.jpg), not a text value"))


class RequestGuardMiddleware:
    """See the module docstring. ``limits``: the :class:`RequestLimits` (keyword arguments also accepted)."""

    def __init__(self, app: ASGIApp, limits: RequestLimits | None = None, **kwargs: Any) -> None:
        self.app = app
        self.limits = limits or RequestLimits(**kwargs)
        logging.getLogger("bentoml._internal.server.http_app").addFilter(_FILTER)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = check_headers(scope, self.limits)
        if refusal is not None:
            log.info("request refused: %s %s", refusal[0], refusal[1])
            await send_error(send, *refusal)
            return

        ctype, params = media_type(dict(scope.get("headers") or []).get(b"content-type"))
        scanner = _MultipartScanner(params["boundary"], self.limits) if ctype == "multipart/form-data" else None
        state: dict[str, Any] = {"received": 0, "rejected": None, "started": False}

        async def guarded_receive() -> Message:
            if state["rejected"] is not None:
                raise state["rejected"]
            message = await receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                state["received"] += len(body)
                try:
                    if state["received"] > self.limits.max_body:
                        # Security: counted as it streams: a chunked body has no Content-Length to check.
                        raise RequestRejected(413, "payload_too_large", (
                            f"request body exceeds the limit of {self.limits.max_body} bytes"))
                    if scanner is not None and body:
                        scanner.feed(body)
                except RequestRejected as exc:
                    state["rejected"] = exc
                    raise
            return message

        async def guarded_send(message: Message) -> None:
            if state["rejected"] is not None:
                return  # the app's answer to our exception is replaced by the refusal below
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except RequestRejected:
            pass  # answered below
        exc = state["rejected"]
        if exc is not None:
            log.info("request refused while streaming: %s %s", exc.status, exc.code)
            if not state["started"]:
                await send_error(send, exc.status, exc.code, exc.message)


async def send_error(send: Send, status: int, code: str, message: str) -> None:
    """Send one complete JSON error response in the project's shape; closes the connection."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
