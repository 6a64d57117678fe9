"""EyePACS (Kaggle Diabetic Retinopathy Detection, 2015) layout.

Layout
------
``root/trainLabels.csv`` with the header ``image,level`` (extra columns such as ``Usage`` are ignored), one
row per photograph: ``image`` is the file name without extension, ``level`` the ICDR grade 0-4. Images are
``root/<image>.jpeg`` or, as the competition's archive unpacks, ``root/train/<image>.jpeg`` (any of
:data:`~datasets.readers.common.IMAGE_EXTENSIONS` is accepted). Names are ``<patient>_left`` /
``<patient>_right``: the record's ``patient`` and ``laterality`` come from them (``None`` for other names).

EyePACS gives neither DME, an image-quality verdict nor lesions: those fields are ``None``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datasets.readers.common import parse_eyepacs_name, parse_grade, read_csv_layout
from datasets.readers.record import FundusRecord

LABELS_CSV = "trainLabels.csv"
#: Folders searched, in order, for the images.
IMAGE_DIRS: tuple[str, ...] = (".", "train")


def read_eyepacs(root: Path, *, labels: str = LABELS_CSV) -> list[FundusRecord]:
    """One :class:`FundusRecord` per row of ``root/labels``, in file order (see the module docstring)."""
    root = Path(root)

    def fields(row: dict[str, str], name: str) -> dict[str, Any]:
        patient, laterality = parse_eyepacs_name(name)
        return {"grade": parse_grade(row["level"], "level", name), "patient": patient, "laterality": laterality}

    return read_csv_layout(root / labels, layout=f"EyePACS ({labels} + <image>.jpeg)", source="eyepacs",
                           name_col="image", required=("level",),
                           dirs=[(root / d) if d != "." else root for d in IMAGE_DIRS], fields=fields)
