"""COCO instances JSON: category aliases, ignored anatomy, boxes [x, y, w, h] → (x0, y0, x1, y1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datasets.readers import DatasetError, LesionBox
from datasets.readers.coco import read_coco
from tests.datasets.readers.helpers import rel, write_image, write_text

CATEGORIES = [{"id": 1, "name": "MA"}, {"id": 2, "name": "hemorrhage"}, {"id": 3, "name": "hard exudates"},
              {"id": 4, "name": "Soft Exudates"}, {"id": 5, "name": "optic disc"}]


def _coco(images: list[dict], annotations: list[dict], categories: list[dict] = CATEGORIES) -> str:  # type: ignore[type-arg]
    return json.dumps({"info": {}, "images": images, "annotations": annotations, "categories": categories}, indent=1)


def _ann(i: int, image: int, cat: int, bbox: list) -> dict:  # type: ignore[type-arg]
    return {"id": i, "image_id": image, "category_id": cat, "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0}


IMAGES = [{"id": 7, "file_name": "a.png", "width": 40, "height": 30},
          {"id": 8, "file_name": "b.jpg", "width": 40, "height": 30}]


def test_layout_with_annotations_folder(tmp_path: Path) -> None:
    write_text(tmp_path / "annotations" / "instances_train.json", _coco(IMAGES, [
        _ann(1, 7, 1, [2, 3, 2, 2]), _ann(2, 7, 2, [10.5, 10, 5.5, 4]), _ann(3, 7, 3, [0, 0, 40, 30]),
        _ann(4, 7, 4, [30, 20, 10.4, 10.2]),  # overhangs by < 1 px: clipped
        _ann(5, 7, 5, [5, 5, 10, 10]),         # optic disc: ignored by default
    ]))
    write_image(tmp_path / "images" / "a.png", 30, 40)
    write_image(tmp_path / "images" / "b.jpg", 30, 40)
    records = read_coco(tmp_path)
    assert rel(records, tmp_path) == ["images/a.png", "images/b.jpg"]
    assert records[0].lesions == (
        LesionBox("microaneurysm", (2, 3, 4, 5)), LesionBox("haemorrhage", (10.5, 10, 16, 14)),
        LesionBox("hard_exudate", (0, 0, 40, 30)), LesionBox("cotton_wool_spot", (30, 20, 40, 30)))
    assert records[1].lesions == ()  # listed, no annotation: annotated and clear
    assert all(r.grade is None and r.source == "coco" for r in records)
    assert read_coco(tmp_path / "annotations" / "instances_train.json") == records  # the JSON itself as root


def test_unknown_categories_listed_unless_ignored(tmp_path: Path) -> None:
    cats = [*CATEGORIES, {"id": 6, "name": "drusen"}, {"id": 7, "name": "laser scars"}]
    write_text(tmp_path / "lesions.json", _coco(IMAGES[:1], [_ann(1, 7, 6, [1, 1, 2, 2])], cats))
    write_image(tmp_path / "a.png")
    with pytest.raises(DatasetError) as info:
        read_coco(tmp_path)
    msg = str(info.value)
    assert "categories[5]: unknown lesion category 'drusen'" in msg and "categories[6]: unknown lesion category 'laser scars'" in msg
    assert "ignore={'drusen', 'laser scars'}" in msg
    [r] = read_coco(tmp_path, ignore={"drusen", "laser_scars", "optic disc"})
    assert r.lesions == ()


def test_malformed_annotations_and_missing_images_reported_together(tmp_path: Path) -> None:
    images = [*IMAGES, {"id": 9, "file_name": "c.png", "width": 40, "height": 30}, {"id": 9, "file_name": "d.png"}]
    write_text(tmp_path / "x.json", _coco(images, [
        _ann(1, 7, 1, [2, 3, 0, 2]), _ann(2, 7, 1, [30, 20, 15, 5]), _ann(3, 99, 1, [1, 1, 1, 1]),
        _ann(4, 7, 42, [1, 1, 1, 1]), {"id": 5, "image_id": 7, "category_id": 1, "bbox": "1,2,3,4"},
    ]))
    write_image(tmp_path / "a.png")
    with pytest.raises(DatasetError) as info:
        read_coco(tmp_path)
    msg, path = str(info.value), tmp_path / "x.json"
    assert f"{path}: images[3]: image id 9 already used by 'c.png'" in msg
    assert f"{path}: annotations[0] (id 1): bbox [2, 3, 0, 2] has a non-positive width or height" in msg
    assert f"{path}: annotations[1] (id 2): bbox [30, 20, 15, 5] lies outside the 40x30 image" in msg
    assert f"{path}: annotations[2] (id 3): image_id 99 is not in images" in msg
    assert f"{path}: annotations[3] (id 4): category_id 42 is not in categories" in msg
    assert f"{path}: annotations[4] (id 5): bbox '1,2,3,4' is not [x, y, width, height] numbers" in msg
    # Once the JSON is right, the images that are missing are reported together.
    write_text(path, _coco(images[:3], []))
    with pytest.raises(DatasetError, match=r"2 problems \(2 images not found\)") as info:
        read_coco(tmp_path)
    assert f"{path}: images[1]: image 'b.jpg' not found" in str(info.value)
    assert f"{path}: images[2]: image 'c.png' not found" in str(info.value)


def test_not_json_and_not_coco(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="expected exactly one COCO JSON .* found none"):
        read_coco(tmp_path)
    write_text(tmp_path / "a.json", '{"images": [\n  {"id": 1,\n  }\n]}')
    with pytest.raises(DatasetError, match=r"a\.json:3: not valid JSON"):
        read_coco(tmp_path)
    write_text(tmp_path / "a.json", '{"images": []}')
    with pytest.raises(DatasetError, match=r"a\.json: 'annotations' must be a list"):
        read_coco(tmp_path)
    write_text(tmp_path / "b.json", "[]")
    with pytest.raises(DatasetError, match=r"found .*a\.json, .*b\.json; pass the JSON file itself"):
        read_coco(tmp_path)
