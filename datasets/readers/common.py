"""Helpers shared by the layout readers: find an image by trying extensions, read a labelled CSV row by row,
parse grades and 0/1 flags, split EyePACS-style names. Every problem is reported the
:mod:`datasets.readers.errors` way (file and line)."""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from datasets.readers.errors import DatasetError, Problems, RowProblem
from datasets.readers.record import GRADES, FundusRecord

__all__ = ["IMAGE_EXTENSIONS", "check_name", "csv_rows", "find_image", "line_of", "locate", "parse_eyepacs_name",
           "parse_flag", "parse_grade", "read_csv_layout", "require_file", "searched"]

#: Extensions tried, in order, when a layout names an image without (or with another) extension.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpeg", ".jpg", ".png", ".tif", ".tiff")

_EYEPACS_NAME = re.compile(r"^(?P<patient>.+)_(?P<eye>left|right)$")


def find_image(folder: Path, name: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> Path | None:
    """``folder/<name><ext>`` for the first of ``extensions`` that is a file, else ``None``."""
    for ext in extensions:
        candidate = folder / f"{name}{ext}"
        if candidate.is_file():
            return candidate
    return None


def locate(dirs: Sequence[Path], name: str) -> Path | None:
    """The image ``name`` in the first of ``dirs`` holding it: as given (when it has an extension), else with
    each of :data:`IMAGE_EXTENSIONS` appended, else with its extension replaced by each of them."""
    stem = Path(name).stem if Path(name).suffix else None
    for folder in dirs:
        if stem is not None and (folder / name).is_file():
            return folder / name
        found = find_image(folder, name) or (find_image(folder, stem) if stem else None)
        if found is not None:
            return found
    return None


def searched(dirs: Sequence[Path]) -> str:
    """How :func:`locate` looked for images in ``dirs``, for a "not found" report."""
    return f"{', '.join(str(d) for d in dirs)} (extensions tried: {', '.join(IMAGE_EXTENSIONS)})"


def require_file(path: Path, layout: str) -> None:
    """:class:`DatasetError` naming ``path`` and the expected ``layout`` when ``path`` is not a file."""
    if not path.is_file():
        raise DatasetError(f"no dataset at {path.parent}: {path} not found (expected the {layout} layout)")


def csv_rows(path: Path, required: Sequence[str]) -> Iterator[tuple[str, dict[str, str]]]:
    """Yield ``("<path>:<line>", row)`` for each non-blank row of the CSV ``path``.

    Header names and values are stripped of surrounding white space (IDRiD's published header has a trailing
    space, ``Risk of macular edema ``). Rows whose fields are all empty (trailing ``,,,`` lines) are skipped.
    A header lacking one of ``required`` raises ``DatasetError("<path>:1: header lacks column(s) ...")``; a
    file that is not UTF-8 text or not CSV raises :class:`DatasetError` naming the line.
    """
    reader: csv.DictReader[str] | None = None
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in required if c not in columns]
            if missing:
                got = ",".join(columns) or "nothing"
                raise DatasetError(f"{path}:1: header lacks column(s) {', '.join(missing)} (got {got}; "
                                   f"expected {','.join(required)})")
            reader.fieldnames = columns
            for row in reader:
                values = {k: (v or "").strip() for k, v in row.items() if isinstance(k, str)}
                if not any(values.values()):
                    continue
                yield f"{path}:{reader.line_num}", values
    except UnicodeDecodeError as exc:
        line = reader.line_num + 1 if reader is not None else 1
        raise DatasetError(f"{path}:{line}: not UTF-8 text ({exc.reason}); save the file as UTF-8") from None
    except csv.Error as exc:
        line = reader.line_num if reader is not None else 1
        raise DatasetError(f"{path}:{line}: malformed CSV ({exc})") from None


def parse_grade(text: str, what: str, name: str) -> int:
    """ICDR grade 0-4 from ``text`` (``"3"`` or an integral float such as ``"3.0"``); :class:`RowProblem`
    naming the column ``what`` and the image ``name`` otherwise."""
    try:
        value = float(text)
    except ValueError:
        raise RowProblem(f"{what} {text!r} of image {name!r} is not an integer 0-4") from None
    if not value.is_integer():
        raise RowProblem(f"{what} {text!r} of image {name!r} is not an integer 0-4")
    grade = int(value)
    if grade not in GRADES:
        raise RowProblem(f"{what} {grade} of image {name!r} is outside 0-4")
    return grade


def parse_flag(text: str, what: str, name: str) -> bool | None:
    """``0``/``1`` (also ``0.0``/``1.0``) as a bool, empty as ``None``; :class:`RowProblem` otherwise."""
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value not in (0.0, 1.0):
        raise RowProblem(f"{what} {text!r} of image {name!r} is not 0 or 1")
    return value == 1.0


def check_name(name: str, line: int, seen: dict[str, int]) -> None:
    """:class:`RowProblem` for an empty image name or one already listed (``seen`` maps names to lines)."""
    if not name:
        raise RowProblem("empty image name")
    if name in seen:
        raise RowProblem(f"image {name!r} already listed on line {seen[name]}")
    seen[name] = line


def line_of(where: str) -> int:
    """The line number of a ``"<path>:<line>"`` location."""
    return int(where.rsplit(":", 1)[1])


def parse_eyepacs_name(name: str) -> tuple[str | None, str | None]:
    """``(patient, laterality)`` of an EyePACS-style name ``<patient>_left`` / ``<patient>_right``;
    ``(None, None)`` for any other name."""
    m = _EYEPACS_NAME.match(name)
    if m is None:
        return None, None
    return m["patient"], "L" if m["eye"] == "left" else "R"


def read_csv_layout(path: Path, *, layout: str, source: str, name_col: str, required: Sequence[str],
                    dirs: Sequence[Path], fields: Callable[[dict[str, str], str], dict[str, Any]]
                    ) -> list[FundusRecord]:
    """Shared body of the one-row-per-image CSV layouts (EyePACS, APTOS, Messidor-2, IDRiD grading).

    For each row, in file order: the image name (column ``name_col``) must be non-empty and not repeated;
    ``fields(row, name)`` returns the record's label fields (or raises :class:`RowProblem`); the image is
    found with :func:`locate` in ``dirs``. Every malformed row and every missing image is collected and
    raised together as one :class:`DatasetError`; a missing CSV or a header lacking a ``required`` column
    raises at once.
    """
    require_file(path, layout)
    problems = Problems(f"{layout} at {path.parent}")
    records: list[FundusRecord] = []
    seen: dict[str, int] = {}
    for where, row in csv_rows(path, (name_col, *required)):
        name = row[name_col]
        try:
            check_name(name, line_of(where), seen)
            labels = fields(row, name)
        except RowProblem as exc:
            problems.add(where, str(exc))
            continue
        image = locate(dirs, name)
        if image is None:
            problems.missing(where, name, searched(dirs))
            continue
        records.append(FundusRecord(image=image, source=source, **labels))
    problems.raise_if_any()
    return records
