"""bench.pipeline and its parts: the same-weights check, FLOP counting, statistics and tables (not timings)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytorch_grad_cam", reason="grad-cam (dev extra) is not installed")

import torch  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

from bench.flops import matmul_ceiling, model_flops  # noqa: E402
from bench.onnx_torch import WeightMappingError, check_same_weights, max_logit_difference, torch_grader  # noqa: E402
from bench.pipeline import (  # noqa: E402
    KEEP_MARKER, InputResult, Stat, kept_notes, make_inputs, measure_input, plot, stage_table, summary_table,
)
from models.card import ModelCard  # noqa: E402
from models.preprocess import preprocess  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tiny_export: Path) -> tuple[ModelCard, bytes]:
    card = ModelCard.load(tiny_export / "tiny-grader.card.json")
    return card, (tiny_export / card.file).read_bytes()


def _tensor(size: int) -> np.ndarray:
    rgb = np.random.default_rng(0).integers(0, 255, (200, 240, 3), dtype=np.uint8)
    return preprocess(rgb, size).tensor[None]


def test_onnx_weights_in_torch_give_the_same_logits(tiny: tuple[ModelCard, bytes]) -> None:
    card, onnx_bytes = tiny
    model = torch_grader(onnx_bytes, card.architecture, len(card.classes))
    assert check_same_weights(model, onnx_bytes, _tensor(card.input.size)) < 1e-4
    # A torch model with one weight changed is caught, loudly.
    with torch.no_grad():
        model.head.bias[0] += 0.5
    x = _tensor(card.input.size)
    assert max_logit_difference(model, onnx_bytes, x) > 1e-3
    with pytest.raises(WeightMappingError, match="not the same weights"):
        check_same_weights(model, onnx_bytes, x)


def test_weights_refuse_another_architecture(tiny: tuple[ModelCard, bytes]) -> None:
    with pytest.raises(WeightMappingError):
        torch_grader(tiny[1], "resnet18", 5)


def test_flops_of_a_known_graph() -> None:
    # Conv 3->8, 3x3, pad 1 on 16x16, then global pool, flatten, Gemm 8->5.
    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", TensorProto.FLOAT, (8, 3, 3, 3), rng.standard_normal(216).tolist())
    dw = helper.make_tensor("dw", TensorProto.FLOAT, (8, 1, 3, 3), rng.standard_normal(72).tolist())
    g = helper.make_tensor("g", TensorProto.FLOAT, (5, 8), rng.standard_normal(40).tolist())
    b = helper.make_tensor("b", TensorProto.FLOAT, (5,), [0.0] * 5)
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["c", "dw"], ["d"], pads=[1, 1, 1, 1], group=8, strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["d"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "g", "b"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], [w, dw, g, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    expected = 2 * 8 * 16 * 16 * 27 + 2 * 8 * 8 * 8 * 9 + 2 * 5 * 8
    assert model_flops(model.SerializeToString(), 16) == expected
    assert matmul_ceiling(n=128, repeats=1) > 0


def test_stat_ratio_and_model_share() -> None:
    s = Stat.of([1.0, 2.0, 3.0, 4.0, 100.0])
    assert (s.median, s.lo, s.hi, s.n) == (3.0, 1.0, 100.0, 5) and s.q1 == 2.0 and s.q3 == 4.0
    assert s.cell(0) == "3 [2–4]"
    r = InputResult(name="x", width=10, height=10, nbytes=1,
                    baseline={"forward": [50.0, 60.0, 70.0], "gradcam": [30.0, 20.0, 10.0], "total": [100.0, 200.0, 400.0]},
                    fovea={"inference": [5.0, 8.0, 2.0], "total": [10.0, 20.0, 40.0]})
    assert r.ratio() == pytest.approx(200.0 / 20.0)
    assert r.model_share("fovea") == pytest.approx(0.4)  # median of 0.5, 0.4, 0.05
    assert r.model_share("baseline") == pytest.approx(0.4)  # median of 0.8, 0.4, 0.2
    with pytest.raises(ValueError):
        Stat.of([])


def test_measure_a_tiny_input_and_report(tiny: tuple[ModelCard, bytes], tiny_export: Path, tmp_path: Path) -> None:
    from bench.baseline import STAGES, NaiveBaseline
    from analysis.pipeline import Analyzer

    card, onnx_bytes = tiny
    model = torch_grader(onnx_bytes, card.architecture, len(card.classes))
    baseline = NaiveBaseline(model, card.input.size)
    analyzer = Analyzer.load(tiny_export / "tiny-grader.card.json")
    inputs = make_inputs(tmp_path, scale=0.06)
    assert len(inputs) == 4 and any(k.startswith("DICOM") for k in inputs)
    results = [measure_input(name, data, baseline=baseline, analyzer=analyzer, repeats=2, warmup=0)
               for name, data in list(inputs.items())[2:]]  # the DICOM and the PNG
    for r in results:
        assert set(STAGES) <= set(r.baseline) and all(len(v) == 2 for v in r.baseline.values())
        assert {"decode", "quality", "preprocess", "inference", "render", "total"} <= set(r.fovea)
        for i in range(2):  # the baseline total is the sum of its stages; Fovea's wall time covers its own
            assert r.baseline["total"][i] == pytest.approx(sum(r.baseline[s][i] for s in STAGES))
            assert r.fovea["total"][i] >= r.fovea["inference"][i]
        assert r.baseline_grade is not None and r.fovea_grade is not None
    rows = summary_table(results)
    assert len(rows) == 2 + len(results)
    assert f"**{results[0].ratio():.1f}×**" in rows[2]
    rows = stage_table(results, "baseline", STAGES)
    assert len(rows) == 2 + len(results) and rows[0].count("|") == len(STAGES) + 4
    out = tmp_path / "p.png"
    plot(results, out)
    assert out.stat().st_size > 1000
    json.dumps([r.__dict__ for r in results])


def test_a_detector_adds_its_column_and_flops(tiny: tuple[ModelCard, bytes], tiny_export: Path,
                                              tiny_detector_run: tuple[Path, Path], tmp_path: Path) -> None:
    from bench.baseline import NaiveBaseline
    from analysis.pipeline import Analyzer

    card, onnx_bytes = tiny
    _, det_dir = tiny_detector_run
    det_card = det_dir / "tiny-detector.card.json"
    det = ModelCard.load(det_card)
    assert model_flops((det_dir / det.file).read_bytes(), det.input.size) > 0
    baseline = NaiveBaseline(torch_grader(onnx_bytes, card.architecture, len(card.classes)), card.input.size)
    grader = tiny_export / "tiny-grader.card.json"
    name, data = list(make_inputs(tmp_path, scale=0.06).items())[-1]
    r = measure_input(name, data, baseline=baseline, analyzer=Analyzer.load(grader), repeats=1, warmup=0,
                      analyzer_detector=Analyzer.load(grader, detector=det_card))
    assert "detection" in r.fovea_detector and "detection" not in r.fovea
    assert 0 < r.model_share("fovea_detector") <= 1
    rows = summary_table([r])
    assert rows[0].endswith("Fovea + detector ms |") and rows[2].count("|") == rows[0].count("|")


def test_hand_written_notes_after_the_marker_are_kept(tmp_path: Path) -> None:
    page = tmp_path / "performance.md"
    assert kept_notes(page) == []
    page.write_text("# Performance\n\ngenerated\n", encoding="utf-8")
    assert kept_notes(page) == []
    page.write_text(f"# Performance\n\ngenerated\n\n{KEEP_MARKER}\n\n## Notes\n\nby hand\n", encoding="utf-8")
    assert kept_notes(page) == [KEEP_MARKER, "", "## Notes", "", "by hand"]
