"""The public types of decoding: :class:`DecodeLimits` (what a caller allows) and :class:`DecodedImage` (one
decoded frame). :mod:`analysis.decode` states the contract they belong to."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DecodeLimits", "DecodedImage"]


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


