"""Synthetic dataset writer and command line: the written folder (CSV tables, COCO masks), the grade/DME rules
on what was written, determinism across workers, bad arguments."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from datasets.synthetic.anatomy import QUADRANTS, quadrant_of
from datasets.synthetic.fundus import LESION_TYPES
from datasets.synthetic.writer import GROUND_TRUTH_COLUMNS, LESION_COLUMNS, generate, image_name, read_lesions

REPO = Path(__file__).resolve().parents[2]
def _read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, path
    return bgr[..., ::-1]


def _dicts(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


# --- writer -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate(root, count=24, seed=5, cameras=[(192, 192), (224, 160)], p_degraded=0.4, progress=False)
    return root


def test_generate_layout(dataset: Path) -> None:
    labels = _rows(dataset / "trainLabels.csv")
    assert labels[0] == ["image", "level"]
    names = [r[0] for r in labels[1:]]
    assert names == [image_name(i) for i in range(24)]
    assert names[:3] == ["00000_left", "00000_right", "00001_left"]
    assert all(re.fullmatch(r"\d{5}_(left|right)", n) for n in names)

    truth = _dicts(dataset / "ground_truth.csv")
    assert tuple(_rows(dataset / "ground_truth.csv")[0]) == GROUND_TRUTH_COLUMNS
    quality_rows = _dicts(dataset / "quality.csv")
    assert [t["image"] for t in truth] == names == [q["image"] for q in quality_rows]
    for t, (name, level), q in zip(truth, labels[1:], quality_rows):
        assert t["grade"] == level and t["patient"] == name[:5] and t["laterality"] == ("L" if "left" in name else "R")
        assert t["referable"] == str(int(int(t["grade"]) >= 2 or t["dme"] == "1"))
        assert t["gradable"] == q["gradable"] and t["quality_reasons"] == q["reasons"]
        assert (t["gradable"] == "1") == (t["quality_reasons"] == "")
        shape = _read_rgb(dataset / f"{name}.jpeg").shape
        assert shape == (int(t["height"]), int(t["width"]), 3) and (shape[1], shape[0]) in ((192, 192), (224, 160))
    assert {t["gradable"] for t in truth} == {"0", "1"}  # p_degraded=0.4 over 24 images gives both

    lesion_rows = _rows(dataset / "lesions.csv")
    assert tuple(lesion_rows[0]) == LESION_COLUMNS
    by_image = read_lesions(dataset)
    grades = {t["image"]: int(t["grade"]) for t in truth}
    for name, lesions in by_image.items():
        assert grades[name] > 0 and all(les.type in LESION_TYPES for les in lesions)


def test_coco_masks_match_boxes_and_csv(dataset: Path) -> None:
    coco = COCO(str(dataset / "lesions.json"))
    data = json.loads((dataset / "lesions.json").read_text())
    assert [c["name"] for c in data["categories"]] == list(LESION_TYPES)
    assert [im["file_name"] for im in data["images"]] == [f"{image_name(i)}.jpeg" for i in range(24)]
    assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"]) > 0
    csv_boxes = sorted((r[0], r[1], *map(int, r[2:])) for r in _rows(dataset / "lesions.csv")[1:])
    coco_boxes = []
    for ann in data["annotations"]:
        im = coco.imgs[ann["image_id"]]
        rle = ann["segmentation"]
        assert rle["size"] == [im["height"], im["width"]] and isinstance(rle["counts"], str)
        m = coco.annToMask(ann)
        ys, xs = np.nonzero(m)
        x, y, w, h = ann["bbox"]
        assert (xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()) == (x, y, w, h)
        assert ann["area"] == int(m.sum()) and ann["iscrowd"] == 0
        assert mask_utils.toBbox(rle | {"counts": rle["counts"].encode()}).tolist() == [x, y, w, h]
        name = Path(im["file_name"]).stem
        kind = data["categories"][ann["category_id"] - 1]["name"]
        coco_boxes.append((name, kind, x, y, x + w, y + h))
        cx, cy = x + (w - 1) / 2, y + (h - 1) / 2
        assert ann["attributes"]["quadrant"] == quadrant_of(cx, cy, im["field"][0], im["field"][1], im["laterality"])
    assert sorted(coco_boxes) == csv_boxes


def test_generated_truth_follows_the_rules(dataset: Path) -> None:
    """Per image of the written folder: grade from the findings, 4-2-1 by quadrant counts of the annotations,
    DME iff an exudate mask pixel lies within 1 DD of the fovea (photographs whose field was not moved or cut)."""
    coco = COCO(str(dataset / "lesions.json"))
    quality_rows = {q["image"]: q for q in _dicts(dataset / "quality.csv")}
    checked = 0
    for im in coco.dataset["images"]:
        q = quality_rows[Path(im["file_name"]).stem]
        if float(q["off_centre"]) or float(q["cut_field"]):
            continue
        checked += 1
        anns = coco.imgToAnns[im["id"]]
        fd = im["findings"]
        counts = dict.fromkeys(QUADRANTS, 0)
        for a in anns:
            if a["category_id"] == 2 and a["attributes"]["subtype"] != "preretinal":
                counts[a["attributes"]["quadrant"]] += 1
        assert counts == fd["haemorrhages_per_quadrant"]
        severe = (all(n > 20 for n in counts.values()) or len(fd["venous_beading_quadrants"]) >= 2
                  or fd["irma_quadrants"])
        proliferative = fd["neovascularisation"] or fd["preretinal_haemorrhages"] or fd["vitreous_haemorrhage"] \
            or fd["laser_scars"]
        kinds = {a["category_id"] for a in anns}
        if im["grade"] == 4:
            assert proliferative
        elif im["grade"] == 3:
            assert severe and not proliferative
        elif im["grade"] == 1:
            assert kinds == {1}
        elif im["grade"] == 0:
            assert not anns
        dists = []
        for a in anns:
            if a["category_id"] == 3:
                ys, xs = np.nonzero(coco.annToMask(a))
                dists.append(float(np.hypot(xs - im["fovea"][0], ys - im["fovea"][1]).min()) / im["disc_diameter"])
        assert im["dme"] == int(bool(dists) and min(dists) <= 1.0)
        assert im["referable"] == int(im["grade"] >= 2 or im["dme"] == 1)
    assert checked >= 12


def _dataset_bytes(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def test_generate_byte_identical_whatever_the_workers(tmp_path: Path) -> None:
    kw = {"count": 6, "seed": 7, "size": 96, "progress": False, "p_degraded": 0.5}
    generate(tmp_path / "a", **kw)  # type: ignore[arg-type]
    generate(tmp_path / "b", **kw)  # type: ignore[arg-type]
    generate(tmp_path / "w2", workers=2, **kw)  # type: ignore[arg-type]
    generate(tmp_path / "other", **{**kw, "seed": 8})  # type: ignore[arg-type]
    a = _dataset_bytes(tmp_path / "a")
    assert len(a) == 6 + 5
    assert a == _dataset_bytes(tmp_path / "b") == _dataset_bytes(tmp_path / "w2")
    assert a["trainLabels.csv"] != _dataset_bytes(tmp_path / "other")["trainLabels.csv"] or \
        a["00000_left.jpeg"] != _dataset_bytes(tmp_path / "other")["00000_left.jpeg"]


def test_p_degraded_leaves_clean_photographs_alone(tmp_path: Path) -> None:
    generate(tmp_path / "clean", count=4, seed=3, size=96, p_degraded=0.0, progress=False)
    generate(tmp_path / "some", count=4, seed=3, size=96, p_degraded=0.5, progress=False)
    clean = {r["image"]: r for r in _dicts(tmp_path / "clean" / "quality.csv")}
    assert all(r["gradable"] == "1" and r["reasons"] == "" for r in clean.values())
    for r in _dicts(tmp_path / "some" / "quality.csv"):
        untouched = all(float(r[k]) == 0 for k in r if k not in ("image", "gradable", "reasons"))
        same = (tmp_path / "clean" / f"{r['image']}.jpeg").read_bytes() == (tmp_path / "some" / f"{r['image']}.jpeg").read_bytes()
        assert same == untouched
    assert _rows(tmp_path / "clean" / "trainLabels.csv") == _rows(tmp_path / "some" / "trainLabels.csv")


def test_generate_grade_weights(tmp_path: Path) -> None:
    labels = generate(tmp_path / "g", count=4, seed=1, size=64, grade_weights=(0, 0, 0, 0, 1), progress=False)
    assert [r[1] for r in _rows(labels)[1:]] == ["4"] * 4


@pytest.mark.parametrize(
    "kwargs",
    [{"count": 0}, {"size": 32}, {"seed": -1}, {"workers": 0}, {"grade_weights": (1, 1)},
     {"grade_weights": (0,) * 5}, {"p_degraded": 1.5}, {"cameras": [(640, 32)]}, {"cameras": []},
     {"cameras": [(640,)]}],
)
def test_generate_rejects_bad_arguments(tmp_path: Path, kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"count": 2, "seed": 0, "size": 64, "progress": False}
    args.update(kwargs)
    with pytest.raises(ValueError):
        generate(tmp_path / "bad", **args)  # type: ignore[arg-type]
    assert not (tmp_path / "bad").exists()


# --- command line -------------------------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "datasets.synthetic", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_cli_writes_dataset(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    res = _cli("--out", str(out), "--count", "3", "--seed", "1", "--camera", "160x120", "128x96",
               "--grade-weights", "1,0,0,0,1", "--p-degraded", "0")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    rows = _rows(out / "trainLabels.csv")
    assert rows[0] == ["image", "level"] and len(rows) == 4
    assert {r[1] for r in rows[1:]} <= {"0", "4"}
    for name in ("lesions.csv", "lesions.json", "ground_truth.csv", "quality.csv", "00001_left.jpeg"):
        assert (out / name).is_file()
    assert {(r["width"], r["height"]) for r in _dicts(out / "ground_truth.csv")} <= {("160", "120"), ("128", "96")}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--count", "0"], "--count"),
        (["--count", "2", "--size", "32"], "--size"),
        (["--count", "2", "--camera", "2592by1944"], "--camera"),
        (["--count", "2", "--camera", "640x32"], "--camera"),
        (["--count", "2", "--size", "128", "--camera", "640x480"], "--camera"),
        (["--count", "2", "--p-degraded", "1.5"], "--p-degraded"),
        (["--count", "2", "--grade-weights", "1,2,x,4,5"], "--grade-weights"),
        (["--count", "2", "--grade-weights", "1,1,1"], "--grade-weights"),
        (["--count", "2", "--out-is-file"], "not a directory"),
    ],
)
def test_cli_rejects_bad_arguments(tmp_path: Path, args: list[str], needle: str) -> None:
    out = tmp_path / "out"
    if "--out-is-file" in args:
        args = [a for a in args if a != "--out-is-file"]
        out.write_text("I am a file")
    res = _cli("--out", str(out), "--seed", "0", *args)
    assert res.returncode == 2
    assert needle in res.stderr
    assert "Traceback" not in res.stderr
    assert not (out.is_dir() and any(out.iterdir()))
