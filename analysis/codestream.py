"""Encapsulated DICOM codestreams checked before any backend decodes them: the JPEG / JPEG-LS SOF and the
JPEG 2000 SIZ parameters must agree with the DICOM header and the limits, marker segments up to the first
scan must be well formed, and the codestream must end with its end marker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from pydicom import uid as dcm_uid
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame

from analysis.decode_checks import check_pixels, uid_label
from analysis.decode_types import DecodeLimits
from analysis.dicom_pixels import PixelHeader
from analysis.errors import UnreadableImage

__all__ = ["J2K_FAMILY", "JPEG_FAMILY", "check_encapsulated_frames", "jpeg_complete"]

JPEG_FAMILY: Final = frozenset(
    {
        dcm_uid.JPEGBaseline8Bit,
        dcm_uid.JPEGExtended12Bit,
        dcm_uid.JPEGLossless,
        dcm_uid.JPEGLosslessSV1,
        dcm_uid.JPEGLSLossless,
        dcm_uid.JPEGLSNearLossless,
    }
)
J2K_FAMILY: Final = frozenset({dcm_uid.JPEG2000Lossless, dcm_uid.JPEG2000})


def jpeg_complete(buf: bytes) -> bool:
    """True if an EOI marker follows the last SOS marker.

    Inside entropy-coded data 0xFF is always followed by 0x00 or RSTn (JPEG) or a byte < 0x80 (JPEG-LS), so
    ``FF DA`` / ``FF D9`` only occur as markers. Trailing padding or garbage after EOI is tolerated.
    """
    sos = buf.rfind(b"\xff\xda")
    return sos >= 0 and buf.rfind(b"\xff\xd9") > sos



@dataclass(frozen=True)
class _Codestream:
    width: int
    height: int
    components: int
    precision: int  # bits per sample of the first component


_SOF_MARKERS: Final = frozenset(
    # SOF0-3, 5-7, 9-11, 13-15 (JPEG) and SOF55 = 0xF7 (JPEG-LS)
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
)


def _jpeg_codestream(buf: bytes) -> _Codestream | None:
    """SOF parameters of a JPEG / JPEG-LS codestream, requiring well-formed marker segments from SOI up to the
    first SOS (a malformed table segment is refused here rather than handed to a native decoder)."""
    if buf[:2] != b"\xff\xd8":
        return None
    info: _Codestream | None = None
    i, n = 2, len(buf)
    while i + 4 <= n:  # every iteration advances i: terminates
        if buf[i] != 0xFF:
            return None
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7 or marker == 0xD8 or marker == 0xD9:
            return None  # no stand-alone markers (or a second SOI / an EOI) belong before the first scan
        length = int.from_bytes(buf[i + 2 : i + 4], "big")
        if length < 2 or i + 2 + length > n:
            return None
        if marker == 0xDA:  # SOS: headers are over
            return info
        if marker in _SOF_MARKERS:
            if info is not None or length < 8:
                return None
            precision = buf[i + 4]
            height = int.from_bytes(buf[i + 5 : i + 7], "big")
            width = int.from_bytes(buf[i + 7 : i + 9], "big")
            components = buf[i + 9]
            if length != 8 + 3 * components:
                return None
            info = _Codestream(width=width, height=height, components=components, precision=precision)
        i += 2 + length
    return None


def _j2k_codestream(buf: bytes) -> _Codestream | None:
    """SIZ parameters of a JPEG 2000 codestream (optionally inside a JP2 wrapper), sanity-checked."""
    offset, n = 0, len(buf)
    if buf[:8] == b"\x00\x00\x00\x0cjP  ":  # JP2 file format wrapper (non-conformant in DICOM, but seen)
        while offset + 8 <= n:
            length = int.from_bytes(buf[offset : offset + 4], "big")
            header = 8
            if length == 1:  # XLBox
                length = int.from_bytes(buf[offset + 8 : offset + 16], "big")
                header = 16
            elif length == 0:  # the box runs to the end
                length = n - offset
            if buf[offset + 4 : offset + 8] == b"jp2c":
                offset += header
                break
            if length < header:
                return None
            offset += length
        else:
            return None
    if buf[offset : offset + 4] != b"\xff\x4f\xff\x51":  # SOC then SIZ
        return None
    siz = offset + 4
    if siz + 38 > n:
        return None

    def u32(at: int) -> int:
        return int.from_bytes(buf[siz + at : siz + at + 4], "big")

    lsiz = int.from_bytes(buf[siz : siz + 2], "big")
    xsiz, ysiz, xosiz, yosiz, xtsiz, ytsiz = u32(4), u32(8), u32(12), u32(16), u32(20), u32(24)
    components = int.from_bytes(buf[siz + 36 : siz + 38], "big")
    if components < 1 or lsiz != 38 + 3 * components or siz + lsiz > n:
        return None
    if xosiz >= xsiz or yosiz >= ysiz or xtsiz == 0 or ytsiz == 0:
        return None
    precisions = set()
    for c in range(components):
        ssiz, xrsiz, yrsiz = buf[siz + 38 + 3 * c], buf[siz + 39 + 3 * c], buf[siz + 40 + 3 * c]
        if xrsiz == 0 or yrsiz == 0:
            return None
        precisions.add((ssiz & 0x7F) + 1)
    return _Codestream(
        width=xsiz - xosiz, height=ysiz - yosiz, components=components, precision=max(precisions)
    )


def check_encapsulated_frames(ds: Dataset, header: PixelHeader, count: int, limits: DecodeLimits) -> None:
    """Before decoding: each codestream's own header must agree with the DICOM header and the limit, and the
    codestream must be complete (a backend may decode a truncated codestream silently)."""
    ts = header.transfer_syntax
    if ts not in JPEG_FAMILY and ts not in J2K_FAMILY:
        return  # RLE: decoded into a buffer sized from Rows x Columns, nothing to smuggle
    for index in range(count):
        try:
            frame = get_frame(ds.PixelData, index, number_of_frames=header.number_of_frames)
        except Exception as exc:
            raise UnreadableImage(
                f"Frame {index} of the encapsulated DICOM pixel data could not be located; the file is "
                "corrupt or truncated."
            ) from exc
        info = _j2k_codestream(frame) if ts in J2K_FAMILY else _jpeg_codestream(frame)
        if info is None:
            raise UnreadableImage(f"Frame {index} is not a valid {uid_label(ts)} codestream.")
        check_pixels(info.width, info.height, limits, f"Frame {index} of the DICOM pixel data")
        if (info.width, info.height) != (header.columns, header.rows):
            raise UnreadableImage(
                f"Frame {index} codestream is {info.width}x{info.height} but the DICOM header says "
                f"{header.columns}x{header.rows}."
            )
        if info.components != header.samples_per_pixel or not 2 <= info.precision <= header.bits_allocated:
            raise UnreadableImage(
                f"Frame {index} codestream has {info.components} component(s) of {info.precision} bit(s), "
                f"inconsistent with the DICOM header (SamplesPerPixel {header.samples_per_pixel}, "
                f"BitsAllocated {header.bits_allocated})."
            )
        complete = jpeg_complete(frame) if ts in JPEG_FAMILY else b"\xff\xd9" in frame[-16:]
        if not complete:
            raise UnreadableImage(f"Frame {index} of the DICOM pixel data is truncated (no end marker).")

