"""Messidor-2 (Krause et al. adjudicated grades): ungradable rows are kept as grade None / gradable False."""

from __future__ import annotations

from pathlib import Path

import pytest

from datasets.readers import DatasetError
from datasets.readers.messidor2 import read_messidor2
from tests.datasets.readers.helpers import rel, write_image, write_text

HEADER = "image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable\n"


def test_layout(tmp_path: Path) -> None:
    write_text(tmp_path / "messidor_data.csv", HEADER
               + "20051020_43808_0100_PP.png,0,0,1\n"
               + "IM000001.JPG,3.0,1.0,1.0\n"
               + "IM000002.JPG,,,0\n"        # ungradable: kept, no grade
               + "IM000005,4,1,\n")          # no extension; empty gradable = not given
    write_image(tmp_path / "IMAGES" / "20051020_43808_0100_PP.png")
    write_image(tmp_path / "IMAGES" / "IM000001.JPG".replace(".JPG", ".jpg"))  # extension swapped on disk
    write_image(tmp_path / "messidor-2" / "preprocess" / "IM000002.png")
    write_image(tmp_path / "IM000005.tiff")  # falls back to the root
    records = read_messidor2(tmp_path)
    assert rel(records, tmp_path) == ["IMAGES/20051020_43808_0100_PP.png", "IMAGES/IM000001.jpg",
                                      "messidor-2/preprocess/IM000002.png", "IM000005.tiff"]
    assert [(r.grade, r.dme, r.gradable) for r in records] == [
        (0, False, True), (3, True, True), (None, None, False), (4, True, None)]
    assert all(r.source == "messidor2" for r in records)


def test_images_argument(tmp_path: Path) -> None:
    write_text(tmp_path / "messidor_data.csv", HEADER + "a.png,2,0,1\n")
    write_image(tmp_path / "IMAGES" / "a.png")
    write_image(tmp_path / "custom" / "a.png")
    assert rel(read_messidor2(tmp_path, images="custom"), tmp_path) == ["custom/a.png"]


def test_malformed_file_reports_everything(tmp_path: Path) -> None:
    write_text(tmp_path / "messidor_data.csv", HEADER + "a.png,1,0,1\nb.png,7,0,1\nc.png,1,2,1\nd.png,1,0,yes\n"
               "nope.png,1,0,1\ngone.png,2,0,1\n")
    for n in "abcd":
        write_image(tmp_path / "IMAGES" / f"{n}.png")
    with pytest.raises(DatasetError) as info:
        read_messidor2(tmp_path)
    msg, csv = str(info.value), tmp_path / "messidor_data.csv"
    assert "5 problems (2 images not found)" in msg
    assert f"{csv}:3: adjudicated_dr_grade 7 of image 'b.png' is outside 0-4" in msg
    assert f"{csv}:4: adjudicated_dme '2' of image 'c.png' is not 0 or 1" in msg
    assert f"{csv}:5: adjudicated_gradable 'yes' of image 'd.png' is not 0 or 1" in msg
    assert f"{csv}:6: image 'nope.png' not found" in msg and f"{csv}:7: image 'gone.png' not found" in msg


def test_bad_header_and_missing_csv(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"messidor_data\.csv not found"):
        read_messidor2(tmp_path)
    write_text(tmp_path / "messidor_data.csv", "image_id,adjudicated_dr_grade,adjudicated_dme\na.png,1,0\n")
    with pytest.raises(DatasetError, match=r"messidor_data\.csv:1: header lacks column\(s\) adjudicated_gradable"):
        read_messidor2(tmp_path)
