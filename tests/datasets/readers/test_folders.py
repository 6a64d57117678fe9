"""Folder-per-grade layout: root/<grade>/<image>."""

from __future__ import annotations

from pathlib import Path

import pytest

from datasets.readers import DatasetError
from datasets.readers.folders import read_folders
from tests.datasets.readers.helpers import rel, write_image, write_text


def test_layout(tmp_path: Path) -> None:
    for name in ("0/b.png", "0/a.jpg", "2/c.JPEG", "4/d.tiff"):
        write_image(tmp_path / name)
    write_text(tmp_path / "4" / "notes.txt", "not an image")
    (tmp_path / "4" / ".hidden.png").write_bytes(b"")
    (tmp_path / "train").mkdir()  # non-numeric folders are ignored
    records = read_folders(tmp_path)
    assert rel(records, tmp_path) == ["0/a.jpg", "0/b.png", "2/c.JPEG", "4/d.tiff"]
    assert [r.grade for r in records] == [0, 0, 2, 4] and {r.source for r in records} == {"folders"}


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such directory"):
        read_folders(tmp_path / "absent")
    with pytest.raises(DatasetError, match="no grade folders 0-4"):
        read_folders(tmp_path)
    (tmp_path / "1").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        read_folders(tmp_path)
    write_image(tmp_path / "5" / "x.png")
    with pytest.raises(DatasetError, match=r"5: folder name '5' is not a grade 0-4"):
        read_folders(tmp_path)
