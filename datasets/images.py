"""Helpers shared by the dataset layout readers: find an image by trying extensions, open a labelled CSV.

Every reader reports problems as ``ValueError("<csv path>:<line>: <what is wrong>")`` and a missing labels
file as ``FileNotFoundError``; the helpers here implement those conventions once.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path

#: Extensions tried, in order, when a layout names an image without (or with another) extension.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpeg", ".jpg", ".png", ".tif", ".tiff")
GRADES = range(0, 5)


def find_image(root: Path, name: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> Path | None:
    """``root/<name><ext>`` for the first of ``extensions`` that is a file, else ``None``."""
    for ext in extensions:
        candidate = root / f"{name}{ext}"
        if candidate.is_file():
            return candidate
    return None


def require_file(path: Path, layout: str) -> None:
    """``FileNotFoundError`` naming ``path`` and the expected ``layout`` when ``path`` is not a file."""
    if not path.is_file():
        raise FileNotFoundError(f"no labels file {path} (expected the {layout} layout)")


def csv_rows(path: Path, required: Sequence[str]) -> Iterator[tuple[str, dict[str, str]]]:
    """Yield ``("<path>:<line>", row)`` for each non-blank row of the CSV ``path``.

    Header names are stripped of surrounding white space (IDRiD's header has a trailing space); values are
    stripped too. Rows whose fields are all empty (trailing ``,,,`` lines) are skipped. A header lacking one
    of ``required`` raises ``ValueError("<path>:1: header lacks column(s) ...")``.
    """
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in required if c not in columns]
        if missing:
            got = ",".join(columns) or "nothing"
            raise ValueError(f"{path}:1: header lacks column(s) {', '.join(missing)} (got {got})")
        reader.fieldnames = columns
        for row in reader:
            values = {k: (v or "").strip() for k, v in row.items() if isinstance(k, str)}
            if not any(values.values()):
                continue
            yield f"{path}:{reader.line_num}", values


def parse_grade(text: str, where: str, what: str, name: str) -> int:
    """ICDR grade 0-4 from ``text`` (``"3"`` or an integral float such as ``"3.0"``); ``ValueError`` otherwise."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: {what} {text!r} of image {name!r} is not an integer 0-4") from None
    if not value.is_integer():
        raise ValueError(f"{where}: {what} {text!r} of image {name!r} is not an integer 0-4")
    grade = int(value)
    if grade not in GRADES:
        raise ValueError(f"{where}: {what} {grade} of image {name!r} is outside 0-4")
    return grade
