"""APTOS 2019: train.csv (id_code,diagnosis) + train_images/<id_code>.png."""

from __future__ import annotations

from pathlib import Path

import pytest

from datasets.readers import DatasetError
from datasets.readers.aptos import read_aptos
from tests.datasets.readers.helpers import rel, write_image, write_text


def test_layout(tmp_path: Path) -> None:
    write_text(tmp_path / "train.csv", "id_code,diagnosis\n000c1434d8d7,2\n001639a390f0,4\n0024cdab0c1e,0\n")
    for name in ("000c1434d8d7.png", "001639a390f0.png", "0024cdab0c1e.jpg"):
        write_image(tmp_path / "train_images" / name)
    records = read_aptos(tmp_path)
    assert rel(records, tmp_path) == ["train_images/000c1434d8d7.png", "train_images/001639a390f0.png",
                                      "train_images/0024cdab0c1e.jpg"]
    assert [r.grade for r in records] == [2, 4, 0]
    assert all(r.source == "aptos" and r.patient is None and r.lesions is None for r in records)


def test_malformed_file_reports_everything(tmp_path: Path) -> None:
    write_text(tmp_path / "train.csv", "id_code,diagnosis\na,1\nb,5\nc,1.5\nmissing1,2\nmissing2,3\n")
    write_image(tmp_path / "train_images" / "a.png")
    write_image(tmp_path / "train_images" / "b.png")
    write_image(tmp_path / "train_images" / "c.png")
    with pytest.raises(DatasetError) as info:
        read_aptos(tmp_path)
    msg, csv = str(info.value), tmp_path / "train.csv"
    assert "4 problems (2 images not found)" in msg
    assert f"{csv}:3: diagnosis 5 of image 'b' is outside 0-4" in msg
    assert f"{csv}:4: diagnosis '1.5' of image 'c' is not an integer 0-4" in msg
    assert f"{csv}:5: image 'missing1' not found" in msg and f"{csv}:6: image 'missing2' not found" in msg
    assert f"looked for in {tmp_path / 'train_images'}" in msg


def test_bad_header_and_missing_csv(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"train\.csv not found \(expected the APTOS 2019"):
        read_aptos(tmp_path)
    write_text(tmp_path / "train.csv", "id_code,grade\na,1\n")
    with pytest.raises(DatasetError, match=r"train\.csv:1: header lacks column\(s\) diagnosis \(got id_code,grade"):
        read_aptos(tmp_path)
