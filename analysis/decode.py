"""Upload bytes in, RGB images out, typed errors.

Contract
--------
:func:`decode` turns the raw bytes of one upload into one :class:`DecodedImage` per analysed frame: an
``(h, w, 3)`` ``uint8`` RGB array, C-contiguous, plus the DICOM identifiers the report needs. It accepts
exactly three formats, recognised by magic bytes (never by file name or declared content type):

* DICOM Part 10 files (128-byte preamble + ``b"DICM"``); preamble-less datasets are refused;
* JPEG (``FF D8 FF``);
* PNG (``89 50 4E 47 0D 0A 1A 0A``).

For ANY input bytes, :func:`decode` either returns a non-empty list or raises a
:class:`~analysis.errors.FoveaError` subclass; no other exception escapes (unexpected decoder exceptions are
wrapped into :class:`~analysis.errors.UnreadableImage`, chained with ``from`` so the server log keeps the
cause):

=====================================================================  ===================================
condition                                                              error
=====================================================================  ===================================
empty bytes, or not DICOM Part 10 / JPEG / PNG (GIF, TIFF, BMP, WebP   ``UnsupportedMediaType`` (415)
are named in the message)
more than ``max_bytes`` bytes; header dimensions over ``max_pixels``   ``PayloadTooLarge`` (413)
(checked BEFORE any pixel is decoded); deflated DICOM inflating to
more than ``max_inflated_bytes``
truncated or corrupt JPEG / PNG / DICOM                                ``UnreadableImage`` (400)
valid DICOM that is not analysed: no Pixel Data, a SOP class that is   ``UnsupportedDicom`` (422)
not a fundus / visible-light photograph (the message names it), an
unsupported transfer syntax, photometric interpretation or bit depth
shorter side below ``min_side`` pixels (from the header)               ``ImageTooSmall`` (422)
=====================================================================  ===================================

Error messages describe the file (SOP class, transfer syntax, photometric interpretation, sizes), never the
patient: no names, IDs or dates are ever read into a message, and messages of third-party exceptions (which
may quote element values) are not copied into ours.

Multi-frame
-----------
Every frame of a multi-frame DICOM is returned, in order, up to ``max_frames`` frames and
``max_total_pixels`` pixels in all (whichever allows fewer; at least one frame). When frames are left out,
every returned image carries a note saying how many of how many were skipped and which limit applied. Each
frame is an independent image for the analysis (``frame_index`` says which).

Reduced-resolution decoding (``target``)
----------------------------------------
The model never sees more than ``target`` pixels on the short side, so decoding a 10 Mpx JPEG at full size
is wasted work. With ``target`` given, a JPEG (or a colour 8-bit JPEG baseline / extended DICOM) whose
shorter side is at least ``2 * target`` is decoded by libjpeg's DCT scaling at the largest reduction
``scale`` in (2, 4, 8) that keeps ``shorter_side // scale >= target`` (OpenCV ``IMREAD_REDUCED_COLOR_<s>``,
or Pillow ``draft``). The result then has:

* ``width`` / ``height`` = the ORIGINAL image size (after EXIF orientation): what a report quotes;
* ``rgb.shape == (ceil(height / scale), ceil(width / scale), 3)``;
* ``scale`` = original pixels per decoded pixel (exact: libjpeg reduces each 8x8 block to ``8/scale`` pixels),
  so a decoded-pixel EDGE coordinate ``X`` is ``X * scale`` in original pixels (clip to ``width``/``height``;
  the last decoded column/row may cover fewer than ``scale`` original pixels). ``scale == 1`` otherwise.

PNG, other DICOM transfer syntaxes and monochrome JPEG DICOM are always decoded at full size.

Colour handling
---------------
* JPEG / PNG: decoded with OpenCV (``cv2.imdecode``, BGR -> RGB), Pillow as a fallback for what OpenCV cannot
  read. Grayscale is replicated to 3 channels, CMYK / YCCK JPEG is converted to RGB, alpha is dropped (RGBA /
  LA / palette-with-transparency PNG -> RGB; the colour values under transparent pixels are kept as stored),
  16-bit PNG is scaled to 8 bit (``round(v / 257)``). JPEG EXIF orientation (tag 0x0112) IS applied, so the
  array is in display order and ``width``/``height`` are the displayed size (a note says so); a PNG ``eXIf``
  orientation is ignored (Pillow would decode the whole image to read it, before our size check). An
  animated PNG (APNG) or multi-picture JPEG (MPO) gives its first / default image, with a note; animated GIF
  is not accepted (415) - GIF is no fundus camera's format.
* DICOM: pixels are decoded by pydicom 3 (``Decoder.iter_array``) with only permissively licensed backends:
  pydicom's own native / RLE decoders and Pillow (libjpeg-turbo / OpenJPEG) in process; GDCM (JPEG lossless,
  JPEG-LS, and fallback for JPEG / JPEG 2000 that Pillow refuses) ONLY in a child process, because GDCM aborts
  or segfaults the interpreter on some corrupt codestreams (see :mod:`analysis.dicom_pixels`). pylibjpeg (GPL
  libjpeg) is never used even if installed. Colour 8-bit JPEG baseline / extended frames (the common fundus
  camera output) are decoded by Pillow directly (:func:`analysis.dicom_pixels.decode_jpeg_colour_frames`,
  with pydicom's colour rules, YBR -> RGB by OpenCV: ~3x faster than pydicom's numpy conversion), which is
  also what allows reduced-resolution decoding; the pydicom path is the fallback. YBR_FULL / YBR_FULL_422 are
  converted to RGB exactly once; YBR_ICT / YBR_RCT (JPEG 2000) come back as RGB from the backends; PALETTE
  COLOR goes through the palette LUT; MONOCHROME1/2 go through the modality LUT / rescale and the VOI LUT /
  window (first one), then to 8 bit, MONOCHROME1 inverted. 16-bit colour is scaled by ``BitsStored``.

Limits and other defences
-------------------------
* Pillow's own decompression-bomb guard (``PIL.Image.MAX_IMAGE_PIXELS``, process-global) is left at its
  default (~89.5 Mpx warns, ~179 Mpx raises) and NOT modified here: our own ``max_pixels`` (60 Mpx default)
  is checked first from the header, and a ``DecompressionBombError`` raised while Pillow parses the header is
  mapped to ``PayloadTooLarge`` as well. A caller raising ``max_pixels`` above ~89 Mpx will see Pillow's
  ``DecompressionBombWarning`` for such images (and a 413 above ~179 Mpx) unless it also raises Pillow's
  limit.
* Encapsulated DICOM frames (JPEG, JPEG-LS, JPEG 2000) have their codestream header parsed before decoding:
  dimensions must match ``Rows``/``Columns`` and ``max_pixels``, components and precision must match the
  DICOM header, marker segments up to the first scan must be well formed, and the codestream must end with an
  EOI / EOC marker, so a small DICOM header cannot smuggle a huge, inconsistent or truncated codestream to a
  backend that would decode it silently.
* Corrupt entropy-coded data inside an otherwise well-formed JPEG is NOT always detected: libjpeg (OpenCV,
  Pillow) only warns and returns an image with garbage blocks. Detecting that would need a second decoder.
* Truncated JPEG/PNG uploads are detected from their structure (no EOI after the last SOS / PNG chunks that do
  not chain to IEND), because OpenCV returns partially decoded images silently; PNG chunk lengths are checked
  against the upload size because OpenCV allocates a chunk's declared length before reading it.
* The DICOM file meta is read with pydicom's public ``read_dataset`` (stopping at the first element outside
  group 0002) so a deflated dataset's inflated size can be bounded before pydicom inflates it.
* Thread-safety: no global state is modified; :func:`decode` may be called from several threads.
* ``decode`` cannot hang on in-process work (all parsing loops advance; sizes are bounded before decoding);
  the GDCM child has a wall-clock timeout (``isolated_decode_timeout_s``).
"""

