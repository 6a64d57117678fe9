"""Folder-per-grade layout (torchvision ``ImageFolder`` style).

Layout
------
``root/0/*`` .. ``root/4/*``: the folder name is the ICDR grade. Files whose extension (any case) is one of
``.jpg .jpeg .png .tif .tiff`` are read, grade by grade, in name order; other files, hidden files and
non-numeric folders are ignored. Only the grade is known: every other field is ``None``.

Errors (:class:`DatasetError`): ``root`` missing or without any folder ``0``-``4``; a numeric folder outside 0-4
(``5/``, a likely typo that would silently drop images); grade folders without images.
"""

from __future__ import annotations

from pathlib import Path

from datasets.readers.common import IMAGE_EXTENSIONS
from datasets.readers.errors import DatasetError
from datasets.readers.record import GRADES, FundusRecord


def read_folders(root: Path) -> list[FundusRecord]:
    """One :class:`FundusRecord` per image under ``root/<grade>/`` (see the module docstring)."""
    root = Path(root)
    expected = f"expected the folders layout: {root}/0 .. {root}/4"
    if not root.is_dir():
        raise DatasetError(f"no dataset at {root}: no such directory ({expected})")
    bad = [c for c in sorted(root.iterdir()) if c.is_dir() and c.name.isdigit() and int(c.name) not in GRADES]
    if bad:
        raise DatasetError(f"{bad[0]}: folder name {bad[0].name!r} is not a grade 0-4 ({expected})")
    grade_dirs = [(g, root / str(g)) for g in GRADES if (root / str(g)).is_dir()]
    if not grade_dirs:
        raise DatasetError(f"no dataset at {root}: no grade folders 0-4 ({expected})")
    records = [
        FundusRecord(image=p, grade=grade, source="folders")
        for grade, folder in grade_dirs
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    ]
    if not records:
        raise DatasetError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the grade folders 0-4")
    return records
