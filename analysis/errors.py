"""Typed errors that the service maps to JSON 4xx responses.

Contract: every error a client can cause is a :class:`FoveaError` subclass carrying an HTTP status, a stable
machine-readable ``code`` and a ``message`` a person can act on. Messages never contain patient data (names,
IDs, dates): they describe the file, not the patient.
"""

from __future__ import annotations


class FoveaError(Exception):
    """Base class: ``status`` (HTTP), ``code`` (stable identifier), ``message`` (actionable, no PHI)."""

    status: int = 400
    code: str = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, dict[str, str]]:
        """The DESIGN.md error body: ``{"error": {"code": ..., "message": ...}}``."""
        return {"error": {"code": self.code, "message": self.message}}


class UnreadableImage(FoveaError):
    """The bytes look like a supported format but cannot be decoded (truncated, corrupt)."""

    status = 400
    code = "unreadable_image"


class PayloadTooLarge(FoveaError):
    """The upload, or the image it would decode to, exceeds the configured limits."""

    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(FoveaError):
    """The bytes are not DICOM Part 10, JPEG or PNG."""

    status = 415
    code = "unsupported_media_type"


class UnsupportedDicom(FoveaError):
    """Valid DICOM that Fovea does not analyse: no pixel data, a non-fundus SOP class, an unsupported
    transfer syntax or photometric interpretation."""

    status = 422
    code = "unsupported_dicom"


class BadRequest(FoveaError):
    """The request itself is malformed (a form field with an invalid value, no image sent)."""

    status = 400
    code = "bad_request"


class ImageTooSmall(FoveaError):
    """A readable image whose shorter side is below the decoder's minimum: nothing a grader can analyse."""

    status = 422
    code = "image_too_small"


class NotFound(FoveaError):
    """The URL names nothing Fovea holds (e.g. a DICOMweb result not produced yet, or another site's)."""

    status = 404
    code = "not_found"


class NotAcceptable(FoveaError):
    """The ``Accept`` header names no representation this resource has."""

    status = 406
    code = "not_acceptable"