from __future__ import annotations

import io
import logging
import zlib
from dataclasses import dataclass
from typing import Any, Final

import cv2
import numpy as np
import pydicom
from PIL import Image
from pydicom import uid as dcm_uid
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.encaps import get_frame
from pydicom.filereader import read_dataset, read_preamble
from pydicom.pixels import get_decoder
from pydicom.tag import BaseTag

from analysis.dicom_pixels import (
    IN_PROCESS_PLUGINS,
    PixelHeader,
    decode_frames,
    decode_frames_isolated,
    decode_jpeg_colour_frames,
    finish_rgb,
    scale_uint_to_u8,
)
from analysis.errors import (
    FoveaError,
    ImageTooSmall,
    PayloadTooLarge,
    UnreadableImage,
    UnsupportedDicom,
    UnsupportedMediaType,
)

__all__ = [
    "ACCEPTED_PHOTOMETRIC_INTERPRETATIONS",
    "ACCEPTED_TRANSFER_SYNTAXES",
    "FUNDUS_SOP_CLASSES",
    "DecodeLimits",
    "DecodedImage",
    "decode",
    "jpeg_reduction",
    "sniff",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------------
# Public types
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DecodeLimits:
    """Resource limits applied by :func:`decode`.

    ``max_bytes``: size of the upload. ``max_pixels``: ``width * height`` of one frame, checked from the
    header before any pixel is decoded. ``min_side``: the shorter side of an image (from the header) must be
    at least this many pixels (smaller is :class:`~analysis.errors.ImageTooSmall`: far below any grader's
    input, and no fundus camera's output). ``max_frames`` and ``max_total_pixels``: a multi-frame DICOM is
    analysed on its first frames only, as many as both limits allow (at least one; not an error,
    :attr:`DecodedImage.notes` says so); ``max_total_pixels`` bounds the memory of one call to about
    ``3 * max_total_pixels`` bytes of output whatever the frame size. ``max_inflated_bytes``: a DICOM file in
    the Deflated Explicit VR Little Endian transfer syntax may not inflate to more than this (zip-bomb guard).
    ``isolated_decode_timeout_s``: wall-clock limit for the child process that runs GDCM (see
    :mod:`analysis.dicom_pixels`); past it the child is killed and the upload is ``UnreadableImage``.
    ``max_sequence_depth``: sequences (SQ) nested deeper than this are ``UnreadableImage`` (fundus
    photographs nest code sequences 2-4 deep; pydicom parses, copies and writes nested sequences
    recursively). ``max_decoded_bytes``: the decoder's working memory for the frames to decode, estimated
    from the header before decoding (stored samples + the RGB output + float intermediates for monochrome):
    frames past it are skipped like ``max_total_pixels``; a single frame over it is ``PayloadTooLarge``.
    """

    max_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 60_000_000
    min_side: int = 32
    max_frames: int = 16
    max_total_pixels: int = 200_000_000
    max_inflated_bytes: int = 256 * 1024 * 1024
    isolated_decode_timeout_s: float = 60.0
    max_sequence_depth: int = 16
    max_decoded_bytes: int = 2 * 1024 * 1024 * 1024


@dataclass(frozen=True, kw_only=True, eq=False)
class DecodedImage:
    """One decoded frame.

    ``rgb`` is ``(h, w, 3)`` ``uint8`` RGB, C-contiguous, owned by this object (not a view on the upload).
    ``width`` / ``height`` are the ORIGINAL image's size in display orientation (after EXIF orientation);
    ``scale`` is original pixels per decoded pixel: ``1.0`` unless :func:`decode` was given a ``target`` and
    decoded at reduced resolution, in which case ``h == ceil(height / scale)``, ``w == ceil(width / scale)``
    and a decoded-pixel edge coordinate ``X`` maps to ``X * scale`` original pixels (see the module
    docstring). ``source`` is ``"dicom"``, ``"jpeg"`` or ``"png"``. ``frame_index`` is the 0-based frame
    number for a multi-frame DICOM, else ``None``. ``laterality`` is ``"L"``/``"R"`` from DICOM
    ImageLaterality (0020,0062) or, failing that, Laterality (0020,0060); ``None`` otherwise (including
    ``"B"``/``"U"``). The UIDs, ``photometric_interpretation`` (as stored in the file, before conversion to
    RGB) and ``transfer_syntax_uid`` are ``None`` for JPEG/PNG. ``notes`` are short human-readable remarks
    about lossy, partial or transformed handling (frames skipped, alpha dropped, 16 bit scaled, EXIF
    orientation applied, reduced resolution, ...); they contain no patient data.
    ``eq=False``: instances compare by identity (ndarray equality is not a bool).
    """

    rgb: np.ndarray
    source: str
    width: int
    height: int
    scale: float = 1.0
    frame_index: int | None = None
    laterality: str | None = None
    sop_class_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    photometric_interpretation: str | None = None
    transfer_syntax_uid: str | None = None
    notes: tuple[str, ...] = ()


#: SOP classes Fovea analyses: fundus / visible-light photographs and secondary captures of them.
#: Anything else (CT, MR, OCT, US, SR, RT, ...) is refused with 422 "not a fundus photograph".
FUNDUS_SOP_CLASSES: Final[frozenset[str]] = frozenset(
    {
        dcm_uid.OphthalmicPhotography8BitImageStorage,  # 1.2.840.10008.5.1.4.1.1.77.1.5.1
        dcm_uid.OphthalmicPhotography16BitImageStorage,  # 1.2.840.10008.5.1.4.1.1.77.1.5.2
        dcm_uid.VLPhotographicImageStorage,  # 1.2.840.10008.5.1.4.1.1.77.1.4
        dcm_uid.SecondaryCaptureImageStorage,  # 1.2.840.10008.5.1.4.1.1.7
        dcm_uid.MultiFrameTrueColorSecondaryCaptureImageStorage,  # 1.2.840.10008.5.1.4.1.1.7.4
        dcm_uid.MultiFrameGrayscaleByteSecondaryCaptureImageStorage,  # 1.2.840.10008.5.1.4.1.1.7.2
        dcm_uid.WideFieldOphthalmicPhotographyStereographicProjectionImageStorage,  # ...77.1.5.5
        dcm_uid.WideFieldOphthalmicPhotography3DCoordinatesImageStorage,  # ...77.1.5.6
    }
)

#: Photometric interpretations we convert to RGB. YBR_ICT / YBR_RCT only occur with JPEG 2000.
ACCEPTED_PHOTOMETRIC_INTERPRETATIONS: Final[frozenset[str]] = frozenset(
    {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR", "MONOCHROME1", "MONOCHROME2"}
)

_SUPPORTED_FORMATS_HINT: Final = "send a DICOM Part 10 file, JPEG or PNG"

# Decoding plugins allowed per encapsulated transfer syntax, in order of preference. Pillow runs in process
# and is ~2-3x faster than GDCM on JPEG baseline; GDCM runs in a child process (analysis.dicom_pixels), so it
# is the fallback (it reads some JPEG 2000 files Pillow/OpenJPEG refuses) or the only choice (JPEG lossless,
# JPEG-LS). Never "pylibjpeg" (its libjpeg backend is GPL). Native (uncompressed) syntaxes use pydicom itself:
# plugin "".
_PLUGIN_PREFERENCE: Final[dict[str, tuple[str, ...]]] = {
    dcm_uid.JPEGBaseline8Bit: ("pillow", "gdcm"),
    dcm_uid.JPEGExtended12Bit: ("pillow", "gdcm"),
    dcm_uid.JPEGLossless: ("gdcm",),
    dcm_uid.JPEGLosslessSV1: ("gdcm",),
    dcm_uid.JPEGLSLossless: ("gdcm",),
    dcm_uid.JPEGLSNearLossless: ("gdcm",),
    dcm_uid.JPEG2000Lossless: ("pillow", "gdcm"),
    dcm_uid.JPEG2000: ("pillow", "gdcm"),
    dcm_uid.RLELossless: ("pydicom",),
}

#: Transfer syntaxes we can decode with permissively licensed backends (GDCM, Pillow, pydicom).
#: JPEG Extended is accepted for 8-bit samples only (no such backend decodes 12-bit JPEG).
ACCEPTED_TRANSFER_SYNTAXES: Final[frozenset[str]] = frozenset(
    {
        dcm_uid.ImplicitVRLittleEndian,
        dcm_uid.ExplicitVRLittleEndian,
        dcm_uid.ExplicitVRBigEndian,
        dcm_uid.DeflatedExplicitVRLittleEndian,
    }
) | frozenset(_PLUGIN_PREFERENCE)

_JPEG_FAMILY: Final = frozenset(
    {
        dcm_uid.JPEGBaseline8Bit,
        dcm_uid.JPEGExtended12Bit,
        dcm_uid.JPEGLossless,
        dcm_uid.JPEGLosslessSV1,
        dcm_uid.JPEGLSLossless,
        dcm_uid.JPEGLSNearLossless,
    }
)
_J2K_FAMILY: Final = frozenset({dcm_uid.JPEG2000Lossless, dcm_uid.JPEG2000})

_PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"
# (7FE0,0010) Pixel Data as encoded in little- and big-endian datasets.
_PIXEL_DATA_TAGS: Final = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")
_JPEG_MAGIC: Final = b"\xff\xd8\xff"
# Formats people send that we refuse by name (a clearer 415 than "not recognised").
_REFUSED_MAGIC: Final = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


# ------------------------------------------------------------------------------------------------------------
# Public functions
# ------------------------------------------------------------------------------------------------------------


def sniff(data: bytes) -> str:
    """Return ``"dicom"``, ``"jpeg"`` or ``"png"`` from the magic bytes of ``data``.

    DICOM means Part 10 only: a 128-byte preamble followed by ``b"DICM"``. Raises
    :class:`~analysis.errors.UnsupportedMediaType` for anything else, including empty bytes; a few common
    image formats we do not accept (GIF, TIFF, BMP, WebP) are named in the message.
    """
    if not data:
        raise UnsupportedMediaType(f"The upload is empty: {_SUPPORTED_FORMATS_HINT}.")
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
            f"The upload is a {named} image, which is not accepted: {_SUPPORTED_FORMATS_HINT} "
            "(convert it to PNG without loss)."
        )
    raise UnsupportedMediaType(
        "The upload is not a recognised image format (checked by content, not by name): "
        f"{_SUPPORTED_FORMATS_HINT}. A DICOM file must be in Part 10 format (128-byte preamble + 'DICM')."
    )


def decode(
    data: bytes, *, limits: DecodeLimits = DecodeLimits(), target: int | None = None
) -> list[DecodedImage]:
    """Decode one upload into RGB frames (one :class:`DecodedImage` per analysed frame, never empty).

    Raises only :class:`~analysis.errors.FoveaError` subclasses for bad bytes (see the module docstring for
    which one when); size limits are enforced before any pixel is decoded. ``target``: the smallest short
    side the caller needs (e.g. the model input size); a JPEG at least twice as large on its short side is
    decoded at reduced resolution (see the module docstring and :attr:`DecodedImage.scale`). ``None`` (the
    default) always decodes at full resolution. A ``target`` below 1 is a programming error
    (``ValueError``).
    """
    if target is not None and (not isinstance(target, int) or target < 1):
        raise ValueError(f"target must be a positive int or None, not {target!r}")
    if not isinstance(data, bytes):
        data = bytes(data)  # bytearray / memoryview
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(f"The upload is {len(data)} bytes; the limit is {limits.max_bytes} bytes.")
    kind = sniff(data)
    try:
        if kind == "dicom":
            return _decode_dicom(data, limits, target)
        return [_decode_raster(data, kind, limits, target)]
    except FoveaError:
        raise
    except NotImplementedError as exc:
        if kind != "dicom":
            raise UnreadableImage(f"The {kind.upper()} file could not be decoded; it may be corrupt.") from exc
        # pydicom converts elements lazily: a corrupt explicit VR ('0x55 0xd3', 'BS') surfaces on first access
        # as NotImplementedError (1 in 400 fuzzed inputs); a client error, not worth a warning.
        raise UnreadableImage(
            "The DICOM file has a data element with an unknown value representation; it is corrupt."
        ) from exc
    except Exception as exc:  # the contract: nothing but FoveaError escapes
        # Type only at WARNING: third-party messages may quote DICOM element values (patient data).
        logger.warning("unexpected %s while decoding a %s upload", type(exc).__name__, kind)
        logger.debug("unexpected decoder exception", exc_info=True)
        raise UnreadableImage(
            f"The {kind.upper()} file could not be decoded ({type(exc).__name__}); it may be corrupt."
        ) from exc


def read_dicom_header(data: bytes, *, limits: DecodeLimits = DecodeLimits()) -> Dataset:
    """The parsed dataset of a DICOM Part 10 upload that passed every check :func:`decode` makes before it
    decodes a pixel (size, Part 10 magic, file meta, SOP class, Pixel Data present, transfer syntax, Image
    Pixel module, encapsulated frame sizes); pixel data stays encoded. For receivers (STOW-RS, C-STORE) that
    accept or refuse an instance up front and analyse it later. Raises the same
    :class:`~analysis.errors.FoveaError` subclasses as :func:`decode`; JPEG/PNG bytes are
    :class:`~analysis.errors.UnsupportedMediaType` here (a DICOM instance is expected)."""
    if not isinstance(data, bytes):
        data = bytes(data)
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(f"The instance is {len(data)} bytes; the limit is {limits.max_bytes} bytes.")
    kind = sniff(data)
    if kind != "dicom":
        raise UnsupportedMediaType(f"The part is a {kind.upper()} image, not a DICOM Part 10 instance.")
    ds = _read_dataset(data, limits)
    _checked_header(ds, data, limits)
    return ds


def _checked_header(ds: Dataset, data: bytes, limits: DecodeLimits) -> tuple[PixelHeader, int, str | None]:
    """Every pre-pixel check of a parsed dataset: ``(header, frames to decode, note on frames skipped)``."""
    try:
        header = _check_header(ds, limits, data)
        count, skipped = _frames_to_decode(header, limits)
        _check_encapsulated_frames(ds, header, count, limits)
    except FoveaError:
        raise
    except Exception as exc:
        raise UnreadableImage(
            f"The DICOM header could not be interpreted ({type(exc).__name__}); the file is corrupt."
        ) from exc
    return header, count, skipped


# ------------------------------------------------------------------------------------------------------------
# Shared helpers
# ------------------------------------------------------------------------------------------------------------


def _check_pixels(width: int, height: int, limits: DecodeLimits, what: str = "The image") -> None:
    if width * height > limits.max_pixels:
        raise PayloadTooLarge(
            f"{what} is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels} pixels "
            "per image."
        )


def _check_min_side(width: int, height: int, limits: DecodeLimits, what: str = "The image") -> None:
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


def _reduced_note(scale: int) -> str:
    return f"decoded at 1/{scale} resolution (the analysis needs no more; results are in original pixels)"


def _jpeg_complete(buf: bytes) -> bool:
    """True if an EOI marker follows the last SOS marker.

    Inside entropy-coded data 0xFF is always followed by 0x00 or RSTn (JPEG) or a byte < 0x80 (JPEG-LS), so
    ``FF DA`` / ``FF D9`` only occur as markers. Trailing padding or garbage after EOI is tolerated.
    """
    sos = buf.rfind(b"\xff\xda")
    return sos >= 0 and buf.rfind(b"\xff\xd9") > sos


def _png_chunks_complete(data: bytes) -> bool:
    """True if the PNG chunks chain from the signature to IEND, each inside the file, IDAT before IEND.

    Besides detecting truncation this matters for memory: OpenCV 5's PNG reader allocates a chunk's DECLARED
    length up front (a 148-byte file declaring a 3.7 GB IDAT made it allocate 3.7 GB), so no chunk may claim
    more bytes than the upload has.
    """
    i, n, seen_idat = 8, len(data), False
    while i + 12 <= n:  # advances by >= 12 bytes per chunk: terminates
        length = int.from_bytes(data[i : i + 4], "big")
        kind = data[i + 4 : i + 8]
        if length > 0x7FFFFFFF or i + 12 + length > n:
            return False
        if kind == b"IDAT":
            seen_idat = True
        elif kind == b"IEND":
            return seen_idat
        i += 12 + length
    return False


def inflated_size(data: bytes, limit: int, *, wbits: int) -> int:
    """Bytes ``data`` (a zlib / raw deflate stream) inflates to, counting at most ``limit + 1``: the output is
    produced 1 MiB at a time and dropped, so memory stays ~1 MiB and work stops just past ``limit``. Trailing
    bytes after the end of the stream are ignored. Raises ``zlib.error`` on a corrupt stream."""
    inflater = zlib.decompressobj(wbits)
    total, pending = 0, data
    while pending and total <= limit and not inflater.eof:
        out = inflater.decompress(pending, 1 << 20)
        total += len(out)
        pending = inflater.unconsumed_tail
        if not out and not pending:
            break
    return total


_PNG_CHANNELS: Final = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel (PNG spec 11.2.2)


def _check_png_inflation(data: bytes, width: int, height: int) -> None:
    """Refuse a PNG whose IDAT stream inflates past what its IHDR can hold (a decompression bomb).

    libpng warns "Too much image data" and stops using the rows, but OpenCV still inflates the whole stream:
    a 260 kB file inflating to 256 MB cost 1.9 s, so a 64 MB upload could cost minutes of CPU. The raw size
    is ``height * (1 + rowbytes)``; Adam7 interlacing adds at most one filter byte and one padding byte per
    pass row (``14 * height``). One bounded inflate (~1 MiB of memory) costs about as much as the decoder's.
    """
    bit_depth, colour, interlace = data[24], data[25], data[28]
    channels = _PNG_CHANNELS.get(colour)
    if channels is None or bit_depth not in (1, 2, 4, 8, 16):
        raise UnreadableImage(f"The PNG header has an invalid colour type {colour} / bit depth {bit_depth}.")
    raw = height * (1 + -(-width * channels * bit_depth // 8))
    bound = raw + (14 * height + 64 if interlace else 0)
    idat = b"".join(_png_chunk_data(data, b"IDAT"))
    try:
        size = inflated_size(idat, bound, wbits=zlib.MAX_WBITS)
    except zlib.error as exc:
        raise UnreadableImage("The PNG image data could not be inflated; the file is corrupt.") from exc
    if size > bound:
        # Security: a decompression bomb; refused before any decoder inflates it.
        raise UnreadableImage(
            f"The PNG image data inflates to more than its {width}x{height} header allows "
            f"({bound} bytes); the file is corrupt or a decompression bomb."
        )


def _png_chunk_data(data: bytes, kind: bytes) -> list[bytes]:
    """The payloads of every ``kind`` chunk (the structure was checked by :func:`_png_chunks_complete`)."""
    out, i, n = [], 8, len(data)
    while i + 12 <= n:
        length = int.from_bytes(data[i : i + 4], "big")
        if data[i + 4 : i + 8] == kind:
            out.append(data[i + 8 : i + 8 + length])
        if data[i + 4 : i + 8] == b"IEND":
            break
        i += 12 + length
    return out


# ------------------------------------------------------------------------------------------------------------
# JPEG / PNG
# ------------------------------------------------------------------------------------------------------------


def _decode_raster(data: bytes, kind: str, limits: DecodeLimits, target: int | None) -> DecodedImage:
    fmt = "JPEG" if kind == "jpeg" else "PNG"
    # 1. Header only (Pillow's open is lazy): dimensions against our limits before decoding anything.
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as im:
            width, height = im.size  # stored order
            # PNG: getexif() would decode the whole image to look for a trailing eXIf chunk - not before the
            # size check, and PNG orientation is rare: only JPEG orientation is honoured.
            orientation = _exif_orientation(im) if kind == "jpeg" else 1
            frames = _frame_count(im)
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(
            f"The {fmt} header declares an image larger than the decoder allows; the limit is "
            f"{limits.max_pixels} pixels per image."
        ) from exc
    except Exception as exc:
        raise UnreadableImage(
            f"The {fmt} header could not be read; the file is corrupt or truncated."
        ) from exc
    if width <= 0 or height <= 0:
        raise UnreadableImage(f"The {fmt} header declares an empty image ({width}x{height}).")
    _check_pixels(width, height, limits, f"The {fmt} image")
    _check_min_side(width, height, limits, f"The {fmt} image")

    # 2. Truncation: decoders (OpenCV in particular) return partial images silently.
    if kind == "jpeg" and not _jpeg_complete(data):
        raise UnreadableImage("The JPEG file is truncated (no end-of-image marker after the last scan).")
    if kind == "png" and not _png_chunks_complete(data):
        raise UnreadableImage(
            "The PNG file is truncated or its chunk structure is corrupt "
            "(no IEND chunk after the image data)."
        )
    if kind == "png":
        _check_png_inflation(data, width, height)

    # 3. Decode (stored order, possibly reduced): OpenCV first, Pillow for what OpenCV cannot read.
    scale = jpeg_reduction(width, height, target) if kind == "jpeg" else 1
    notes: list[str] = []
    if frames > 1:
        what = "animated PNG" if kind == "png" else "multi-picture JPEG"
        notes.append(f"{what} with {frames} frames: only the first (default) image was analysed")
    rgb = _cv2_decode(data, kind, notes, scale)
    if rgb is None:
        rgb = _pillow_decode(data, fmt, notes, scale)
        notes.append("decoded with Pillow (OpenCV could not read it)")
    expected = (-(-height // scale), -(-width // scale))
    if rgb.shape[:2] != expected:
        raise UnreadableImage(
            f"The {fmt} decoded to {rgb.shape[1]}x{rgb.shape[0]} but its header says {width}x{height}"
            + (f" (at 1/{scale}: {expected[1]}x{expected[0]})." if scale > 1 else ".")
        )
    if scale > 1:
        notes.append(_reduced_note(scale))

    # 4. Display orientation: the grader and the reader see the photo the way the camera meant it.
    if orientation != 1:
        rgb = _apply_orientation(rgb, orientation)
        if orientation >= 5:  # the transposing orientations swap the axes
            width, height = height, width
        notes.append(f"EXIF orientation {orientation} applied (pixels rotated/flipped to display order)")
    return DecodedImage(
        rgb=finish_rgb(rgb), source=kind, width=width, height=height, scale=float(scale), notes=tuple(notes)
    )


def _exif_orientation(im: Image.Image) -> int:
    """EXIF Orientation (0x0112) of an opened JPEG, 1 when absent or unreadable (never raises)."""
    try:
        value = im.getexif().get(0x0112, 1)
        return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1
    except Exception:  # noqa: BLE001 - a malformed EXIF block is ignored, not a reason to refuse the photo
        return 1


def _frame_count(im: Image.Image) -> int:
    """Frames of an APNG (acTL) / MPO as Pillow reads them from the header; 1 when unknown."""
    try:
        return max(1, int(getattr(im, "n_frames", 1)))
    except Exception:  # noqa: BLE001 - only feeds a note; the first frame is decoded either way
        return 1


def _apply_orientation(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels into display order for EXIF orientation 2-8 (TIFF/EXIF 2.32, tag 0x0112).

    Same result as Pillow's ``ImageOps.exif_transpose`` (checked by a test for all eight values).
    """
    if orientation == 2:
        return cv2.flip(rgb, 1)  # mirror left-right
    if orientation == 3:
        return cv2.rotate(rgb, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(rgb, 0)  # mirror top-bottom
    if orientation == 5:
        return cv2.transpose(rgb)  # mirror along the main diagonal
    if orientation == 6:
        return cv2.rotate(rgb, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.flip(cv2.transpose(rgb), -1)  # mirror along the anti-diagonal
    if orientation == 8:
        return cv2.rotate(rgb, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return rgb


_CV2_REDUCED: Final = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


def _cv2_decode(data: bytes, kind: str, notes: list[str], scale: int = 1) -> np.ndarray | None:
    """Decode with OpenCV in stored order; ``None`` if OpenCV cannot (the caller falls back to Pillow)."""
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        if kind == "jpeg":
            # Always 8-bit, 3 channels (grayscale / CMYK converted by OpenCV), at 1/scale; EXIF orientation
            # is NOT applied here (we apply it ourselves, identically for both decoders).
            img = cv2.imdecode(buf, _CV2_REDUCED[scale] | cv2.IMREAD_IGNORE_ORIENTATION)
            return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)  # keeps 16 bit and alpha; never rotates
        if img is None:
            return None
        if img.dtype == np.uint16:
            img = scale_uint_to_u8(img, 65535)
            notes.append("16-bit image scaled to 8 bit")
        elif img.dtype != np.uint8:
            return None
        if img.ndim == 2:
            return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
        channels = img.shape[2]
        if channels == 1:
            return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2RGB)
        if channels == 2:  # gray + alpha
            notes.append("alpha channel dropped")
            return cv2.cvtColor(np.ascontiguousarray(img[:, :, 0]), cv2.COLOR_GRAY2RGB)
        if channels == 3:
            return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        if channels == 4:
            notes.append("alpha channel dropped")
            return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
        return None
    except cv2.error:
        logger.debug("OpenCV could not decode a %s upload", kind, exc_info=True)
        return None


def _pillow_decode(data: bytes, fmt: str, notes: list[str], scale: int = 1) -> np.ndarray:
    """Decode with Pillow (fallback) in stored order, a JPEG at 1/scale via ``draft``. Truncation raises
    unless someone enabled Pillow's process-global ``LOAD_TRUNCATED_IMAGES``, which is why truncation is also
    checked from the structure beforehand."""
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as im:
            if scale > 1:
                # draft() picks the largest libjpeg scale <= min(w // req_w, h // req_h): exactly `scale`
                # for req = size // scale (the caller checks the resulting size).
                im.draft("RGB", (im.size[0] // scale, im.size[1] // scale))
            im.load()
            if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
                arr = np.asarray(im)
                if arr.ndim != 2:
                    raise UnreadableImage(f"The {fmt} has an unexpected {im.mode} layout.")
                gray = np.clip(np.rint(arr.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
                notes.append("16-bit image scaled to 8 bit")
                return cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                notes.append("alpha channel dropped")
            return np.asarray(im.convert("RGB"))
    except FoveaError:
        raise
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"The {fmt} image is larger than the decoder allows.") from exc
    except Exception as exc:
        raise UnreadableImage(f"The {fmt} file could not be decoded; it is corrupt or truncated.") from exc


# ------------------------------------------------------------------------------------------------------------
# DICOM
# ------------------------------------------------------------------------------------------------------------


def _echo(value: str, limit: int) -> str:
    """A file-supplied value made safe to quote in a message: printable ASCII, at most ``limit`` chars."""
    text = "".join(ch if " " <= ch <= "~" else "?" for ch in str(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _uid_label(value: str) -> str:
    """``"Name (uid)"`` for a UID pydicom knows, else the bare UID (sanitised, <= 64 chars)."""
    value = _echo(value, 64)
    name = pydicom.uid.UID(value).name
    return f"{name} ({value})" if name and name != value else value


def _accepted_sops() -> str:
    return "; ".join(sorted(_uid_label(u) for u in FUNDUS_SOP_CLASSES))


def _accepted_syntaxes() -> str:
    return "; ".join(sorted(_uid_label(u) for u in ACCEPTED_TRANSFER_SYNTAXES if _plugins_for(u)))


def _read_dataset(data: bytes, limits: DecodeLimits) -> Dataset:
    """Parse a Part 10 file fully (pixel data stays encoded); guard deflated datasets against zip bombs.

    One full parse instead of a ``stop_before_pixels`` pass plus a full pass: the bytes are already in memory
    (<= ``max_bytes``) and nothing is decoded until :func:`_check_header` has passed.
    """
    try:
        fp = io.BytesIO(data)
        read_preamble(fp, False)
        meta, dataset_offset = _read_file_meta(fp)
    except Exception as exc:
        raise UnreadableImage(
            "The DICOM file meta information could not be read; the file is corrupt or truncated."
        ) from exc

    if meta.get("TransferSyntaxUID") == dcm_uid.DeflatedExplicitVRLittleEndian:
        try:  # pydicom inflates with an unbounded zlib.decompress: bound it first
            inflated = inflated_size(data[dataset_offset:], limits.max_inflated_bytes, wbits=-zlib.MAX_WBITS)
        except zlib.error as exc:
            raise UnreadableImage("The deflated DICOM dataset could not be inflated; it is corrupt.") from exc
        if inflated > limits.max_inflated_bytes:
            raise PayloadTooLarge(
                f"The deflated DICOM dataset inflates to more than {limits.max_inflated_bytes} bytes."
            )

    try:
        # Security: force=False (never force=True): a file without the Part 10 header is refused, not guessed.
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
    except RecursionError as exc:  # pydicom reads nested sequences recursively (~150 levels before this)
        raise UnreadableImage(
            f"The DICOM file nests sequences deeper than {limits.max_sequence_depth} levels; it is refused."
        ) from exc
    except Exception as exc:
        raise UnreadableImage("The DICOM file could not be parsed; it is corrupt or truncated.") from exc
    # Security: bound nesting before anything downstream (de-identification, SR, JSON) recurses into it.
    if sequence_depth(ds, stop_after=limits.max_sequence_depth) > limits.max_sequence_depth:
        raise UnreadableImage(
            f"The DICOM file nests sequences deeper than {limits.max_sequence_depth} levels; it is refused."
        )
    return ds


def sequence_depth(ds: Dataset, *, stop_after: int | None = None) -> int:
    """How deep sequences nest in ``ds`` (0: no sequence; 1: items without sequences inside ...), computed
    without recursion; stops early once ``stop_after`` is exceeded."""
    deepest = 0
    stack: list[tuple[Dataset, int]] = [(ds, 0)]
    while stack:
        current, depth = stack.pop()
        deepest = max(deepest, depth)
        if stop_after is not None and deepest > stop_after:
            return deepest
        for element in current.elements():  # raw elements stay raw (bytes): pydicom parses SQ while reading
            value = element.value
            if isinstance(value, Sequence):
                stack.extend((item, depth + 1) for item in value if isinstance(item, Dataset))
    return deepest


def _not_file_meta(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag.group != 0x0002


def _read_file_meta(fp: io.BytesIO) -> tuple[Dataset, int]:
    """The File Meta Information group (PS3.10 7.1) at ``fp`` and the offset of the dataset after it.

    Uses the public ``read_dataset`` with a stop condition (pydicom's public ``read_file_meta_info`` only
    takes a path). The group is Explicit VR Little Endian by the standard; some writers use Implicit VR
    (pydicom issue 503): if the explicit reading cannot be interpreted, read it again as implicit, as
    pydicom's own reader does.
    """
    start = fp.tell()
    for implicit in (False, True):
        fp.seek(start)
        meta = read_dataset(fp, is_implicit_VR=implicit, is_little_endian=True, stop_when=_not_file_meta)
        try:
            for element in meta:  # raises on a value that cannot be interpreted with this VR mode
                _ = element.value
        except NotImplementedError:
            continue
        return meta, fp.tell()
    raise ValueError("unreadable file meta")


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _sop_class(ds: Dataset) -> str | None:
    sop = _text(ds, "SOPClassUID")
    if sop is None and getattr(ds, "file_meta", None) is not None:
        sop = _text(ds.file_meta, "MediaStorageSOPClassUID")
    return sop


def _laterality(ds: Dataset) -> str | None:
    """ImageLaterality (0020,0062), else Laterality (0020,0060); only ``"L"``/``"R"``."""
    for keyword in ("ImageLaterality", "Laterality"):
        value = (_text(ds, keyword) or "").upper()
        if value in ("L", "R"):
            return value
    return None


def _int_attr(ds: Dataset, keyword: str) -> int:
    value = ds.get(keyword)
    if value is None or value == "":
        raise UnreadableImage(f"The DICOM Image Pixel module is incomplete: {keyword} is missing.")
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise UnreadableImage(f"The DICOM {keyword} value is not an integer.") from exc


def _check_header(ds: Dataset, limits: DecodeLimits, data: bytes = b"") -> PixelHeader:
    """Validate SOP class, pixel data presence, transfer syntax and the Image Pixel module, cheapest first.

    ``data``: the file's bytes, to tell a file without Pixel Data from one truncated inside it.
    """
    sop = _sop_class(ds)
    if sop is None and len(ds) == 0:
        raise UnreadableImage("The DICOM file has no data elements after its header; it is truncated.")
    if sop is None:
        raise UnsupportedDicom(
            "The DICOM file is not a fundus photograph: it has no SOP Class UID. "
            f"Accepted SOP classes: {_accepted_sops()}."
        )
    if sop not in FUNDUS_SOP_CLASSES:
        raise UnsupportedDicom(
            f"The DICOM file is not a fundus photograph: its SOP class is {_uid_label(sop)}. "
            f"Accepted SOP classes: {_accepted_sops()}."
        )

    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise UnsupportedDicom(
                "The DICOM file has floating-point pixel data; only integer Pixel Data (7FE0,0010) is "
                "accepted."
            )
        if _PIXEL_DATA_TAGS[0] in data or _PIXEL_DATA_TAGS[1] in data:
            # pydicom stops quietly at the end of a truncated file: the tag is there but its value is not.
            raise UnreadableImage(
                "The DICOM file is truncated or corrupt: its Pixel Data (7FE0,0010) could not be read."
            )
        raise UnsupportedDicom(
            "The DICOM file contains no Pixel Data (7FE0,0010): there is no image to analyse "
            "(or the file was cut short before its pixels)."
        )

    file_meta = getattr(ds, "file_meta", None)
    ts = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if not ts:
        raise UnsupportedDicom(
            f"The DICOM file meta has no Transfer Syntax UID (0002,0010). Accepted: {_accepted_syntaxes()}."
        )
    ts = pydicom.uid.UID(str(ts))
    if ts not in ACCEPTED_TRANSFER_SYNTAXES or not _plugins_for(ts):
        raise UnsupportedDicom(
            f"The DICOM transfer syntax {_uid_label(ts)} is not supported. Accepted: {_accepted_syntaxes()}."
        )

    rows = _int_attr(ds, "Rows")
    columns = _int_attr(ds, "Columns")
    if rows <= 0 or columns <= 0:
        raise UnreadableImage(f"The DICOM image has invalid dimensions {columns}x{rows}.")
    _check_pixels(columns, rows, limits, "The DICOM image (Columns x Rows)")
    _check_min_side(columns, rows, limits, "The DICOM image (Columns x Rows)")

    pi = (_text(ds, "PhotometricInterpretation") or "").upper()
    if not pi:
        raise UnreadableImage(
            "The DICOM Image Pixel module is incomplete: PhotometricInterpretation is missing."
        )
    j2k_only = pi in ("YBR_ICT", "YBR_RCT") and ts not in _J2K_FAMILY
    if pi not in ACCEPTED_PHOTOMETRIC_INTERPRETATIONS or j2k_only:
        raise UnsupportedDicom(
            f"The DICOM photometric interpretation {_echo(pi, 32)!r} is not supported with {_uid_label(ts)}. "
            "Accepted: "
            f"{', '.join(sorted(ACCEPTED_PHOTOMETRIC_INTERPRETATIONS))} "
            "(YBR_ICT / YBR_RCT with JPEG 2000 only)."
        )

    spp = _int_attr(ds, "SamplesPerPixel")
    expected_spp = 1 if pi in ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR") else 3
    if spp != expected_spp:
        raise UnsupportedDicom(
            f"The DICOM file has SamplesPerPixel {spp} with photometric interpretation {pi}; "
            f"{expected_spp} is required."
        )

    bits_allocated = _int_attr(ds, "BitsAllocated")
    bits_stored = _int_attr(ds, "BitsStored")
    pixel_representation = _int_attr(ds, "PixelRepresentation")
    if bits_allocated not in (8, 16) or not 1 <= bits_stored <= bits_allocated:
        raise UnsupportedDicom(
            f"The DICOM bit depth (BitsAllocated {bits_allocated}, BitsStored {bits_stored}) is not "
            "supported; accepted: BitsAllocated 8 or 16 with 1 <= BitsStored <= BitsAllocated."
        )
    if pixel_representation not in (0, 1):
        raise UnreadableImage(f"The DICOM PixelRepresentation {pixel_representation} is invalid (0 or 1).")
    if expected_spp == 3 and pixel_representation != 0:
        raise UnsupportedDicom(f"Signed colour pixel data ({pi}) is not supported; colour must be unsigned.")
    if pi.startswith("YBR_FULL") and bits_allocated != 8:
        raise UnsupportedDicom(f"{pi} pixel data must be 8 bit; found BitsAllocated {bits_allocated}.")
    if ts == dcm_uid.JPEGExtended12Bit and bits_stored > 8:
        raise UnsupportedDicom(
            f"{_uid_label(ts)} with {bits_stored}-bit samples is not supported (no permissively licensed "
            "decoder); accepted: 8-bit JPEG, or a lossless transfer syntax."
        )

    number_of_frames = 1
    if ds.get("NumberOfFrames") not in (None, ""):
        try:
            number_of_frames = max(1, int(ds.NumberOfFrames))
        except (TypeError, ValueError) as exc:
            raise UnreadableImage("The DICOM NumberOfFrames value is not an integer.") from exc

    return PixelHeader(
        transfer_syntax=str(ts),
        rows=rows,
        columns=columns,
        samples_per_pixel=spp,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        pixel_representation=pixel_representation,
        photometric_interpretation=pi,
        number_of_frames=number_of_frames,
    )


def _plugins_for(ts: str) -> tuple[str, ...]:
    """Allowed, installed decoding plugins for ``ts``, in preference order; ``("",)`` for native syntaxes."""
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        return ()
    if decoder.is_native:
        return ("",)
    available = set(decoder.available_plugins)
    return tuple(p for p in _PLUGIN_PREFERENCE.get(ts, ()) if p in available)


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


def _check_encapsulated_frames(ds: Dataset, header: PixelHeader, count: int, limits: DecodeLimits) -> None:
    """Before decoding: each codestream's own header must agree with the DICOM header and the limit, and the
    codestream must be complete (a backend may decode a truncated codestream silently)."""
    ts = header.transfer_syntax
    if ts not in _JPEG_FAMILY and ts not in _J2K_FAMILY:
        return  # RLE: decoded into a buffer sized from Rows x Columns, nothing to smuggle
    for index in range(count):
        try:
            frame = get_frame(ds.PixelData, index, number_of_frames=header.number_of_frames)
        except Exception as exc:
            raise UnreadableImage(
                f"Frame {index} of the encapsulated DICOM pixel data could not be located; the file is "
                "corrupt or truncated."
            ) from exc
        info = _j2k_codestream(frame) if ts in _J2K_FAMILY else _jpeg_codestream(frame)
        if info is None:
            raise UnreadableImage(f"Frame {index} is not a valid {_uid_label(ts)} codestream.")
        _check_pixels(info.width, info.height, limits, f"Frame {index} of the DICOM pixel data")
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
        complete = _jpeg_complete(frame) if ts in _JPEG_FAMILY else b"\xff\xd9" in frame[-16:]
        if not complete:
            raise UnreadableImage(f"Frame {index} of the DICOM pixel data is truncated (no end marker).")


def decoded_bytes_per_frame(header: PixelHeader) -> int:
    """Working memory to decode one frame, from the header: the stored samples (``BitsAllocated``), the RGB
    uint8 output, and for monochrome the float64 modality / VOI intermediate (:mod:`analysis.dicom_pixels`)."""
    pixels = header.rows * header.columns
    stored = pixels * header.samples_per_pixel * max(1, header.bits_allocated // 8)
    intermediate = pixels * 8 if header.photometric_interpretation.startswith("MONOCHROME") else 0
    return stored + pixels * 3 + intermediate


def _frames_to_decode(header: PixelHeader, limits: DecodeLimits) -> tuple[int, str | None]:
    """How many leading frames to decode under ``max_frames`` and ``max_total_pixels`` (at least one), and
    the note for the frames skipped (``None`` when none are)."""
    total = header.number_of_frames
    per_frame = decoded_bytes_per_frame(header)
    if per_frame > limits.max_decoded_bytes:
        # Security: a memory budget checked from the header, before any pixel is decoded.
        raise PayloadTooLarge(
            f"Decoding one frame of this DICOM image needs about {per_frame} bytes; the limit is "
            f"{limits.max_decoded_bytes} bytes."
        )
    by_pixels = max(1, limits.max_total_pixels // (header.rows * header.columns))
    by_bytes = max(1, limits.max_decoded_bytes // per_frame)
    count = min(total, max(1, limits.max_frames), by_pixels, by_bytes)
    if count == total:
        return count, None
    if count == max(1, limits.max_frames):
        limit = f"the limit of {limits.max_frames} frame{'s' if limits.max_frames != 1 else ''} per upload"
    elif count == by_pixels:
        limit = f"the limit of {limits.max_total_pixels} decoded pixels per upload"
    else:
        limit = f"the decoding memory limit of {limits.max_decoded_bytes} bytes per upload"
    decoded = "frame 0 was" if count == 1 else f"frames 0-{count - 1} were"
    return count, f"{total - count} of {total} frames skipped past {limit} ({decoded} analysed)"


def _decode_dicom(data: bytes, limits: DecodeLimits, target: int | None) -> list[DecodedImage]:
    ds = _read_dataset(data, limits)
    header, count, skipped = _checked_header(ds, data, limits)
    notes: list[str] = [skipped] if skipped else []
    if header.bits_stored > 8 or header.bits_allocated > 8:
        notes.append(f"{header.bits_stored}-bit pixel data scaled to 8 bit")

    frames, frame_notes, scale = _decode_dicom_frames(data, ds, header, count, limits, target)
    if scale > 1:
        frame_notes.append(_reduced_note(scale))
    multi = header.number_of_frames > 1
    common: dict[str, Any] = {
        "source": "dicom",
        "width": header.columns,
        "height": header.rows,
        "scale": float(scale),
        "laterality": _laterality(ds),
        "sop_class_uid": _sop_class(ds),
        "study_instance_uid": _text(ds, "StudyInstanceUID"),
        "series_instance_uid": _text(ds, "SeriesInstanceUID"),
        "sop_instance_uid": _text(ds, "SOPInstanceUID"),
        "photometric_interpretation": header.photometric_interpretation,
        "transfer_syntax_uid": header.transfer_syntax,
        "notes": tuple(notes + frame_notes),
    }
    return [DecodedImage(rgb=rgb, frame_index=i if multi else None, **common) for i, rgb in enumerate(frames)]


def _pillow_jpeg_colour(header: PixelHeader) -> bool:
    """True for frames :func:`~analysis.dicom_pixels.decode_jpeg_colour_frames` handles: colour 8-bit JPEG
    baseline / extended with a colour model pydicom's Pillow plugin handles, when Pillow is allowed."""
    return (
        header.transfer_syntax in (dcm_uid.JPEGBaseline8Bit, dcm_uid.JPEGExtended12Bit)
        and header.samples_per_pixel == 3
        and header.bits_allocated == 8
        and header.bits_stored == 8
        and header.photometric_interpretation in ("RGB", "YBR_FULL", "YBR_FULL_422")
        and "pillow" in _plugins_for(header.transfer_syntax)
    )


def _decode_dicom_frames(
    data: bytes, ds: Dataset, header: PixelHeader, count: int, limits: DecodeLimits, target: int | None
) -> tuple[list[np.ndarray], list[str], int]:
    """Decode the first ``count`` frames to RGB uint8 -> ``(frames, notes, scale)``.

    Colour 8-bit JPEG goes to Pillow directly (fast, and at reduced resolution for a ``target``); everything
    else, and any frame Pillow fails on, through pydicom trying each allowed plugin in turn at full size;
    GDCM only in a child process (see :mod:`analysis.dicom_pixels`)."""
    failures: list[str] = []
    last_exc: Exception | None = None
    if _pillow_jpeg_colour(header):
        scale = jpeg_reduction(header.columns, header.rows, target)
        try:
            return decode_jpeg_colour_frames(ds, header, count, scale), [], scale
        except FoveaError:
            raise
        except Exception as exc:
            logger.debug("direct Pillow JPEG decoding failed", exc_info=True)
            failures.append(f"pillow (direct): {type(exc).__name__}")
            last_exc = exc
    for plugin in _plugins_for(header.transfer_syntax):
        try:
            if plugin in IN_PROCESS_PLUGINS:
                return *decode_frames(ds, header, count, plugin), 1
            return *decode_frames_isolated(
                data, header, count, plugin, timeout_s=limits.isolated_decode_timeout_s
            ), 1
        except FoveaError:
            raise
        except Exception as exc:
            logger.debug("pydicom plugin %r failed", plugin or "native", exc_info=True)
            failures.append(f"{plugin or 'native'}: {type(exc).__name__}")
            last_exc = exc
    raise UnreadableImage(
        f"The DICOM pixel data ({_uid_label(header.transfer_syntax)}) could not be decoded "
        f"({'; '.join(failures) or 'no decoder'}); the file is corrupt or truncated."
    ) from last_exc
