"""Form fields: upload size before reading, laterality spellings, one laterality per study image."""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis.errors import BadRequest, PayloadTooLarge
from service.form_inputs import laterality, read_upload, study_uploads


def _file(tmp_path: Path, name: str, size: int) -> Path:
    p = tmp_path / name
    p.write_bytes(b"x" * size)
    return p


@pytest.mark.parametrize("value,expected", [("", None), (None, None), (" l ", "L"), ("Left", "L"), ("OS", "L"),
                                            ("r", "R"), ("RIGHT", "R"), ("od", "R")])
def test_laterality_spellings(value: str | None, expected: str | None) -> None:
    assert laterality(value) == expected


def test_bad_laterality_is_a_400_echoing_little() -> None:
    with pytest.raises(BadRequest) as e:
        laterality("both eyes, patient MARKER^NAME")
    assert "MARKER" not in e.value.message and e.value.status == 400


def test_upload_size_is_checked_before_reading(tmp_path: Path) -> None:
    assert read_upload(_file(tmp_path, "a", 10), max_bytes=10) == b"x" * 10
    with pytest.raises(PayloadTooLarge):
        read_upload(_file(tmp_path, "b", 11), max_bytes=10)


def test_study_uploads_pair_files_and_lateralities(tmp_path: Path) -> None:
    a, b = _file(tmp_path, "a", 3), _file(tmp_path, "b", 4)
    assert study_uploads([a, b], "R,l", max_images=2, max_bytes=10) == [(b"xxx", "R"), (b"xxxx", "L")]
    assert study_uploads([a], "", max_images=2, max_bytes=10) == [(b"xxx", None)]
    with pytest.raises(BadRequest, match="2 laterality values for 1 images"):
        study_uploads([a], "R,L", max_images=2, max_bytes=10)
    with pytest.raises(PayloadTooLarge, match="3 images"):
        study_uploads([a, a, a], "", max_images=2, max_bytes=10)
    with pytest.raises(BadRequest, match="at least one"):
        study_uploads([], "", max_images=2, max_bytes=10)
