"""Which format an upload is, from its magic bytes only (never its name or declared content type)."""

from __future__ import annotations

from typing import Final

from analysis.errors import UnsupportedMediaType

__all__ = ["SUPPORTED_FORMATS_HINT", "sniff"]

SUPPORTED_FORMATS_HINT: Final = "send a DICOM Part 10 file, JPEG or PNG"
_PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC: Final = b"\xff\xd8\xff"
# Formats people send that we refuse by name (a clearer 415 than "not recognised").
_REFUSED_MAGIC: Final = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)



def sniff(data: bytes) -> str:
    """Return ``"dicom"``, ``"jpeg"`` or ``"png"`` from the magic bytes of ``data``.

    DICOM means Part 10 only: a 128-byte preamble followed by ``b"DICM"``. Raises
    :class:`~analysis.errors.UnsupportedMediaType` for anything else, including empty bytes; a few common
    image formats we do not accept (GIF, TIFF, BMP, WebP) are named in the message.
    """
    if not data:
        raise UnsupportedMediaType(f"The upload is empty: {SUPPORTED_FORMATS_HINT}.")
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    if data[:3] == _JPEG_MAGIC:
        return "jpeg"
    if data[:8] == _PNG_MAGIC:
        return "png"
    named = next((name for magic, name in _REFUSED_MAGIC if data.startswith(magic)), None)
    if named is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        named = "WebP"
    if named is None and data[:2] == b"BM" and data[6:10] == b"\x00\x00\x00\x00":  # reserved fields 0
        named = "BMP"
    if named is not None:
        raise UnsupportedMediaType(
            f"The upload is a {named} image, which is not accepted: {SUPPORTED_FORMATS_HINT} "
            "(convert it to PNG without loss)."
        )
    raise UnsupportedMediaType(
        "The upload is not a recognised image format (checked by content, not by name): "
        f"{SUPPORTED_FORMATS_HINT}. A DICOM file must be in Part 10 format (128-byte preamble + 'DICM')."
    )
