"""The Fovea synthetic folder: ground_truth.csv + lesions.json (the contract), or trainLabels.csv + lesions.csv."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from datasets.readers import DatasetError, LesionBox
from datasets.readers.synthetic import read_synthetic
from tests.datasets.readers.helpers import rel, write_image, write_text

GROUND_TRUTH = ("image,patient,laterality,width,height,grade,dme,referable,gradable,quality_reasons\n"
                "00000_left,00000,L,64,64,0,0,0,1,\n"
                "00000_right,00000,R,64,64,3,1,1,0,blur;haze\n"
                "00001_left,00001,L,64,64,2,0,1,1,\n")
LABELS = "image,level\n00000_left,0\n00000_right,3\n00001_left,2\n"


def _lesions_json() -> str:
    cats = [{"id": i + 1, "name": n} for i, n in
            enumerate(("microaneurysm", "haemorrhage", "hard_exudate", "cotton_wool_spot"))]
    images = [{"id": i, "file_name": f"{n}.jpeg", "width": 64, "height": 64}
              for i, n in enumerate(("00000_left", "00000_right", "00001_left"))]
    rle = {"size": [64, 64], "counts": "0"}  # not read: boxes come from bbox
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 12, 3, 3], "area": 9, "iscrowd": 0, "segmentation": rle},
            {"id": 2, "image_id": 1, "category_id": 4, "bbox": [30, 5, 8, 6], "area": 48, "iscrowd": 0, "segmentation": rle},
            {"id": 3, "image_id": 2, "category_id": 2, "bbox": [1, 2, 5, 4], "area": 20, "iscrowd": 0, "segmentation": rle}]
    return json.dumps({"images": images, "annotations": anns, "categories": cats})


def _images(root: Path) -> None:
    for n in ("00000_left", "00000_right", "00001_left"):
        write_image(root / f"{n}.jpeg", 64, 64)


def test_contract_layout(tmp_path: Path) -> None:
    _images(tmp_path)
    write_text(tmp_path / "ground_truth.csv", GROUND_TRUTH)
    write_text(tmp_path / "trainLabels.csv", LABELS)
    write_text(tmp_path / "quality.csv", "image,gradable,reasons,blur,haze\n00000_right,0,blur;haze,0.8,0.4\n")
    write_text(tmp_path / "lesions.json", _lesions_json())
    records = read_synthetic(tmp_path)
    assert rel(records, tmp_path) == ["00000_left.jpeg", "00000_right.jpeg", "00001_left.jpeg"]
    assert [(r.grade, r.dme, r.gradable, r.laterality, r.patient) for r in records] == [
        (0, False, True, "L", "00000"), (3, True, False, "R", "00000"), (2, False, True, "L", "00001")]
    assert records[0].lesions == ()
    assert records[1].lesions == (LesionBox("microaneurysm", (10, 12, 13, 15)),
                                  LesionBox("cotton_wool_spot", (30, 5, 38, 11)))
    assert records[2].lesions == (LesionBox("haemorrhage", (1, 2, 6, 6)),)
    assert {r.source for r in records} == {"synthetic"}


def test_fallback_to_labels_and_lesions_csv(tmp_path: Path) -> None:
    _images(tmp_path)
    write_text(tmp_path / "trainLabels.csv", LABELS)
    records = read_synthetic(tmp_path)
    assert [(r.grade, r.dme, r.gradable, r.laterality, r.patient, r.lesions) for r in records] == [
        (0, None, None, "L", "00000", None), (3, None, None, "R", "00000", None), (2, None, None, "L", "00001", None)]
    write_text(tmp_path / "lesions.csv", "image,type,x0,y0,x1,y1\n00000_right,hard_exudate,4,5,9,7\n")
    records = read_synthetic(tmp_path)
    assert [r.lesions for r in records] == [(), (LesionBox("hard_exudate", (4, 5, 9, 7)),), ()]


def test_generator_output_round_trip(tmp_path: Path) -> None:
    from datasets.synthetic.writer import generate

    generate(tmp_path, count=4, seed=5, size=64, progress=False)
    records = read_synthetic(tmp_path)
    with (tmp_path / "trainLabels.csv").open(newline="") as f:
        labels = [(r["image"], int(r["level"])) for r in csv.DictReader(f)]
    assert [r.image.stem for r in records] == [n for n, _ in labels]
    assert all(r.lesions is not None and r.laterality == ("L" if r.image.stem.endswith("left") else "R")
               for r in records)
    if not (tmp_path / "ground_truth.csv").is_file():  # without the quality truth, the level is the grade
        assert [r.grade for r in records] == [g for _, g in labels]


def test_malformed_files_reported_together(tmp_path: Path) -> None:
    _images(tmp_path)
    write_text(tmp_path / "ground_truth.csv", GROUND_TRUTH.replace("00000,R,64,64,3,1,1,0", "00000,X,64,64,3,1,1,0")
               .replace("00001,L,64,64,2,0,1,1", "00001,L,64,64,9,0,1,1") + "00002_left,00002,L,64,64,1,0,0,1,\n")
    with pytest.raises(DatasetError) as info:
        read_synthetic(tmp_path)
    msg, gt = str(info.value), tmp_path / "ground_truth.csv"
    assert "3 problems (1 image not found)" in msg
    assert f"{gt}:3: laterality 'X' of image '00000_right' is not L or R" in msg
    assert f"{gt}:4: grade 9 of image '00001_left' is outside 0-4" in msg
    assert f"{gt}:5: image '00002_left' not found" in msg
    write_text(tmp_path / "ground_truth.csv", GROUND_TRUTH)
    write_text(tmp_path / "lesions.csv", "image,type,x0,y0,x1,y1\n00000_left,drusen,1,1,2,2\nzz,haemorrhage,1,1,2,2\n")
    with pytest.raises(DatasetError) as info:
        read_synthetic(tmp_path)
    assert "lesions.csv:2: lesion type 'drusen' is not one of" in str(info.value)
    assert "lesions.csv:3: image 'zz' is not in the label file" in str(info.value)


def test_missing_everything(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"trainLabels\.csv not found \(expected the Fovea synthetic"):
        read_synthetic(tmp_path)


def test_bad_ground_truth_header(tmp_path: Path) -> None:
    write_text(tmp_path / "ground_truth.csv", "image,patient,grade\n00000_left,00000,0\n")
    with pytest.raises(DatasetError, match=r"ground_truth\.csv:1: header lacks column\(s\) laterality, dme, gradable"):
        read_synthetic(tmp_path)
