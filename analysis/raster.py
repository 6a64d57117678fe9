"""JPEG and PNG uploads to RGB: header-first size checks, structural truncation and decompression-bomb
checks, OpenCV decoding (Pillow as the fallback), reduced-resolution JPEG decoding (libjpeg DCT scaling), and
EXIF orientation. :mod:`analysis.decode` states the contract (colour handling, notes, ``scale``)."""

from __future__ import annotations

import io
import logging
import zlib
from typing import Final

import cv2
import numpy as np
from PIL import Image

from analysis.codestream import jpeg_complete
from analysis.decode_checks import check_min_side, check_pixels, inflated_size, jpeg_reduction, reduced_note
from analysis.decode_types import DecodedImage, DecodeLimits
from analysis.dicom_pixels import finish_rgb, scale_uint_to_u8
from analysis.errors import FoveaError, PayloadTooLarge, UnreadableImage

__all__ = ["decode_raster"]

logger = logging.getLogger(__name__)


def _png_chunks_complete(data: bytes) -> bool:
    """True if the PNG chunks chain from the signature to IEND, each inside the file, IDAT before IEND.

    Besides detecting truncation this matters for memory: OpenCV 5's PNG reader allocates a chunk's DECLARED
    length up front (a file of a few bytes declaring a gigabyte IDAT makes it allocate a gigabyte), so no
    chunk may claim more bytes than the upload has.
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



_PNG_CHANNELS: Final = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel (PNG spec 11.2.2)


def _check_png_inflation(data: bytes, width: int, height: int) -> None:
    """Refuse a PNG whose IDAT stream inflates past what its IHDR can hold (a decompression bomb).

    libpng warns "Too much image data" and stops using the rows, but OpenCV still inflates the whole stream:
    a small file inflating a thousandfold costs seconds, so a full-size upload could cost minutes of CPU. The
    raw size is ``height * (1 + rowbytes)``; Adam7 interlacing adds at most one filter byte and one padding
    byte per pass row (``14 * height``). One bounded inflate (~1 MiB of memory) costs about as much as the decoder's.
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



def decode_raster(data: bytes, kind: str, limits: DecodeLimits, target: int | None) -> DecodedImage:
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
    check_pixels(width, height, limits, f"The {fmt} image")
    check_min_side(width, height, limits, f"The {fmt} image")

    # 2. Truncation: decoders (OpenCV in particular) return partial images silently.
    if kind == "jpeg" and not jpeg_complete(data):
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
        notes.append(reduced_note(scale))

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

