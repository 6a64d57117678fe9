"""training.preprocess_sheet: raw and enhanced real photographs before/after a recipe, in one picture."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("torch", reason="training extras (torch) are not installed")

from training.preprocess_sheet import main, sheet  # noqa: E402

REAL_DEV = Path(__file__).resolve().parents[2].parent / "shared" / "real-dev"


def test_sheet_puts_the_photograph_above_the_model_view(retina_path: Path) -> None:
    img = sheet([("retina", retina_path), ("retina", retina_path)], "fovea.fundus-contrast", tile=64)
    assert img.shape == (128, 128, 3)
    top, bottom = img[:64, 64:], img[64:, 64:]
    assert top[:2, :2].max() < 40 and np.all(bottom[:2, :2] == 128)  # black surround above, mid-grey below


def test_cli_needs_the_real_photographs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--real-dev", str(tmp_path), "--out", str(tmp_path / "s.jpg")]) == 2
    assert "drive/images" in capsys.readouterr().err
    if not REAL_DEV.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{REAL_DEV} is missing: CI must provide the real development photographs")
        pytest.skip(f"{REAL_DEV} (real photographs, not redistributable) is not on this machine")
    out = tmp_path / "sheet.jpg"
    assert main(["--real-dev", str(REAL_DEV), "--per-domain", "2", "--out", str(out)]) == 0
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] == 400 and img.shape[1] == 4 * 200
