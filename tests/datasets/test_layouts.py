"""APTOS / Messidor-2 / IDRiD / ImageFolder readers: pairs returned, and every error names the file and line."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets.layouts import read_aptos, read_folders, read_idrid, read_messidor2
from training.data import READERS

IDRID_TRAIN_CSV = "B. Disease Grading/2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv"
IDRID_TEST_CSV = "B. Disease Grading/2. Groundtruths/b. IDRiD_Disease Grading_Testing Labels.csv"
IDRID_TRAIN_IMG = "B. Disease Grading/1. Original Images/a. Training Set"
IDRID_TEST_IMG = "B. Disease Grading/1. Original Images/b. Testing Set"
IDRID_HEADER = "Image name,Retinopathy grade,Risk of macular edema ,,,,,,,,\n"


def _img(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((8, 8, 3), 60, np.uint8))


def _csv(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_registered_in_training() -> None:
    assert {"aptos", "messidor2", "idrid", "folders", "eyepacs"} <= set(READERS)
    assert READERS["aptos"] is read_aptos and READERS["folders"] is read_folders


# --- APTOS 2019 ---------------------------------------------------------------------------------------------

def test_aptos(tmp_path: Path) -> None:
    _csv(tmp_path / "train.csv", "id_code,diagnosis\n000c1434d8d7,2\n001639a390f0,4\n0024cdab0c1e,0\n")
    for name in ("000c1434d8d7.png", "001639a390f0.png", "0024cdab0c1e.jpg"):
        _img(tmp_path / "train_images" / name)
    items = read_aptos(tmp_path)
    assert [(p.name, g) for p, g in items] == [("000c1434d8d7.png", 2), ("001639a390f0.png", 4),
                                                ("0024cdab0c1e.jpg", 0)]
    assert all(p.parent == tmp_path / "train_images" for p, _ in items)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id_code,diagnosis\na,1\nb,5\n", r"train\.csv:3: diagnosis 5 of image 'b' is outside 0-4"),
        ("id_code,diagnosis\na,x\n", r"train\.csv:2: diagnosis 'x' of image 'a' is not an integer 0-4"),
        ("id_code,diagnosis\na,1\nb,1.5\n", r"train\.csv:3: diagnosis '1.5' of image 'b' is not an integer"),
        ("id_code,diagnosis\na,1\nmissing,2\n", r"train\.csv:3: image 'missing' not found in .*train_images"),
        ("id_code,grade\na,1\n", r"train\.csv:1: header lacks column\(s\) diagnosis \(got id_code,grade\)"),
        ("id_code,diagnosis\na,1\na,2\n", r"train\.csv:3: image 'a' already listed on line 2"),
        ("id_code,diagnosis\n,1\n", r"train\.csv:2: empty image name"),
    ],
)
def test_aptos_errors(tmp_path: Path, text: str, message: str) -> None:
    _csv(tmp_path / "train.csv", text)
    _img(tmp_path / "train_images" / "a.png")
    _img(tmp_path / "train_images" / "b.png")
    with pytest.raises(ValueError, match=message):
        read_aptos(tmp_path)


def test_aptos_missing_csv(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"train\.csv"):
        read_aptos(tmp_path)


# --- Messidor-2 ---------------------------------------------------------------------------------------------

MESSIDOR_HEADER = "image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable\n"


def test_messidor2_skips_ungradable(tmp_path: Path) -> None:
    _csv(tmp_path / "messidor_data.csv", MESSIDOR_HEADER
         + "20051020_43808_0100_PP.png,0,0,1\n"
         + "IM000001.JPG,3.0,1.0,1.0\n"
         + "IM000002.JPG,,,0\n"       # ungradable: skipped
         + "IM000003.JPG,2,0,0\n"     # marked ungradable: skipped even with a grade
         + "IM000004.jpg,,0,1\n"      # no grade: skipped
         + "IM000005,4,1,\n")         # no extension, empty gradable counts as gradable
    _img(tmp_path / "IMAGES" / "20051020_43808_0100_PP.png")
    (tmp_path / "IMAGES" / "IM000001.JPG").write_bytes((tmp_path / "IMAGES" / "20051020_43808_0100_PP.png")
                                                       .read_bytes())
    _img(tmp_path / "IM000005.tiff")  # falls back to the root
    items = read_messidor2(tmp_path)
    assert [(p.relative_to(tmp_path).as_posix(), g) for p, g in items] == [
        ("IMAGES/20051020_43808_0100_PP.png", 0), ("IMAGES/IM000001.JPG", 3), ("IM000005.tiff", 4)]


def test_messidor2_preprocess_folder_and_extension_swap(tmp_path: Path) -> None:
    _csv(tmp_path / "messidor_data.csv", MESSIDOR_HEADER + "IM000001.JPG,1,0,1\n")
    _img(tmp_path / "messidor-2" / "preprocess" / "IM000001.png")
    [(path, grade)] = read_messidor2(tmp_path)
    assert path == tmp_path / "messidor-2" / "preprocess" / "IM000001.png" and grade == 1


def test_messidor2_images_argument(tmp_path: Path) -> None:
    _csv(tmp_path / "messidor_data.csv", MESSIDOR_HEADER + "a.png,2,0,1\n")
    _img(tmp_path / "IMAGES" / "a.png")
    _img(tmp_path / "custom" / "a.png")
    assert read_messidor2(tmp_path, images="custom") == [(tmp_path / "custom" / "a.png", 2)]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("a.png,1,0,1\nb.png,7,0,1\n", r"messidor_data\.csv:3: adjudicated_dr_grade 7 of image 'b\.png' is outside"),
        ("a.png,1,0,1\nb.png,one,0,1\n", r"messidor_data\.csv:3: adjudicated_dr_grade 'one' .* not an integer"),
        ("a.png,1,0,yes\n", r"messidor_data\.csv:2: adjudicated_gradable 'yes' of image 'a\.png' is not 0 or 1"),
        ("a.png,1,0,1\nnope.png,1,0,1\n", r"messidor_data\.csv:3: image 'nope\.png' not found in .*IMAGES"),
    ],
)
def test_messidor2_errors(tmp_path: Path, rows: str, message: str) -> None:
    _csv(tmp_path / "messidor_data.csv", MESSIDOR_HEADER + rows)
    _img(tmp_path / "IMAGES" / "a.png")
    _img(tmp_path / "IMAGES" / "b.png")
    with pytest.raises(ValueError, match=message):
        read_messidor2(tmp_path)


def test_messidor2_missing_column_and_csv(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"messidor_data\.csv"):
        read_messidor2(tmp_path)
    _csv(tmp_path / "messidor_data.csv", "image_id,adjudicated_dr_grade,adjudicated_dme\na.png,1,0\n")
    with pytest.raises(ValueError, match=r"messidor_data\.csv:1: header lacks column\(s\) adjudicated_gradable"):
        read_messidor2(tmp_path)


# --- IDRiD --------------------------------------------------------------------------------------------------

def test_idrid_train_and_test(tmp_path: Path) -> None:
    # Real header has a trailing space and empty trailing columns; the real files end with blank ",,," rows.
    _csv(tmp_path / IDRID_TRAIN_CSV, IDRID_HEADER + "IDRiD_001,3,2,,,,,,,,\nIDRiD_002,0,0,,,,,,,,\n,,,,,,,,,,\n")
    _csv(tmp_path / IDRID_TEST_CSV, "Image name,Retinopathy grade,Risk of macular edema \nIDRiD_001,4,1\n")
    _img(tmp_path / IDRID_TRAIN_IMG / "IDRiD_001.jpg")
    _img(tmp_path / IDRID_TRAIN_IMG / "IDRiD_002.jpg")
    _img(tmp_path / IDRID_TEST_IMG / "IDRiD_001.jpg")
    train = read_idrid(tmp_path)
    assert train == [(tmp_path / IDRID_TRAIN_IMG / "IDRiD_001.jpg", 3), (tmp_path / IDRID_TRAIN_IMG / "IDRiD_002.jpg", 0)]
    assert read_idrid(tmp_path, split="test") == [(tmp_path / IDRID_TEST_IMG / "IDRiD_001.jpg", 4)]
    assert read_idrid(tmp_path / "B. Disease Grading") == train  # root may be the sub-challenge folder


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("IDRiD_001,3,2\nIDRiD_002,-1,0\n", r"Training Labels\.csv:3: Retinopathy grade -1 of image 'IDRiD_002'"),
        ("IDRiD_001,3,2\nIDRiD_009,1,0\n", r"Training Labels\.csv:3: image 'IDRiD_009' not found in .*Training Set"),
    ],
)
def test_idrid_errors(tmp_path: Path, rows: str, message: str) -> None:
    _csv(tmp_path / IDRID_TRAIN_CSV, IDRID_HEADER + rows)
    _img(tmp_path / IDRID_TRAIN_IMG / "IDRiD_001.jpg")
    _img(tmp_path / IDRID_TRAIN_IMG / "IDRiD_002.jpg")
    with pytest.raises(ValueError, match=message):
        read_idrid(tmp_path)


def test_idrid_missing_column_csv_and_bad_split(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"Testing Labels\.csv"):
        read_idrid(tmp_path, split="test")
    _csv(tmp_path / IDRID_TRAIN_CSV, "Image name,Risk of macular edema \nIDRiD_001,1\n")
    with pytest.raises(ValueError, match=r"Training Labels\.csv:1: header lacks column\(s\) Retinopathy grade"):
        read_idrid(tmp_path)
    with pytest.raises(ValueError, match="split"):
        read_idrid(tmp_path, split="val")


# --- ImageFolder --------------------------------------------------------------------------------------------

def test_folders(tmp_path: Path) -> None:
    for rel in ("0/b.png", "0/a.jpg", "2/c.JPEG", "4/d.tiff", "4/notes.txt", "4/.hidden.png"):
        if rel.endswith(".txt"):
            _csv(tmp_path / rel, "not an image")
        elif rel.startswith("4/.hidden"):
            (tmp_path / rel).write_bytes(b"")
        else:
            _img(tmp_path / rel)
    (tmp_path / "train").mkdir()  # non-numeric folders are ignored
    items = read_folders(tmp_path)
    assert [(p.relative_to(tmp_path).as_posix(), g) for p, g in items] == [
        ("0/a.jpg", 0), ("0/b.png", 0), ("2/c.JPEG", 2), ("4/d.tiff", 4)]


def test_folders_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no directory"):
        read_folders(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="no grade folders 0-4"):
        read_folders(tmp_path)
    (tmp_path / "1").mkdir()
    with pytest.raises(ValueError, match="no images"):
        read_folders(tmp_path)
    _img(tmp_path / "5" / "x.png")
    with pytest.raises(ValueError, match=r"5: folder name '5' is not a grade 0-4"):
        read_folders(tmp_path)
