"""training.screening_check: a grader served on a folder of screening photographs, tabulated."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from models.store import DEFAULT_DIR
from training.screening_check import main, screen


def test_screen_tabulates_what_a_screening_programme_sees(tmp_path: Path, retina_path: Path) -> None:
    shutil.copy(retina_path, tmp_path / "a.jpg")
    summary = screen(DEFAULT_DIR / "dr-grader.card.json", [tmp_path / "a.jpg"],
                     quality_card=DEFAULT_DIR / "image-quality.card.json")
    assert summary["photographs"] == 1 and summary["gradable"] == 1  # a sharp, normal real eye
    grades = summary["grades_of_gradable"]
    assert isinstance(grades, dict) and sum(grades.values()) == 1
    [row] = summary["per_image"]  # type: ignore[misc]
    assert row["image"] == "a.jpg" and row["grade"] in range(5) and 0.0 <= row["p_referable"] <= 1.0


def test_cli_refuses_an_empty_folder_and_writes_its_summary(tmp_path: Path, retina_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--card", str(DEFAULT_DIR / "dr-grader.card.json"), "--images", str(tmp_path)]) == 2
    assert "no photographs" in capsys.readouterr().err
    shutil.copy(retina_path, tmp_path / "b.jpg")
    out = tmp_path / "s.json"
    assert main(["--card", str(DEFAULT_DIR / "dr-grader.card.json"), "--images", str(tmp_path),
                 "--quality", "none", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["photographs"] == 1
