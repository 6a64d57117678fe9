"""The service's form fields, checked: uploaded files (size first) and laterality values.

Pure functions of the request's fields and the limits, so they are unit-tested without a server; every
problem is a :class:`analysis.errors.FoveaError` (a JSON 4xx naming what to change), never an exception
BentoML would turn into a 500.
"""

from __future__ import annotations

from pathlib import Path

from analysis.errors import BadRequest, PayloadTooLarge


def read_upload(image: Path, max_bytes: int) -> bytes:
    """The upload's bytes, refusing an oversize one before reading it."""
    size = image.stat().st_size
    if size > max_bytes:
        raise PayloadTooLarge(f"the file is {size} bytes; the limit is {max_bytes} bytes")
    return image.read_bytes()


def laterality(value: str | None) -> str | None:
    """A form field's laterality: "L"/"R" (also "left"/"right", "OS"/"OD", any case); ``None`` when empty."""
    v = (value or "").strip().upper()
    if not v:
        return None
    if v in {"L", "LEFT", "OS"}:
        return "L"
    if v in {"R", "RIGHT", "OD"}:
        return "R"
    # Only the first characters are echoed: the field is free text from the client.
    raise BadRequest(f"laterality must be L or R (or left/right, OS/OD), not {(value or '')[:16]!r}")


def study_uploads(images: list[Path], lateralities: str, *, max_images: int, max_bytes: int
                  ) -> list[tuple[bytes, str | None]]:
    """``(bytes, laterality or None)`` per uploaded image of one study; ``lateralities`` is empty or one L/R
    per image, comma-separated, in the same order."""
    values = lateralities.split(",") if lateralities.strip() else []
    if not images:
        raise BadRequest("send at least one photograph in the 'images' field")
    if len(images) > max_images:
        raise PayloadTooLarge(f"{len(images)} images in one study; the limit is {max_images}")
    if values and len(values) != len(images):
        raise BadRequest(f"{len(values)} laterality values for {len(images)} images: send one per image, "
                         "in the same order, or none")
    lats = [laterality(v) for v in values] or [None] * len(images)
    return [(read_upload(p, max_bytes), lat) for p, lat in zip(images, lats, strict=True)]
