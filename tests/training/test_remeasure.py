"""Re-measuring an exported grader refreshes its card's metrics but never its file, hash or operating point."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from models.card import ModelCard
from training.data import load_graded
from training.remeasure import main


@pytest.mark.slow
def test_remeasure_refreshes_metrics_and_keeps_the_contract(tiny_export: Path, tiny_dataset: Path,
                                                            tmp_path: Path) -> None:
    export = tmp_path / "export"
    shutil.copytree(tiny_export, export)
    card_path = export / "tiny-grader.card.json"
    before = ModelCard.load(card_path)
    onnx_before = (export / "tiny-grader.onnx").read_bytes()
    assert main(["--card", str(card_path), "--data", str(tiny_dataset), "--format", "synthetic"]) == 0
    after = ModelCard.load(card_path)
    assert after.sha256 == before.sha256 and (export / "tiny-grader.onnx").read_bytes() == onnx_before
    assert after.operating_points == before.operating_points
    assert after.metrics["n"] == len(load_graded(tiny_dataset, "synthetic", verbose=False)) and "quadratic_weighted_kappa_ci95_low" in after.metrics
    assert "pointing_game_n" in after.metrics  # synthetic records carry lesion boxes
    assert after.metrics["max_abs_logit_diff"] == before.metrics["max_abs_logit_diff"]
    assert "re-measured" in after.metrics_data and (export / "tiny-grader.confusion.png").is_file()


def test_remeasure_refuses_a_tampered_model(tiny_export: Path, tiny_dataset: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    export = tmp_path / "export"
    shutil.copytree(tiny_export, export)
    onnx = export / "tiny-grader.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-1] + b"\0")
    assert main(["--card", str(export / "tiny-grader.card.json"), "--data", str(tiny_dataset)]) == 2
    assert "sha256" in capsys.readouterr().err
