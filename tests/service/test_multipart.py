"""service.multipart: the streaming multipart/related reader (limits, preamble, truncation) and the encoder."""

from __future__ import annotations

import asyncio

import pytest

from analysis.errors import BadRequest, PayloadTooLarge
from service.multipart import (
    MultipartLimits, RelatedReader, encode_related, new_boundary, parse_media_type, read_related,
)

LIMITS = MultipartLimits(max_parts=3, max_part_bytes=100, max_total_bytes=1000)


def _read(body: bytes, chunk: int = 7, boundary: str = "BB", limits: MultipartLimits = LIMITS):
    reader = RelatedReader(boundary, limits)
    for i in range(0, len(body), chunk):
        reader.feed(body[i:i + chunk])
    return reader.close()


@pytest.mark.parametrize("chunk", [1, 3, 64, 10_000])
def test_round_trip_in_any_chunking(chunk: int) -> None:
    # Part bodies that contain CRLF, dashes and a near-boundary must come back byte for byte.
    datas = [b"\x00\x01DICM", b"line\r\n--B\r\n--BBX", b""]
    body = encode_related([("application/dicom", datas[0]),
                           ("application/dicom; transfer-syntax=1.2.840.10008.1.2.1", datas[1]),
                           ("application/dicom", datas[2])], "BB")
    parts = _read(body, chunk)
    assert [p.data for p in parts] == datas
    assert [p.media_type for p in parts] == ["application/dicom"] * 3
    assert parts[1].params == {"transfer-syntax": "1.2.840.10008.1.2.1"}


def test_preamble_epilogue_and_a_part_without_content_type() -> None:
    body = b"This is a preamble.\r\n--BB\r\n\r\nabc\r\n--BB--\r\nepilogue"
    (part,) = _read(body)
    assert part.media_type == "" and part.data == b"abc"
    # dicomweb-client starts the body with CRLF before the first delimiter.
    (part,) = _read(b"\r\n--BB\r\nContent-Type: application/dicom\r\n\r\nxyz\r\n--BB--")
    assert part.data == b"xyz"


def test_limits_are_enforced_while_reading() -> None:
    with pytest.raises(PayloadTooLarge, match="more than 3 parts"):
        _read(encode_related([("application/dicom", b"x")] * 4, "BB"))
    with pytest.raises(PayloadTooLarge, match="part 1 exceeds 100 bytes"):
        _read(encode_related([("application/dicom", b"x" * 101)], "BB"))
    reader = RelatedReader("BB", MultipartLimits(max_parts=100, max_part_bytes=10_000, max_total_bytes=50))
    with pytest.raises(PayloadTooLarge, match="exceeds 50 bytes"):
        reader.feed(b"--BB\r\n\r\n" + b"y" * 60)  # refused on arrival, before the body ends


@pytest.mark.parametrize("body, message", [
    (b"", "no boundary delimiter"),
    (b"just some bytes without any boundary", "no boundary delimiter"),
    (b"--BB\r\n\r\nabc", "truncated"),
    (b"--BB\r\n\r\nabc\r\n--BB", "truncated"),
])
def test_malformed_bodies_are_bad_requests(body: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        _read(body)


def test_a_preamble_without_boundary_is_bounded() -> None:
    reader = RelatedReader("BB", MultipartLimits(max_parts=1, max_part_bytes=1, max_total_bytes=1 << 20))
    with pytest.raises(BadRequest, match="no boundary delimiter"):
        reader.feed(b"z" * (70 * 1024))


def test_boundary_is_required_and_bounded() -> None:
    with pytest.raises(BadRequest):
        RelatedReader("", LIMITS)
    with pytest.raises(BadRequest):
        RelatedReader("b" * 71, LIMITS)


def test_parse_media_type() -> None:
    assert parse_media_type('Multipart/Related; TYPE="application/dicom"; boundary="a b"') == (
        "multipart/related", {"type": "application/dicom", "boundary": "a b"})
    assert parse_media_type(None) == ("", {})


def test_read_related_from_an_async_stream() -> None:
    body = encode_related([("application/dicom", b"one"), ("application/dicom", b"two")], b := new_boundary())

    async def chunks():
        for i in range(0, len(body), 5):
            yield body[i:i + 5]

    parts = asyncio.run(read_related(chunks(), b, LIMITS))
    assert [p.data for p in parts] == [b"one", b"two"]
