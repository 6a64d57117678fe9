"""IDRiD: Disease Grading CSV (published header with its trailing space) and segmentation masks → boxes."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets.readers import DatasetError, LesionBox
from datasets.readers.idrid import read_idrid
from tests.datasets.readers.helpers import rel, write_image, write_text

TRAIN_CSV = "B. Disease Grading/2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv"
TEST_CSV = "B. Disease Grading/2. Groundtruths/b. IDRiD_Disease Grading_Testing Labels.csv"
TRAIN_IMG = "B. Disease Grading/1. Original Images/a. Training Set"
TEST_IMG = "B. Disease Grading/1. Original Images/b. Testing Set"
HEADER = "Image name,Retinopathy grade,Risk of macular edema ,,,,,,,,\n"  # as published: trailing space, empty columns
SEG_IMG = "A. Segmentation/1. Original Images/a. Training Set"
SEG_GT = "A. Segmentation/2. All Segmentation Groundtruths/a. Training Set"
W, H = 40, 30


def _mask(path: Path, blobs: list[tuple[int, int, int, int]], colour: bool = False) -> None:
    """A TIFF mask with filled rectangles (x0, y0, x1, y1 exclusive)."""
    mask = np.zeros((H, W, 3) if colour else (H, W), np.uint8)
    for x0, y0, x1, y1 in blobs:
        mask[y0:y1, x0:x1] = (0, 0, 255) if colour else 255
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), mask)


def test_grading_train_and_test(tmp_path: Path) -> None:
    write_text(tmp_path / TRAIN_CSV, HEADER + "IDRiD_001,3,2,,,,,,,,\nIDRiD_002,0,0,,,,,,,,\n,,,,,,,,,,\n")
    write_text(tmp_path / TEST_CSV, "Image name,Retinopathy grade,Risk of macular edema\nIDRiD_001,4,1\n")  # no space
    write_image(tmp_path / TRAIN_IMG / "IDRiD_001.jpg")
    write_image(tmp_path / TRAIN_IMG / "IDRiD_002.jpg")
    write_image(tmp_path / TEST_IMG / "IDRiD_001.jpg")
    train = read_idrid(tmp_path)
    assert rel(train, tmp_path) == [f"{TRAIN_IMG}/IDRiD_001.jpg", f"{TRAIN_IMG}/IDRiD_002.jpg"]
    assert [(r.grade, r.dme, r.lesions, r.source) for r in train] == [(3, True, None, "idrid"), (0, False, None, "idrid")]
    [test] = read_idrid(tmp_path, split="test")
    assert (test.image, test.grade, test.dme) == (tmp_path / TEST_IMG / "IDRiD_001.jpg", 4, True)
    assert read_idrid(tmp_path / "B. Disease Grading") == train  # root may be the sub-challenge folder


def test_segmentation_masks_become_exact_boxes(tmp_path: Path) -> None:
    write_image(tmp_path / SEG_IMG / "IDRiD_01.jpg", H, W)
    write_image(tmp_path / SEG_IMG / "IDRiD_02.jpg", H, W)
    _mask(tmp_path / SEG_GT / "1. Microaneurysms" / "IDRiD_01_MA.tif", [(2, 3, 4, 5), (30, 20, 31, 21)])
    _mask(tmp_path / SEG_GT / "2. Haemorrhages" / "IDRiD_01_HE.tif", [(10, 10, 16, 14)], colour=True)
    _mask(tmp_path / SEG_GT / "3. Hard Exudates" / "IDRiD_01_EX.tif", [(5, 20, 8, 25), (8, 25, 12, 28)])  # touching corners: one
    _mask(tmp_path / SEG_GT / "4. Soft Exudates" / "IDRiD_01_SE.tif", [(20, 2, 26, 6)])
    _mask(tmp_path / SEG_GT / "5. Optic Disc" / "IDRiD_01_OD.tif", [(0, 0, 40, 30)])  # anatomy: ignored
    records = read_idrid(tmp_path)  # no grading part: segmentation only
    assert rel(records, tmp_path) == [f"{SEG_IMG}/IDRiD_01.jpg", f"{SEG_IMG}/IDRiD_02.jpg"]
    first, second = records
    assert first.grade is None and first.source == "idrid"
    assert first.lesions == (
        LesionBox("microaneurysm", (2, 3, 4, 5)), LesionBox("microaneurysm", (30, 20, 31, 21)),
        LesionBox("haemorrhage", (10, 10, 16, 14)),
        LesionBox("hard_exudate", (5, 20, 12, 28)),
        LesionBox("cotton_wool_spot", (20, 2, 26, 6)),
    )
    assert second.lesions == ()  # annotated (part of the segmentation set), no mask: no lesion


def test_grading_then_segmentation_records(tmp_path: Path) -> None:
    write_text(tmp_path / TRAIN_CSV, HEADER + "IDRiD_001,2,0\n")
    write_image(tmp_path / TRAIN_IMG / "IDRiD_001.jpg")
    write_image(tmp_path / SEG_IMG / "IDRiD_01.jpg", H, W)
    assert [(r.grade, r.lesions) for r in read_idrid(tmp_path)] == [(2, None), (None, ())]


def test_malformed_grading_reports_everything(tmp_path: Path) -> None:
    write_text(tmp_path / TRAIN_CSV, HEADER + "IDRiD_001,3,2\nIDRiD_002,-1,0\nIDRiD_003,1,3\nIDRiD_008,1,0\n"
               "IDRiD_009,1,0\n")
    for n in ("001", "002", "003"):
        write_image(tmp_path / TRAIN_IMG / f"IDRiD_{n}.jpg")
    with pytest.raises(DatasetError) as info:
        read_idrid(tmp_path)
    msg, csv = str(info.value), tmp_path / TRAIN_CSV
    assert "4 problems (2 images not found)" in msg
    assert f"{csv}:3: Retinopathy grade -1 of image 'IDRiD_002' is outside 0-4" in msg
    assert f"{csv}:4: Risk of macular edema '3' of image 'IDRiD_003' is not 0, 1 or 2" in msg
    assert f"{csv}:5: image 'IDRiD_008' not found" in msg and f"{csv}:6: image 'IDRiD_009' not found" in msg


def test_bad_masks_reported_together(tmp_path: Path) -> None:
    write_image(tmp_path / SEG_IMG / "IDRiD_01.jpg", H, W)
    small = np.zeros((10, 10), np.uint8)
    (tmp_path / SEG_GT / "1. Microaneurysms").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / SEG_GT / "1. Microaneurysms" / "IDRiD_01_MA.tif"), small)  # wrong size
    write_text(tmp_path / SEG_GT / "2. Haemorrhages" / "IDRiD_01_HE.tif", "not a tiff")
    _mask(tmp_path / SEG_GT / "3. Hard Exudates" / "IDRiD_07_EX.tif", [(1, 1, 2, 2)])  # no such image
    with pytest.raises(DatasetError) as info:
        read_idrid(tmp_path)
    msg = str(info.value)
    assert "3 problems (1 image not found)" in msg
    assert "IDRiD_01_MA.tif: is 10x10 but its image IDRiD_01.jpg is 40x30" in msg
    assert "IDRiD_01_HE.tif: cannot be read as an image" in msg
    assert "IDRiD_07_EX.tif: image 'IDRiD_07.jpg' not found" in msg


def test_header_split_and_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no dataset at .*expected the IDRiD layout"):
        read_idrid(tmp_path)
    with pytest.raises(DatasetError, match="split must be one of train, test"):
        read_idrid(tmp_path, split="val")
    write_text(tmp_path / TRAIN_CSV, "Image name,Risk of macular edema \nIDRiD_001,1\n")
    with pytest.raises(DatasetError, match=r"Training Labels\.csv:1: header lacks column\(s\) Retinopathy grade"):
        read_idrid(tmp_path)
