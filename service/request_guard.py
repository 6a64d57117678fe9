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
5. **The form's shape** (:data:`FORMS`, per route): every part names a field the route takes, a single-valued
   field comes once, a text field is a short UTF-8 value without ``filename=``, and the required file field is
   there when the body closes (``missing_field``; a field the route does not take is ``unexpected_field``);
   a form-data body on any other route has no fields at all. BentoML's form reader
   would answer these with a 500 (it JSON-decodes an unexpected binary part) or silently keep one of two
   ``image`` parts; here each is a ``400`` naming the field and what the route takes.

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
#: The longest text value a form field takes (a laterality list for a study of many photographs fits).
MAX_TEXT_FIELD: Final = 1024


@dataclass(frozen=True)
class FormSpec:
    """The fields one route's ``multipart/form-data`` takes: ``file`` (required; ``many`` whether it may repeat)
    and optional single-valued text fields."""

    file: str
    many: bool
    texts: frozenset[str] = frozenset({"laterality"})

    def describe(self) -> str:
        file = f"'{self.file}' (one or more files)" if self.many else f"'{self.file}' (one file)"
        return " and ".join([file, *(f"optionally '{t}' (text)" for t in sorted(self.texts))])


#: Route -> its form. Other routes take no form fields.
FORMS: Final[dict[str, FormSpec]] = {
    "/analyze": FormSpec(file="image", many=False),
    "/analyze_study": FormSpec(file="images", many=True),
    "/jobs/analyze_study/submit": FormSpec(file="images", many=True),
}
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

    def __init__(self, boundary: str, limits: RequestLimits, path: str = "") -> None:
        self.delimiter = b"--" + boundary.encode("latin-1")
        self.limits = limits
        self.path = path
        self.form = FORMS.get(path)
        self.seen: dict[str, int] = {}  # field name -> parts so far
        self.text: bytearray | None = None  # the value of the text part being read, if any
        self.text_field = ""
        self.unexpected: list[str] = []  # fields the route does not take, as shown in messages
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
                self._body(data[: len(data) - keep])
                self.offset += len(data) - keep
                self.pending = data[len(data) - keep :]
                return
            if not self.seen_delimiter:
                if self.offset + at > self.limits.max_preamble:
                    raise RequestRejected(400, "bad_request", (
                        f"more than {self.limits.max_preamble} bytes before the first multipart boundary"))
                self.seen_delimiter = True
            self._body(data[:at])
            self._part_done()
            after = at + len(self.delimiter)
            if len(data) - after < 2:  # cannot tell a close delimiter from a part yet
                self.offset += at
                self.pending = data[at:]
                return
            if data[after : after + 2] == b"--":
                self.closed = True  # close delimiter; parsers ignore the epilogue, but it costs them CPU
                self._form_complete()
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
        is_file = bool(_FILENAME_RE.search(header))
        if field in FILE_FIELDS and not is_file:
            # Security: BentoML downloads a text value of a file field as a URL (SSRF): files only.
            raise RequestRejected(400, "bad_request", (
                f"form field '{field}' must be a file upload (curl -F {field}=@photo.jpg), not a text value"))
        shown = _shown(field)
        if self.form is None:
            raise RequestRejected(400, "unexpected_field", (
                f"{self.path or 'this route'} takes no form fields, got {shown}"))
        if field != self.form.file and field not in self.form.texts:
            # Judged when the form closes: without the route's file field it is that field that is missing.
            self.unexpected.append(shown)
            return
        self.seen[field] = self.seen.get(field, 0) + 1
        if self.seen[field] > 1 and not (field == self.form.file and self.form.many):
            hint = " (several photographs of one visit go to /analyze_study as 'images')" if field == "image" else ""
            raise RequestRejected(400, "bad_request", f"form field {shown} is given more than once{hint}")
        if field in self.form.texts:
            if is_file:
                raise RequestRejected(400, "bad_request", (
                    f"form field {shown} must be a text value (curl -F {field}=R), not a file upload"))
            self.text, self.text_field = bytearray(), field

    def _body(self, chunk: bytes) -> None:
        """Bytes of the current part's body (the CRLF before the next delimiter included)."""
        if self.text is not None and chunk:
            self.text += chunk
            if len(self.text) > MAX_TEXT_FIELD + 2:
                raise RequestRejected(400, "bad_request", (
                    f"form field '{self.text_field}' is longer than {MAX_TEXT_FIELD} bytes: it takes a short text"))

    def _part_done(self) -> None:
        if self.text is None:
            return
        value = bytes(self.text).removesuffix(b"\r\n")
        self.text = None
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestRejected(400, "bad_request", (
                f"form field '{self.text_field}' must be text (UTF-8), not binary data")) from None

    def finish(self) -> None:
        """The body has ended: it must have closed with the final delimiter (``--boundary--``)."""
        if self.closed:
            return
        if not self.seen_delimiter:
            raise RequestRejected(400, "bad_request", (
                "the form has no part delimited by the boundary its Content-Type declares"))
        raise RequestRejected(400, "bad_request", "the form ends before its closing boundary (--boundary--)")

    def _form_complete(self) -> None:
        if self.form is None or not (self.seen or self.unexpected):
            return
        got = f"; got {', '.join(self.unexpected)}" if self.unexpected else ""
        if self.form.file not in self.seen:
            raise RequestRejected(400, "missing_field", (
                f"form field '{self.form.file}' is missing: {self.path} takes {self.form.describe()}{got}"))
        if self.unexpected:
            raise RequestRejected(400, "unexpected_field", (
                f"unexpected form field {self.unexpected[0]}: {self.path} takes {self.form.describe()}"))


def _shown(field: str) -> str:
    """A field name fit for an error message: quoted, printable, at most 40 characters."""
    clean = "".join(c if c.isprintable() else "?" for c in field)
    return f"'{clean[:40]}{'…' if len(clean) > 40 else ''}'" if field else "(a part without a name)"


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
        scanner = (_MultipartScanner(params["boundary"], self.limits, str(scope.get("path", "")))
                   if ctype == "multipart/form-data" else None)
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
                    if scanner is not None and not message.get("more_body", False):
                        scanner.finish()
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
