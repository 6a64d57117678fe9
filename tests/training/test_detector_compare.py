"""training.detector_compare: two detectors served side by side; the new misses are the before-lesions the
after detector does not find again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from models.store import DEFAULT_DIR
from training.detector_compare import iou, main, new_misses


def test_iou_of_boxes() -> None:
    assert iou([0, 0, 10, 10], [0, 0, 10, 10]) == pytest.approx(1.0)
    assert iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0


def test_new_misses_need_the_same_class_and_overlap() -> None:
    ma = {"type": "microaneurysm", "score": 0.9, "box": [0, 0, 10, 10]}
    he = {"type": "haemorrhage", "score": 0.8, "box": [50, 50, 70, 70]}
    assert new_misses([ma, he], [ma, he]) == []
    # The same box under another class is not the same finding; a box moved off is a miss.
    assert new_misses([ma], [{**ma, "type": "haemorrhage"}]) == [ma]
    assert new_misses([ma], [{**ma, "box": [8, 8, 18, 18]}]) == [ma]
    assert new_misses([ma], [{**ma, "box": [1, 1, 11, 11]}]) == []
    assert new_misses([], [ma]) == []


def test_cli_compares_a_detector_with_itself(tmp_path: Path, retina_path: Path) -> None:
    card = DEFAULT_DIR / "lesion-detector.card.json"
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(retina_path, images / "a.jpg")
    out = tmp_path / "out"
    assert main(["--before", str(card), "--after", str(card), "--images", str(images), "--out", str(out)]) == 0
    summary = json.loads((out / "compare.json").read_text())
    assert summary["photographs"] == 2  # retina.jpg always, plus the folder's one
    assert summary["lesions_before"] == summary["lesions_after"] and summary["new_misses"] == 0
    assert (out / "compare.jpg").stat().st_size > 10_000


def test_cli_refuses_a_missing_card(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--before", str(tmp_path / "none.card.json")]) == 2
    assert "no detector card" in capsys.readouterr().err
