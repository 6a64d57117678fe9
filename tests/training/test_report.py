"""training.report: the pictures are written and are real PNGs of a sensible size."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="training extras are not installed")

from training.report import plot_confusion, plot_history  # noqa: E402


def test_history_and_confusion_pictures(tmp_path: Path) -> None:
    hist = [{"epoch": e, "train_loss": 1.5 - 0.1 * e, "val_quadratic_weighted_kappa": 0.2 * e,
             "val_referable_auc": 0.5 + 0.1 * e, "val_accuracy": 0.3 + 0.1 * e} for e in range(4)]
    img = cv2.imread(str(plot_history(hist, tmp_path / "h.png")))
    assert img is not None and img.shape[1] >= 800 and img.std() > 5
    cm = np.array([[5, 1, 0, 0, 0], [1, 4, 1, 0, 0], [0, 1, 6, 1, 0], [0, 0, 1, 5, 1], [0, 0, 0, 0, 7]])
    img = cv2.imread(str(plot_confusion(cm, ["a", "b", "c", "d", "e"], tmp_path / "c.png", "t")))
    assert img is not None and img.shape[0] >= 400
