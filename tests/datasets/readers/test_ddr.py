"""DDR: DR_grading/<split>.txt (grade 5 = ungradable) and Pascal VOC lesion boxes, parsed safely."""

from __future__ import annotations

from pathlib import Path

import pytest

from datasets.readers import DatasetError, LesionBox
from datasets.readers.ddr import read_ddr
from tests.datasets.readers.helpers import rel, write_image, write_text


def _voc(filename: str, objects: list[tuple[str, int, int, int, int]], width: int = 64, height: int = 48) -> str:
    objs = "".join(
        f"  <object>\n    <name>{n}</name>\n    <pose>Unspecified</pose>\n    <truncated>0</truncated>\n"
        f"    <difficult>0</difficult>\n    <bndbox>\n      <xmin>{a}</xmin>\n      <ymin>{b}</ymin>\n"
        f"      <xmax>{c}</xmax>\n      <ymax>{d}</ymax>\n    </bndbox>\n  </object>\n"
        for n, a, b, c, d in objects)
    return (f"<annotation>\n  <folder>train</folder>\n  <filename>{filename}</filename>\n  <size>\n"
            f"    <width>{width}</width>\n    <height>{height}</height>\n    <depth>3</depth>\n  </size>\n"
            f"  <segmented>0</segmented>\n{objs}</annotation>\n")


@pytest.fixture()
def ddr(tmp_path: Path) -> Path:
    base = tmp_path / "DDR-dataset"
    write_text(base / "DR_grading" / "train.txt", "007-0004-000.jpg 0\n007-0007-000.jpg 5\n20170323093305605.jpg 3\n\n")
    write_text(base / "DR_grading" / "test.txt", "007-0025-000.jpg 1\n")
    for name in ("007-0004-000.jpg", "007-0007-000.jpg", "20170323093305605.jpg"):
        write_image(base / "DR_grading" / "train" / name)
    write_image(base / "DR_grading" / "test" / "007-0025-000.jpg")
    write_text(base / "lesion_detection" / "train" / "007-1789-100.xml",
               _voc("007-1789-100.jpg", [("ma", 11, 21, 13, 23), ("he", 1, 1, 10, 5), ("ex", 30, 30, 64, 48),
                                         ("se", 40, 2, 50, 12)]))
    write_text(base / "lesion_detection" / "train" / "007-1790-100.xml", _voc("007-1790-100.jpg", []))
    write_image(base / "lesion_segmentation" / "train" / "image" / "007-1789-100.jpg", 48, 64)
    write_image(base / "lesion_segmentation" / "train" / "image" / "007-1790-100.jpg", 48, 64)
    return tmp_path


def test_grading_and_voc_boxes(ddr: Path) -> None:
    records = read_ddr(ddr)  # the folder holding DDR-dataset/ is accepted too
    assert rel(records, ddr / "DDR-dataset") == [
        "DR_grading/train/007-0004-000.jpg", "DR_grading/train/007-0007-000.jpg",
        "DR_grading/train/20170323093305605.jpg",
        "lesion_segmentation/train/image/007-1789-100.jpg", "lesion_segmentation/train/image/007-1790-100.jpg"]
    assert [(r.grade, r.gradable) for r in records[:3]] == [(0, True), (None, False), (3, True)]  # 5 = ungradable
    assert all(r.lesions is None for r in records[:3]) and all(r.source == "ddr" for r in records)
    # VOC boxes are 1-based inclusive: (xmin - 1, ymin - 1, xmax, ymax) in 0-based exclusive pixels.
    assert records[3].grade is None and records[3].lesions == (
        LesionBox("microaneurysm", (10, 20, 13, 23)), LesionBox("haemorrhage", (0, 0, 10, 5)),
        LesionBox("hard_exudate", (29, 29, 64, 48)), LesionBox("cotton_wool_spot", (39, 1, 50, 12)))
    assert records[4].lesions == ()
    assert read_ddr(ddr / "DDR-dataset") == records


def test_splits(ddr: Path) -> None:
    [r] = read_ddr(ddr, split="test")
    assert r.image.name == "007-0025-000.jpg" and r.grade == 1
    with pytest.raises(DatasetError, match="no valid data"):
        read_ddr(ddr, split="valid")
    with pytest.raises(DatasetError, match="split must be one of train, valid, test"):
        read_ddr(ddr, split="val")
    with pytest.raises(DatasetError, match="expected the DDR layout"):
        read_ddr(ddr / "elsewhere")


def test_malformed_files_reported_together(ddr: Path) -> None:
    base = ddr / "DDR-dataset"
    write_text(base / "DR_grading" / "train.txt",
               "007-0004-000.jpg 0\n007-0007-000.jpg 6\njust-a-name.jpg\n007-0004-000.jpg 1\nlost.jpg 2\ngone.jpg 1\n")
    write_text(base / "lesion_detection" / "train" / "bad-name.xml", _voc("007-1789-100.jpg", [("drusen", 1, 1, 2, 2)]))
    write_text(base / "lesion_detection" / "train" / "bad-box.xml", _voc("007-1789-100.jpg", [("ma", 5, 5, 3, 9)]))
    write_text(base / "lesion_detection" / "train" / "broken.xml", "<annotation>\n<object>\n</annotation>\n")
    write_text(base / "lesion_detection" / "train" / "no-image.xml", _voc("nowhere.jpg", []))
    with pytest.raises(DatasetError) as info:
        read_ddr(ddr)
    msg, txt, det = str(info.value), base / "DR_grading" / "train.txt", base / "lesion_detection" / "train"
    assert msg.startswith(f"DDR train split at {base}: 9 problems (3 images not found):")
    assert f"{txt}:2: grade '6' of image '007-0007-000.jpg' is not 0-4 (or 5 for ungradable)" in msg
    assert f"{txt}:3: expected '<image name> <grade>', got 'just-a-name.jpg'" in msg
    assert f"{txt}:4: image '007-0004-000.jpg' already listed on line 1" in msg
    assert f"{txt}:5: image 'lost.jpg' not found" in msg and f"{txt}:6: image 'gone.jpg' not found" in msg
    assert f"{det / 'bad-box.xml'}:10: <bndbox> ['5', '5', '3', '9'] of 'ma' is empty or outside" in msg
    assert f"{det / 'bad-name.xml'}:10: unknown lesion name 'drusen'" in msg
    assert f"{det / 'broken.xml'}:3: not well-formed XML (mismatched tag)" in msg
    assert f"{det / 'no-image.xml'}: image 'nowhere.jpg' not found" in msg


def test_xml_with_a_dtd_is_refused_before_any_entity_is_expanded(ddr: Path) -> None:
    # "Billion laughs": ten levels of ten-fold expansion; a parser that expanded it would build 10^10 bytes.
    ents = '<!ENTITY lol0 "lol">' + "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10))
    bomb = f'<?xml version="1.0"?>\n<!DOCTYPE annotation [{ents}]>\n<annotation><filename>&lol9;</filename></annotation>'
    xml = ddr / "DDR-dataset" / "lesion_detection" / "train" / "bomb.xml"
    write_text(xml, bomb)
    external = xml.with_name("external.xml")
    write_text(external, f'<!DOCTYPE annotation [<!ENTITY x SYSTEM "file://{xml}">]>\n<annotation>&x;</annotation>')
    with pytest.raises(DatasetError) as info:
        read_ddr(ddr)
    assert f"{xml}:2: document type declarations (DTD) are refused" in str(info.value)
    assert f"{external}:1: document type declarations (DTD) are refused" in str(info.value)
