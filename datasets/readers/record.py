"""The one record type every dataset reader returns, so training never cares where data came from.

Contract
--------
A :class:`FundusRecord` describes one fundus photograph and what its dataset says about it. Every label field
uses ``None`` for "this dataset does not give it" — never a guess:

* ``grade``: ICDR grade 0-4, or ``None`` (no grade: ungradable, or a lesion-only dataset);
* ``dme``: diabetic macular oedema present, or ``None``;
* ``gradable``: the dataset's image-quality verdict, or ``None`` when it has none;
* ``laterality``: ``"L"`` / ``"R"``, or ``None``;
* ``patient``: an opaque patient key (never a name or a raw hospital ID), or ``None``;
* ``lesions``: the annotated lesions, ``()`` when the image was annotated and has none, ``None`` when the
  dataset has no lesion annotation for this image;
* ``source``: the reader that produced the record (a key of :data:`datasets.readers.READERS`).

:class:`LesionBox` boxes are ``(x0, y0, x1, y1)`` in pixels of the original image, ``x1``/``y1`` exclusive, and
``type`` is one of :data:`datasets.synthetic.fundus.LESION_TYPES`. Both classes validate on construction and
raise ``ValueError`` for values outside this contract (a bug in a reader, not a data problem: readers turn data
problems into :class:`~datasets.readers.errors.DatasetError` before building records).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from datasets.synthetic.fundus import LESION_TYPES

__all__ = ["GRADES", "LESION_TYPES", "FundusRecord", "LesionBox"]

#: ICDR grades: 0 none, 1 mild, 2 moderate, 3 severe non-proliferative, 4 proliferative DR.
GRADES = range(0, 5)

Laterality = Literal["L", "R"]


@dataclass(frozen=True)
class LesionBox:
    """One lesion: ``type`` in :data:`LESION_TYPES`; ``box`` ``(x0, y0, x1, y1)`` in original pixels, x1/y1
    exclusive."""

    type: str
    box: tuple[float, float, float, float]

    def __post_init__(self) -> None:
        if self.type not in LESION_TYPES:
            raise ValueError(f"lesion type {self.type!r} is not one of {', '.join(LESION_TYPES)}")
        box = tuple(float(v) for v in self.box)
        if len(box) != 4 or not all(math.isfinite(v) for v in box):
            raise ValueError(f"lesion box must be 4 finite numbers, got {self.box!r}")
        x0, y0, x1, y1 = box
        if not (0 <= x0 < x1 and 0 <= y0 < y1):
            raise ValueError(f"lesion box {box} must satisfy 0 <= x0 < x1 and 0 <= y0 < y1")
        object.__setattr__(self, "box", box)


@dataclass(frozen=True, kw_only=True)
class FundusRecord:
    """One photograph and its labels; see the module docstring for what ``None`` means in each field."""

    image: Path
    grade: int | None
    dme: bool | None = None
    gradable: bool | None = None
    laterality: Laterality | None = None
    patient: str | None = None
    lesions: tuple[LesionBox, ...] | None = None
    source: str

    def __post_init__(self) -> None:
        if self.grade is not None and (isinstance(self.grade, bool) or self.grade not in GRADES):
            raise ValueError(f"grade must be an integer 0-4 or None, got {self.grade!r}")
        if self.laterality not in ("L", "R", None):
            raise ValueError(f"laterality must be 'L', 'R' or None, got {self.laterality!r}")
        for name in ("dme", "gradable"):
            if not (getattr(self, name) is None or isinstance(getattr(self, name), bool)):
                raise ValueError(f"{name} must be a bool or None, got {getattr(self, name)!r}")
        if self.lesions is not None and not all(isinstance(b, LesionBox) for b in self.lesions):
            raise ValueError("lesions must be a tuple of LesionBox or None")
        if self.lesions is not None and not isinstance(self.lesions, tuple):
            object.__setattr__(self, "lesions", tuple(self.lesions))
        if not self.source:
            raise ValueError("source must name the reader")
        object.__setattr__(self, "image", Path(self.image))

    @property
    def group(self) -> str:
        """The key that keeps images of one patient together: ``patient``, else the image file's stem."""
        return self.patient if self.patient is not None else self.image.stem
