"""``multipart/related`` (RFC 2387) bodies for DICOMweb: a streaming reader with limits, and an encoder.

STOW-RS requests and WADO-RS responses carry DICOM instances as the parts of a ``multipart/related`` body
(PS3.18 8.6.1.2 / 10.5.1.2; the boundary syntax is RFC 2046 5.1.1). The reader is fed the body chunk by chunk
as it arrives and refuses it as soon as a limit is passed (part count, bytes of one part, bytes in all), so a
client cannot make the server hold more than ``max_total_bytes``. The byte-level parsing is python-multipart's
(the parser Starlette uses for form uploads); this module adds what RFC 2046 allows and that parser does not
(a preamble before the first boundary), the limits, and typed errors.

Errors: a malformed or truncated body is :class:`~analysis.errors.BadRequest` (400), a body over a limit
:class:`~analysis.errors.PayloadTooLarge` (413). Messages describe the body's structure, never its content.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from analysis.errors import BadRequest, PayloadTooLarge

#: Bytes of preamble (RFC 2046: text before the first boundary, to be ignored) accepted before it.
MAX_PREAMBLE_BYTES = 64 * 1024


def parse_media_type(value: str | None) -> tuple[str, dict[str, str]]:
    """``"multipart/related; type=\\"application/dicom\\"; boundary=x"`` -> ``("multipart/related",
    {"type": "application/dicom", "boundary": "x"})``: the media type lower-cased, parameter names
    lower-cased, quotes removed (RFC 9110 8.3.1). ``("", {})`` for a missing header."""
    media, params = parse_options_header(value or "")
    return (media.decode("latin-1").strip().lower(),
            {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in params.items()})


@dataclass(frozen=True, kw_only=True)
class MultipartLimits:
    """``max_parts`` parts of at most ``max_part_bytes`` each, ``max_total_bytes`` of body in all."""

    max_parts: int
    max_part_bytes: int
    max_total_bytes: int


@dataclass(frozen=True)
class Part:
    """One body part: its media type (lower-cased, without parameters; ``""`` when the part has no
    Content-Type), the type's parameters, and its bytes."""

    media_type: str
    params: dict[str, str]
    data: bytes


@dataclass
class _PartBuilder:
    headers: list[tuple[str, str]] = field(default_factory=list)
    name: bytearray = field(default_factory=bytearray)
    value: bytearray = field(default_factory=bytearray)
    data: bytearray = field(default_factory=bytearray)


class RelatedReader:
    """Incremental reader of one ``multipart/related`` body with ``boundary``: :meth:`feed` the chunks as
    they arrive, then :meth:`close` for the parts. Raises :class:`BadRequest` or :class:`PayloadTooLarge` as
    soon as the body is known to be malformed or too large."""

    def __init__(self, boundary: str, limits: MultipartLimits) -> None:
        if not boundary or len(boundary) > 70:  # RFC 2046 5.1.1: 1 to 70 characters
            raise BadRequest("the multipart/related Content-Type needs a boundary parameter of 1-70 characters")
        self._delimiter = b"--" + boundary.encode("latin-1")
        self._limits = limits
        self._total = 0
        self._preamble: bytearray | None = bytearray()  # None once the first boundary was found
        self._parts: list[Part] = []
        self._current: _PartBuilder | None = None
        self._ended = False
        self._parser = MultipartParser(boundary.encode("latin-1"), {
            "on_part_begin": self._on_part_begin,
            "on_header_field": lambda d, s, e: self._builder().name.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._builder().value.extend(d[s:e]),
            "on_header_end": self._on_header_end,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        })

    @property
    def parts_seen(self) -> int:
        return len(self._parts)

    def feed(self, chunk: bytes) -> None:
        """Parse the next ``chunk`` of the body."""
        self._total += len(chunk)
        if self._total > self._limits.max_total_bytes:
            raise PayloadTooLarge(f"the request body exceeds {self._limits.max_total_bytes} bytes")
        if self._preamble is not None:
            self._preamble.extend(chunk)
            buf = bytes(self._preamble)
            start = 0 if buf.startswith(self._delimiter) else buf.find(b"\r\n" + self._delimiter)
            if start < 0:
                if len(buf) > MAX_PREAMBLE_BYTES + len(self._delimiter):
                    raise BadRequest("the multipart body has no boundary delimiter where one was expected")
                return
            self._preamble = None
            chunk = buf[start:]
        self._write(chunk)

    def close(self) -> list[Part]:
        """The parts of a complete body; :class:`BadRequest` when it ended before its close delimiter."""
        if self._preamble is not None:
            raise BadRequest("the multipart body contains no boundary delimiter: it is empty or not multipart")
        try:
            self._parser.finalize()
        except MultipartParseError as exc:
            raise BadRequest("the multipart body is malformed") from exc
        if not self._ended:
            raise BadRequest("the multipart body is truncated: it ends before its close delimiter")
        return self._parts

    def _write(self, chunk: bytes) -> None:
        if self._ended:
            return  # RFC 2046: an epilogue after the close delimiter is ignored
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise BadRequest("the multipart body is malformed (bad boundary or part headers)") from exc

    def _builder(self) -> _PartBuilder:
        assert self._current is not None
        return self._current

    def _on_part_begin(self) -> None:
        if len(self._parts) >= self._limits.max_parts:
            raise PayloadTooLarge(f"the request has more than {self._limits.max_parts} parts")
        self._current = _PartBuilder()

    def _on_header_end(self) -> None:
        b = self._builder()
        b.headers.append((b.name.decode("latin-1").strip().lower(), b.value.decode("latin-1").strip()))
        b.name.clear()
        b.value.clear()

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        b = self._builder()
        if len(b.data) + (end - start) > self._limits.max_part_bytes:
            raise PayloadTooLarge(f"part {len(self._parts) + 1} exceeds {self._limits.max_part_bytes} bytes")
        b.data.extend(data[start:end])

    def _on_part_end(self) -> None:
        b = self._builder()
        ctype = next((v for k, v in b.headers if k == "content-type"), None)
        media, params = parse_media_type(ctype)
        self._parts.append(Part(media, params, bytes(b.data)))
        self._current = None

    def _on_end(self) -> None:
        self._ended = True


async def read_related(chunks: AsyncIterator[bytes], boundary: str, limits: MultipartLimits) -> list[Part]:
    """Read a whole ``multipart/related`` body from an async chunk stream (e.g. Starlette's
    ``request.stream()``), enforcing ``limits`` while it arrives."""
    reader = RelatedReader(boundary, limits)
    async for chunk in chunks:
        if chunk:
            reader.feed(chunk)
    return reader.close()


def new_boundary() -> str:
    """A boundary that cannot occur in the parts by chance (128 random bits)."""
    return f"fovea-{secrets.token_hex(16)}"


def encode_related(parts: Iterable[tuple[str, bytes]], boundary: str) -> bytes:
    """A ``multipart/related`` body of ``(content type, bytes)`` parts (RFC 2046 5.1.1: CRLF before every
    delimiter, a close delimiter at the end)."""
    out = bytearray()
    for ctype, data in parts:
        out += f"--{boundary}\r\nContent-Type: {ctype}\r\n\r\n".encode("latin-1")
        out += data
        out += b"\r\n"
    out += f"--{boundary}--\r\n".encode("latin-1")
    return bytes(out)
