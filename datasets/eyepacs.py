"""Reader for the EyePACS (Kaggle diabetic-retinopathy) directory layout.

Contract
--------
``read_eyepacs(root)`` reads ``root/trainLabels.csv`` (header with at least the columns ``image`` and
``level``; extra columns such as ``Usage`` are ignored) and returns, in file order, one ``(image path,
grade)`` per row. The image is ``root/<image><ext>`` for the first of :data:`datasets.images.IMAGE_EXTENSIONS`
that exists.

Errors: a missing CSV raises ``FileNotFoundError``; a missing column, an empty image name, a duplicate image,
a level that is not an integer 0-4 or an image found under none of the extensions raises ``ValueError`` with a
message of the form ``<csv path>:<line>: <what is wrong>``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from datasets.images import GRADES, IMAGE_EXTENSIONS, find_image

LABELS_CSV = "trainLabels.csv"

__all__ = ["GRADES", "IMAGE_EXTENSIONS", "LABELS_CSV", "find_image", "read_eyepacs"]


def read_eyepacs(root: Path, *, labels: str = LABELS_CSV) -> list[tuple[Path, int]]:
    """``(image path, ICDR grade)`` for every row of ``root/labels`` (see the module docstring)."""
    root = Path(root)
    path = root / labels
    if not path.is_file():
        raise FileNotFoundError(f"no labels file {path} (expected the EyePACS layout: {labels} next to the images)")
    items: list[tuple[Path, int]] = []
    seen: dict[str, int] = {}
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in ("image", "level") if c not in columns]
        if missing:
            got = ",".join(columns) or "nothing"
            raise ValueError(f"{path}:1: header lacks column(s) {', '.join(missing)} (got {got})")
        reader.fieldnames = columns
        for row in reader:
            where = f"{path}:{reader.line_num}"
            name = (row.get("image") or "").strip()
            level_text = (row.get("level") or "").strip()
            if not name:
                raise ValueError(f"{where}: empty image name")
            if name in seen:
                raise ValueError(f"{where}: image {name!r} already listed on line {seen[name]}")
            seen[name] = reader.line_num
            try:
                level = int(level_text)
            except ValueError:
                raise ValueError(f"{where}: level {level_text!r} of image {name!r} is not an integer 0-4") from None
            if level not in GRADES:
                raise ValueError(f"{where}: level {level} of image {name!r} is outside 0-4")
            image = find_image(root, name)
            if image is None:
                tried = ", ".join(IMAGE_EXTENSIONS)
                raise ValueError(f"{where}: image {name!r} not found in {root} (tried {tried})")
            items.append((image, level))
    return items
