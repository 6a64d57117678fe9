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
  with pydicom's colour rules, YBR -> RGB by OpenCV, faster than pydicom's numpy conversion), which is
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

Where the work is done
----------------------
This module is the entry point; each concern has its own module: :mod:`analysis.decode_types` (the limits
and the decoded image), :mod:`analysis.decode_checks` (limit checks shared by all formats),
:mod:`analysis.sniff` (magic bytes), :mod:`analysis.raster` (JPEG / PNG), :mod:`analysis.dicom_header` (the
DICOM parse under the limits and the header checks), :mod:`analysis.codestream` (encapsulated codestream
checks), :mod:`analysis.dicom_frames` (DICOM frames to RGB) and :mod:`analysis.dicom_pixels` (the pixel
conversions and the GDCM child process). A :class:`~analysis.dicom_header.DicomInstance` (a DICOM instance a
receiver already parsed with :func:`read_dicom_instance`) may be passed instead of bytes: it is not parsed
again.
"""

from __future__ import annotations

import logging

from analysis.decode_checks import jpeg_reduction
from analysis.decode_types import DecodedImage, DecodeLimits
from analysis.dicom_frames import decode_dicom
from analysis.dicom_header import (
    ACCEPTED_PHOTOMETRIC_INTERPRETATIONS,
    ACCEPTED_TRANSFER_SYNTAXES,
    FUNDUS_SOP_CLASSES,
    DicomInstance,
    dataset_under,
    read_dicom_header,
    read_dicom_instance,
)
from analysis.errors import FoveaError, PayloadTooLarge, UnreadableImage
from analysis.raster import decode_raster
from analysis.sniff import sniff

__all__ = [
    "ACCEPTED_PHOTOMETRIC_INTERPRETATIONS",
    "ACCEPTED_TRANSFER_SYNTAXES",
    "FUNDUS_SOP_CLASSES",
    "DecodeLimits",
    "DecodedImage",
    "DicomInstance",
    "decode",
    "jpeg_reduction",
    "read_dicom_header",
    "read_dicom_instance",
    "sniff",
]

logger = logging.getLogger(__name__)


def decode(
    data: bytes | DicomInstance, *, limits: DecodeLimits = DecodeLimits(), target: int | None = None
) -> list[DecodedImage]:
    """Decode one upload into RGB frames (one :class:`DecodedImage` per analysed frame, never empty).

    Raises only :class:`~analysis.errors.FoveaError` subclasses for bad bytes (see the module docstring for
    which one when); size limits are enforced before any pixel is decoded. ``target``: the smallest short
    side the caller needs (e.g. the model input size); a JPEG at least twice as large on its short side is
    decoded at reduced resolution (see the module docstring and :attr:`DecodedImage.scale`). ``None`` (the
    default) always decodes at full resolution. A ``target`` below 1 is a programming error
    (``ValueError``). ``data`` may be a :class:`DicomInstance` from :func:`read_dicom_instance`: its dataset
    is used without parsing it again (unless ``limits`` are tighter than those it was read under), and every
    other check is made under ``limits``.
    """
    if target is not None and (not isinstance(target, int) or target < 1):
        raise ValueError(f"target must be a positive int or None, not {target!r}")
    instance = data if isinstance(data, DicomInstance) else None
    if instance is not None:
        data = instance.data
    elif not isinstance(data, bytes):
        data = bytes(data)  # bytearray / memoryview
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(f"The upload is {len(data)} bytes; the limit is {limits.max_bytes} bytes.")
    kind = sniff(data)
    try:
        if kind == "dicom":
            dataset = dataset_under(instance, limits) if instance is not None else None
            return decode_dicom(data, limits, target, dataset)
        return [decode_raster(data, kind, limits, target)]
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
