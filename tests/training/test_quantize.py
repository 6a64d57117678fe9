"""training.quantize: static int8 behind the QWK gate; a refused model leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from models.card import ModelCard, verify
from training.__main__ import main
from training.quantize import GateResult, gate


def _args(tiny_export: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["quantize", "--card", str(tiny_export / "tiny-grader.card.json"), "--data", str(data), "--format",
            "eyepacs", "--out", str(out), "--calibration-count", "6", *extra]


def test_tiny_grader_int8_passes_the_gate_and_is_servable(tiny_export: Path, tiny_dataset: Path,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "int8"
    assert main(_args(tiny_export, tiny_dataset, out)) == 0
    parent = ModelCard.load(tiny_export / "tiny-grader.card.json")
    card = ModelCard.load(out / "tiny-grader-int8.card.json")
    assert card.version == f"{parent.version}-int8" and card.name == parent.name
    assert verify(card, out).name == "tiny-grader-int8.onnx"
    assert card.sha256 != parent.sha256
    q = card.quantization
    assert q is not None and q.parent_sha256 == parent.sha256 and q.parent_version == parent.version
    assert "QDQ" in q.method and "6 synthetic photographs" in q.calibration
    drop = q.metrics_fp32["quadratic_weighted_kappa"] - q.metrics_int8["quadratic_weighted_kappa"]
    assert drop <= 0.01
    assert q.metric_deltas["quadratic_weighted_kappa"] == pytest.approx(-drop)
    assert card.metrics == q.metrics_int8 and set(q.latency_ms) == {"fp32", "int8"}
    ops = {n.op_type for n in onnx.load(str(out / card.file)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # The service's loader accepts the int8 card and runs it (outputs logits + cam).
    from analysis.pipeline import Analyzer

    analyzer = Analyzer.load(out / "tiny-grader-int8.card.json")
    photo = next(tiny_dataset.rglob("*.jpeg"), None) or next(tiny_dataset.rglob("*.jpg"))
    findings = analyzer.analyze(photo.read_bytes())
    assert findings.models[0].version == card.version and len(findings.dr_grade.probabilities) == 5
    # ... and so does the model store: registered under its own version.
    from models.store import import_model

    assert import_model(out / "tiny-grader-int8.card.json") == f"tiny-grader:{card.version}"


def test_a_failed_gate_is_refused_and_writes_nothing(tiny_export: Path, tiny_dataset: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "int8"
    # A negative allowance demands that int8 *gain* QWK: the gate must refuse whatever the model does.
    assert main(_args(tiny_export, tiny_dataset, out, "--max-qwk-drop", "-1")) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "quadratic_weighted_kappa" in err and "no model or card written" in err
    assert not out.exists() or not any(out.iterdir())


def test_gate_reads_the_task_metric() -> None:
    grader = ModelCard.model_construct(task="dr-grading")
    g = gate(grader, {"quadratic_weighted_kappa": 0.90}, {"quadratic_weighted_kappa": 0.885})
    assert g.metric == "quadratic_weighted_kappa" and g.drop == pytest.approx(0.015) and not g.passed
    det = ModelCard.model_construct(task="lesion-detection")
    g = gate(det, {"map_50": 0.50}, {"map_50": 0.49})
    assert g.metric == "map_50" and g.passed
    assert not GateResult("map_50", {"map_50": 0.5}, {"map_50": 0.47}, 0.02).passed
