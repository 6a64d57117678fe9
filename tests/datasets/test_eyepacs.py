"""EyePACS layout reader: round trip with the synthetic generator, clear errors naming the CSV line."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets.eyepacs import read_eyepacs
from datasets.synthetic.writer import generate


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eyepacs")
    generate(root, count=6, seed=3, size=64, progress=False)
    return root


def _labels(root: Path) -> list[tuple[str, int]]:
    with (root / "trainLabels.csv").open(newline="") as f:
        return [(r["image"], int(r["level"])) for r in csv.DictReader(f)]


def _write(root: Path, text: str, images: tuple[str, ...] = ()) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "trainLabels.csv").write_text(text)
    for name in images:
        cv2.imwrite(str(root / name), np.zeros((8, 8, 3), np.uint8))


def test_round_trip(dataset: Path) -> None:
    items = read_eyepacs(dataset)
    assert [(p.stem, g) for p, g in items] == _labels(dataset)
    assert all(p.suffix == ".jpeg" and p.parent == dataset and p.is_file() for p, _ in items)


def test_missing_image_names_line(tmp_path: Path, dataset: Path) -> None:
    root = tmp_path / "copy"
    root.mkdir()
    for p in dataset.iterdir():
        (root / p.name).write_bytes(p.read_bytes())
    (root / "00001_right.jpeg").unlink()  # image index 3: CSV line 5
    with pytest.raises(ValueError, match=r"trainLabels\.csv:5: image '00001_right' not found"):
        read_eyepacs(root)


def test_other_extensions_and_extra_columns(tmp_path: Path) -> None:
    _write(tmp_path, "image,level,Usage\n1_left,0,Public\n1_right,4,Private\n", ("1_left.png", "1_right.tif"))
    items = read_eyepacs(tmp_path)
    assert [(p.name, g) for p, g in items] == [("1_left.png", 0), ("1_right.tif", 4)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("image,level\n1_left,0\n1_right,5\n", r":3: level 5 of image '1_right' is outside 0-4"),
        ("image,level\n1_left,-1\n", r":2: level -1 .* outside 0-4"),
        ("image,level\n1_left,two\n", r":2: level 'two' .* not an integer"),
        ("image,grade\n1_left,0\n", r":1: header lacks column\(s\) level"),
        ("image,level\n1_left,0\n1_left,1\n", r":3: image '1_left' already listed on line 2"),
    ],
)
def test_bad_rows_raise_with_line(tmp_path: Path, text: str, message: str) -> None:
    _write(tmp_path, text, ("1_left.jpeg", "1_right.jpeg"))
    with pytest.raises(ValueError, match=message):
        read_eyepacs(tmp_path)


def test_missing_csv(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="trainLabels.csv"):
        read_eyepacs(tmp_path)
