"""DICOM frames to RGB: the frames the limits allow, decoded by Pillow directly (colour 8-bit JPEG, possibly at
reduced resolution) or by pydicom with each allowed plugin in turn, GDCM only in a child process
(:mod:`analysis.dicom_pixels`); one :class:`~analysis.decode_types.DecodedImage` per frame."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from pydicom import uid as dcm_uid
from pydicom.dataset import Dataset

from analysis.decode_checks import jpeg_reduction, reduced_note, uid_label
from analysis.decode_types import DecodedImage, DecodeLimits
from analysis.dicom_header import (
    checked_header,
    header_text,
    laterality_of,
    plugins_for,
    read_dataset_limited,
    sop_class_of,
)
from analysis.dicom_pixels import (
    IN_PROCESS_PLUGINS,
    PixelHeader,
    decode_frames,
    decode_frames_isolated,
    decode_jpeg_colour_frames,
)
from analysis.errors import FoveaError, UnreadableImage

__all__ = ["decode_dicom"]

logger = logging.getLogger(__name__)


def decode_dicom(data: bytes, limits: DecodeLimits, target: int | None, dataset: Dataset | None = None
                 ) -> list[DecodedImage]:
    """The frames of the Part 10 file ``data`` under ``limits`` (module docstring). ``dataset``: ``data``
    already parsed under limits no looser than these (:func:`analysis.dicom_header.dataset_under`); it is
    not parsed again, but every header check is made again under ``limits``."""
    ds = read_dataset_limited(data, limits) if dataset is None else dataset
    header, count, skipped = checked_header(ds, data, limits)
    notes: list[str] = [skipped] if skipped else []
    if header.bits_stored > 8 or header.bits_allocated > 8:
        notes.append(f"{header.bits_stored}-bit pixel data scaled to 8 bit")

    frames, frame_notes, scale = _decode_dicom_frames(data, ds, header, count, limits, target)
    if scale > 1:
        frame_notes.append(reduced_note(scale))
    multi = header.number_of_frames > 1
    common: dict[str, Any] = {
        "source": "dicom",
        "width": header.columns,
        "height": header.rows,
        "scale": float(scale),
        "laterality": laterality_of(ds),
        "sop_class_uid": sop_class_of(ds),
        "study_instance_uid": header_text(ds, "StudyInstanceUID"),
        "series_instance_uid": header_text(ds, "SeriesInstanceUID"),
        "sop_instance_uid": header_text(ds, "SOPInstanceUID"),
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
        and "pillow" in plugins_for(header.transfer_syntax)
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
    for plugin in plugins_for(header.transfer_syntax):
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
        f"The DICOM pixel data ({uid_label(header.transfer_syntax)}) could not be decoded "
        f"({'; '.join(failures) or 'no decoder'}); the file is corrupt or truncated."
    ) from last_exc

