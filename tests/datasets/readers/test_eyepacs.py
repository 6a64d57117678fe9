"""EyePACS layout: trainLabels.csv + <image>.jpeg (root or train/), patient and eye from the names."""

from __future__ import annotations

from pathlib import Path

import pytest

from datasets.readers import DatasetError
from datasets.readers.eyepacs import read_eyepacs
from tests.datasets.readers.helpers import rel, write_image, write_text


def test_layout(tmp_path: Path) -> None:
    write_text(tmp_path / "trainLabels.csv", "image,level\n10_left,0\n10_right,4\n13_left,2\nodd,1\n")
    write_image(tmp_path / "train" / "10_left.jpeg")   # the competition archive unpacks into train/
    write_image(tmp_path / "train" / "10_right.jpeg")
    write_image(tmp_path / "13_left.png")               # or beside the CSV, any usual extension
    write_image(tmp_path / "odd.jpeg")
    records = read_eyepacs(tmp_path)
    assert rel(records, tmp_path) == ["train/10_left.jpeg", "train/10_right.jpeg", "13_left.png", "odd.jpeg"]
    assert [(r.grade, r.patient, r.laterality) for r in records] == [
        (0, "10", "L"), (4, "10", "R"), (2, "13", "L"), (1, None, None)]
    assert all(r.source == "eyepacs" and r.dme is None and r.gradable is None and r.lesions is None for r in records)


def test_extra_columns_ignored(tmp_path: Path) -> None:
    write_text(tmp_path / "trainLabels.csv", "image,level,Usage\n1_left,3,Public\n")
    write_image(tmp_path / "1_left.jpeg")
    [r] = read_eyepacs(tmp_path)
    assert r.grade == 3


def test_malformed_rows_and_missing_images_reported_together(tmp_path: Path) -> None:
    write_text(tmp_path / "trainLabels.csv",
               "image,level\n1_left,0\n1_right,5\n2_left,two\n2_right,1\n3_left,2\n1_left,1\n,0\n")
    write_image(tmp_path / "1_left.jpeg")
    write_image(tmp_path / "1_right.jpeg")
    with pytest.raises(DatasetError) as info:
        read_eyepacs(tmp_path)
    msg = str(info.value)
    csv = tmp_path / "trainLabels.csv"
    assert msg.startswith(f"EyePACS (trainLabels.csv + <image>.jpeg) at {tmp_path}: 6 problems (2 images not found):")
    for line in (f"{csv}:3: level 5 of image '1_right' is outside 0-4",
                 f"{csv}:4: level 'two' of image '2_left' is not an integer 0-4",
                 f"{csv}:5: image '2_right' not found",
                 f"{csv}:6: image '3_left' not found",
                 f"{csv}:7: image '1_left' already listed on line 2",
                 f"{csv}:8: empty image name",
                 f"images were looked for in {tmp_path}, {tmp_path / 'train'} (extensions tried: .jpeg"):
        assert line in msg


def test_many_missing_images_listed_once_with_a_count(tmp_path: Path) -> None:
    write_text(tmp_path / "trainLabels.csv", "image,level\n" + "".join(f"{i}_left,0\n" for i in range(25)))
    with pytest.raises(DatasetError, match=r"25 problems \(25 images not found\)") as info:
        read_eyepacs(tmp_path)
    assert "... and 15 more" in str(info.value) and str(info.value).count("not found") == 11


def test_bad_header(tmp_path: Path) -> None:
    write_text(tmp_path / "trainLabels.csv", "image,grade\n1_left,0\n")
    with pytest.raises(DatasetError, match=r"trainLabels\.csv:1: header lacks column\(s\) level \(got image,grade"):
        read_eyepacs(tmp_path)


def test_missing_csv_and_not_utf8(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"no dataset at .*trainLabels\.csv not found \(expected the EyePACS"):
        read_eyepacs(tmp_path)
    (tmp_path / "trainLabels.csv").write_bytes(b"image,level\n1_left,0\n\xff\xfe,1\n")
    with pytest.raises(DatasetError, match=r"trainLabels\.csv:\d+: not UTF-8"):
        read_eyepacs(tmp_path)
