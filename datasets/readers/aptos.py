"""APTOS 2019 Blindness Detection (Kaggle) layout.

Layout
------
``root/train.csv`` with the header ``id_code,diagnosis``; ``diagnosis`` is the ICDR grade 0-4. Images are
``root/train_images/<id_code>.png`` (any of :data:`~datasets.readers.common.IMAGE_EXTENSIONS` is accepted).
The competition's ``test.csv`` has no labels and is not read.

APTOS gives no patient, laterality, DME, quality verdict or lesions: those fields are ``None``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datasets.readers.common import parse_grade, read_csv_layout
from datasets.readers.record import FundusRecord

LABELS_CSV = "train.csv"
IMAGES = "train_images"


def read_aptos(root: Path) -> list[FundusRecord]:
    """One :class:`FundusRecord` per row of ``root/train.csv``, in file order."""
    root = Path(root)

    def fields(row: dict[str, str], name: str) -> dict[str, Any]:
        return {"grade": parse_grade(row["diagnosis"], "diagnosis", name)}

    return read_csv_layout(root / LABELS_CSV, layout="APTOS 2019 (train.csv + train_images/)", source="aptos",
                           name_col="id_code", required=("diagnosis",), dirs=[root / IMAGES], fields=fields)
