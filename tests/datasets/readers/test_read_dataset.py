"""The registry: every format by name, unknown formats and splits refused with the known ones listed."""

from __future__ import annotations

from pathlib import Path

import pytest

from datasets.readers import READERS, SPLITS, DatasetError, read_dataset
from tests.datasets.readers.helpers import write_image, write_text


def test_names() -> None:
    assert list(READERS) == ["eyepacs", "aptos", "messidor2", "idrid", "ddr", "coco", "dicom", "folders", "synthetic"]
    assert set(SPLITS) <= set(READERS)


def test_unknown_format_lists_known(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown data format 'kaggle'; known formats: eyepacs, aptos, messidor2"):
        read_dataset(tmp_path, "kaggle")


def test_splits(tmp_path: Path) -> None:
    write_text(tmp_path / "DR_grading" / "test.txt", "a.jpg 2\n")
    write_image(tmp_path / "DR_grading" / "test" / "a.jpg")
    [r] = read_dataset(tmp_path, "ddr", split="test")
    assert r.grade == 2
    with pytest.raises(DatasetError, match="'ddr' has the splits train, valid, test, not 'dev'"):
        read_dataset(tmp_path, "ddr", split="dev")
    with pytest.raises(DatasetError, match="'aptos' has no published splits"):
        read_dataset(tmp_path, "aptos", split="test")
