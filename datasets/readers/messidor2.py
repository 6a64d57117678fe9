"""Messidor-2 with the adjudicated grades of Krause et al. (Ophthalmology 2018), Kaggle "messidor2" layout.

Layout
------
``root/messidor_data.csv`` with the header ``image_id,adjudicated_dr_grade,adjudicated_dme,
adjudicated_gradable``. ``image_id`` usually carries its extension (``20051020_43808_0100_PP.png``,
``IM002385.JPG``); it is looked up as given, then with each usual extension appended, then with its extension
replaced. Folders searched, in order: ``root/IMAGES``, ``root/messidor-2/preprocess``, ``root``.

Values: grades ``0``-``4`` (also written ``2.0``); ``adjudicated_dme`` and ``adjudicated_gradable`` ``0``/``1``
(or ``0.0``/``1.0``), empty meaning "not given". **Ungradable rows are kept**, not dropped: their grade is
empty in the published table, so the record has ``grade=None, gradable=False`` (the training side decides
what to skip). Patient and laterality are not in the table: ``None``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets.readers.common import parse_flag, parse_grade, read_csv_layout
from datasets.readers.record import FundusRecord

LABELS_CSV = "messidor_data.csv"
#: Sub-folders searched, in order, for the images (then the root itself).
IMAGE_DIRS: tuple[str, ...] = ("IMAGES", "messidor-2/preprocess")
GRADE, DME, GRADABLE = "adjudicated_dr_grade", "adjudicated_dme", "adjudicated_gradable"


def read_messidor2(root: Path, *, images: str | None = None) -> list[FundusRecord]:
    """One :class:`FundusRecord` per row of ``root/messidor_data.csv``, in file order.

    ``images`` replaces the default image sub-folders (``root`` itself is always searched last).
    """
    root = Path(root)
    subdirs: Sequence[str] = (images,) if images is not None else IMAGE_DIRS

    def fields(row: dict[str, str], name: str) -> dict[str, Any]:
        grade = parse_grade(row[GRADE], GRADE, name) if row[GRADE] else None
        return {"grade": grade, "dme": parse_flag(row[DME], DME, name),
                "gradable": parse_flag(row[GRADABLE], GRADABLE, name)}

    return read_csv_layout(root / LABELS_CSV, layout="Messidor-2 (messidor_data.csv + IMAGES/)",
                           source="messidor2", name_col="image_id", required=(GRADE, DME, GRADABLE),
                           dirs=[root / d for d in subdirs] + [root], fields=fields)
