"""Checks shared by every decoder: pixel-count and size limits from a header, the libjpeg reduction for a
target size, a bounded inflate, and quoting file-supplied values safely in a message."""

from __future__ import annotations

import zlib
from types import ModuleType
from typing import Final

import pydicom

try:
    from isal import isal_zlib
except ImportError:  # pragma: no cover - a platform without an isal wheel: zlib, about 1.8x slower
    isal_zlib = None

from analysis.decode_types import DecodeLimits
from analysis.errors import ImageTooSmall, PayloadTooLarge

__all__ = ["check_min_side", "check_pixels", "echo", "inflated_size", "jpeg_reduction", "reduced_note",
           "uid_label"]


def check_pixels(width: int, height: int, limits: DecodeLimits, what: str = "The image") -> None:
    """:class:`~analysis.errors.PayloadTooLarge` when ``width * height`` is over ``limits.max_pixels``."""
    if width * height > limits.max_pixels:
        raise PayloadTooLarge(
            f"{what} is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels} pixels "
            "per image."
        )


def check_min_side(width: int, height: int, limits: DecodeLimits, what: str = "The image") -> None:
    """:class:`~analysis.errors.ImageTooSmall` when the shorter side is under ``limits.min_side``."""
    if min(width, height) < limits.min_side:
        raise ImageTooSmall(
            f"{what} is {width}x{height} pixels; the shorter side must be at least {limits.min_side} pixels "
            "to be analysed. Send the original photograph, not a thumbnail."
        )


#: libjpeg's DCT scaling factors usable for reduced decoding, largest first.
_REDUCTIONS: Final = (8, 4, 2)


def jpeg_reduction(width: int, height: int, target: int | None) -> int:
    """The largest libjpeg reduction ``s`` in (8, 4, 2) with ``min(width, height) // s >= target``, else 1.

    Public so a caller can predict the decoded size (``ceil(side / s)``); ``target=None`` means full resolution.
    """
    if target is None:
        return 1
    short = min(width, height)
    return next((s for s in _REDUCTIONS if short // s >= target), 1)


def reduced_note(scale: int) -> str:
    """The note a reduced-resolution decode carries."""
    return f"decoded at 1/{scale} resolution (the analysis needs no more; results are in original pixels)"



#: The inflater of :func:`inflated_size`: ISA-L's zlib-compatible one when installed (the ``isal`` package, also
#: the overlay PNGs' deflate): 7.9 against 13.7 ms for a 1024 px PNG's 3 MB of image data, where the check
#: runs before the decoder inflates the same stream again (docs/performance.md); zlib otherwise. Both count the
#: same bytes (tests/analysis/test_decode.py compares them on whole, truncated, trailing and bomb streams).
INFLATER: ModuleType = isal_zlib if isal_zlib is not None else zlib
_INFLATE_ERRORS: tuple[type[Exception], ...] = (zlib.error,) + ((isal_zlib.error,) if isal_zlib is not None else ())


def inflated_size(data: bytes, limit: int, *, wbits: int) -> int:
    """Bytes ``data`` (a zlib / raw deflate stream) inflates to, counting at most ``limit + 1``: the output is
    produced 1 MiB at a time and dropped, so memory stays ~1 MiB and work stops just past ``limit``. Trailing
    bytes after the end of the stream are ignored. Raises ``zlib.error`` on a corrupt stream."""
    try:
        inflater = INFLATER.decompressobj(wbits)
        total, pending = 0, data
        # Also once the input is all taken: an inflater may still hold output for it (ISA-L does at the end of
        # a raw stream, zlib for a truncated one); each turn either yields output, bounded by ``limit``, or ends.
        while total <= limit and not inflater.eof:
            out = inflater.decompress(pending, 1 << 20)
            total += len(out)
            if not out and (not inflater.unconsumed_tail or len(inflater.unconsumed_tail) == len(pending)):
                break
            pending = inflater.unconsumed_tail
        return total
    except _INFLATE_ERRORS as exc:
        if isinstance(exc, zlib.error):
            raise
        raise zlib.error(str(exc)) from exc



def echo(value: str, limit: int) -> str:
    """A file-supplied value made safe to quote in a message: printable ASCII, at most ``limit`` chars."""
    text = "".join(ch if " " <= ch <= "~" else "?" for ch in str(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def uid_label(value: str) -> str:
    """``"Name (uid)"`` for a UID pydicom knows, else the bare UID (sanitised, <= 64 chars)."""
    value = echo(value, 64)
    name = pydicom.uid.UID(value).name
    return f"{name} ({value})" if name and name != value else value

