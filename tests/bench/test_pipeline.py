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
    KEEP_MARKER, README_BEGIN, README_END, HttpCompare, InputResult, Stat, compare_http, drive_inputs, headline,
    http_table, kept_notes, make_inputs, measure_input, plot, select, stage_table, summary_table, update_readme,
    write_markdown,
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


def test_the_default_graders_views_are_averaged_on_the_torch_side_too() -> None:
    """The embedded default grader's graph averages two test-time views: its weights in torch give its logits
    only when torch averages the same views (one view alone differs)."""
    from models.card import recipe_of

    card_path = Path(__file__).resolve().parents[2] / "models/default/dr-grader.card.json"
    card = ModelCard.load(card_path)
    assert card.test_time_views == ("identity", "rot90")
    onnx_bytes = (card_path.parent / card.file).read_bytes()
    model = torch_grader(onnx_bytes, card.architecture, len(card.classes))
    rgb = np.random.default_rng(1).integers(0, 255, (300, 300, 3), dtype=np.uint8)
    x = preprocess(rgb, card.input.size, recipe=recipe_of(card)).tensor[None]
    assert check_same_weights(model, onnx_bytes, x, views=2) < 1e-3
    assert max_logit_difference(model, onnx_bytes, x, views=1) > 1e-3


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
                    competent={"forward": [50.0, 60.0, 70.0], "gradcam": [30.0, 20.0, 10.0],
                               "total": [100.0, 200.0, 400.0]},
                    naive={"forward": [1.0], "total": [1000.0]},
                    fovea={"inference": [5.0, 8.0, 2.0], "detection": [0.0, 0.0, 0.0], "total": [10.0, 20.0, 40.0]})
    assert r.ratio() == pytest.approx(200.0 / 20.0)  # the competent stack by default
    assert r.ratio("naive") == pytest.approx(1000.0 / 20.0)
    assert r.model_share("fovea") == pytest.approx(0.4)  # median of 0.5, 0.4, 0.05
    assert r.model_share("competent") == pytest.approx(0.4)  # median of 0.8, 0.4, 0.2
    # With a run of every stage in turn, Fovea's share comes from it: overlapped stages would count twice.
    r.fovea_sequential = {"inference": [6.0, 6.0, 6.0], "detection": [4.0, 4.0, 4.0], "total": [40.0, 50.0, 20.0]}
    assert r.model_share("fovea") == pytest.approx(0.25)  # median of 0.25, 0.2, 0.5
    with pytest.raises(ValueError):
        Stat.of([])


def _result(name: str, competent: float, fovea: float, naive: float | None = None) -> InputResult:
    """Fovea takes ``fovea`` ms with its stages overlapped and 1.25 times that with every stage in turn."""
    stages = {"decode": [1.0], "transforms": [1.0], "forward": [competent / 4], "gradcam": [competent / 4],
              "overlay": [1.0], "encode": [1.0], "total": [competent]}
    fovea_stages = {"decode": [1.0], "quality": [1.0], "preprocess": [1.0], "inference": [fovea / 4],
                    "detection": [fovea / 4], "render": [1.0]}
    return InputResult(name=name, width=10, height=10, nbytes=1000, competent=stages,
                       naive={**stages, "total": [naive]} if naive else {},
                       fovea={**fovea_stages, "total": [fovea]},
                       fovea_sequential={**fovea_stages, "total": [1.25 * fovea]},
                       render_parts={"total": [1.0]}, competent_grade=1, naive_grade=2, fovea_grade=1)


def test_headline_quotes_the_competent_ratio() -> None:
    results = [_result("a", 300.0, 100.0, 3000.0), _result("b", 500.0, 100.0, 6000.0), _result("c", 400.0, 50.0)]
    line = headline(results)
    assert "**5.0× faster**" in line and "3.0–8.0×" in line and "3 photographs" in line
    assert "45× against the naive stack" in line  # median of 30 and 60
    http = [HttpCompare(name="a", fovea=[100.0, 110.0, 90.0], competent=[400.0, 390.0, 420.0])]
    assert "over HTTP, p50 4.0×" in headline(results, http)
    slower = headline([_result("a", 100.0, 200.0), _result("b", 100.0, 250.0)])
    assert "**2.2× slower**" in slower and "0.4–0.5×" in slower  # Fovea slower: said so, not "0.4× faster"
    assert "**4.0×**" in http_table(http)[2]


def test_markdown_writer_headlines_the_competent_ratio(tmp_path: Path) -> None:
    results = [_result("JPEG a", 300.0, 100.0, 3000.0), _result("PNG b", 200.0, 100.0)]
    compare = [HttpCompare(name="JPEG a", fovea=[100.0], competent=[250.0], fovea_grade=1, competent_grade=1)]
    meta = {"machine": "m", "date": "d", "command": "c", "repeats": 1, "warmup": 0, "seconds": 1.0,
            "load_before": 0.0, "load_after": 0.0, "shared_note": "", "models": "x", "same_weights_diff": 1e-6,
            "ceiling_gflops": 50.0, "headline": headline(results, compare), "http_compare": compare,
            "competent_ready_s": 3.0, "compute": [{"model": "g", "size": 224, "gflop": 0.8, "latency": "10",
                                                   "latency_ms": 10.0, "achieved": 80.0}],
            "compute_share": {"models_ms": 10.0, "median": 0.1, "lo": 0.1, "hi": 0.1}, "notes": ["n"]}
    page = tmp_path / "performance.md"
    write_markdown(page, results=results, meta=meta)
    text = page.read_text()
    assert text.splitlines()[4].startswith("**Headline**: ") and "**2.5× faster**" in text.splitlines()[4]
    summary = next(line for line in text.splitlines() if line.startswith("| JPEG a |"))
    assert "**3.0×**" in summary and "| 30.0× |" in summary  # competent ratio in bold, naive after it
    assert "| PNG b |" in text and "## Stages: competent stack" in text and "## Stages: naive stack" in text
    assert "## Over HTTP" in text and "**2.5×**" in text
    from bench.pipeline import _notes

    notes = _notes(results, meta)
    # with every stage in turn Fovea takes 125 ms, of which detection 25: without it 100 against 300 and 200 ms
    assert any("Without its detection stage Fovea would be 2.5× faster" in n and "2.0–3.0×" in n for n in notes)
    assert any("run beside the grader" in n and "1.25× faster" in n for n in notes)
    readme = tmp_path / "README.md"
    readme.write_text(f"# X\n\nHeadline: {README_BEGIN}old{README_END}\n", encoding="utf-8")
    assert update_readme(readme, meta["headline"])
    assert readme.read_text() == f"# X\n\nHeadline: {README_BEGIN}{meta['headline']}{README_END}\n"
    readme.write_text("no markers\n", encoding="utf-8")
    assert not update_readme(readme, "x") and readme.read_text() == "no markers\n"


def test_measure_a_tiny_input_and_report(tiny: tuple[ModelCard, bytes], tiny_export: Path, tmp_path: Path) -> None:
    from bench.baseline import STAGES, NaiveBaseline
    from bench.competent import CompetentStack
    from analysis.pipeline import Analyzer

    card, onnx_bytes = tiny
    competent = CompetentStack(torch_grader(onnx_bytes, card.architecture, len(card.classes)), card, threads=1)
    naive = NaiveBaseline(torch_grader(onnx_bytes, card.architecture, len(card.classes)), card.input.size)
    analyzer = Analyzer.load(tiny_export / "tiny-grader.card.json")
    inputs = make_inputs(tmp_path, scale=0.06)
    assert len(inputs) == 6 and sum("real" in k for k in inputs) == 2
    chosen = select(inputs, ["dicom", "PNG"])  # the DICOM and the PNG
    assert len(chosen) == 2
    results = [measure_input(name, data, competent=competent, naive=naive, analyzer=analyzer, repeats=2, warmup=0)
               for name, data in chosen.items()]
    for r in results:
        assert set(STAGES) <= set(r.competent) and set(STAGES) <= set(r.naive)
        assert all(len(v) == 2 for v in (*r.competent.values(), *r.naive.values()))
        assert {"decode", "quality", "preprocess", "inference", "render", "total"} <= set(r.fovea)
        for i in range(2):  # a torch stack's total is the sum of its stages; Fovea's wall time covers its own
            assert r.competent["total"][i] == pytest.approx(sum(r.competent[s][i] for s in STAGES))
            assert r.fovea["total"][i] >= r.fovea["inference"][i]
        assert None not in (r.competent_grade, r.naive_grade, r.fovea_grade)
    rows = summary_table(results)
    assert len(rows) == 2 + len(results)
    assert f"**{results[0].ratio():.1f}×**" in rows[2] and f"{results[0].ratio('naive'):.1f}×" in rows[2]
    rows = stage_table(results, "competent", STAGES)
    assert len(rows) == 2 + len(results) and rows[0].count("|") == len(STAGES) + 4
    out = tmp_path / "p.png"
    plot(results, out)
    assert out.stat().st_size > 1000
    json.dumps([r.__dict__ for r in results])
    # Without the naive stack its columns are empty, not wrong.
    r = measure_input(*next(iter(chosen.items())), competent=competent, naive=None, analyzer=analyzer, repeats=1,
                      warmup=0)
    assert not r.naive and r.naive_grade is None and "| – | – |" in summary_table([r])[2]


def test_fovea_as_served_runs_the_detector_and_quality_model(tiny: tuple[ModelCard, bytes], tiny_export: Path,
                                                             tiny_detector_run: tuple[Path, Path],
                                                             tiny_quality_run: tuple[Path, Path],
                                                             tmp_path: Path) -> None:
    from bench.competent import CompetentStack
    from analysis.pipeline import Analyzer

    card, onnx_bytes = tiny
    det_card = tiny_detector_run[1] / "tiny-detector.card.json"
    q_card = tiny_quality_run[1] / "tiny-quality.card.json"
    det = ModelCard.load(det_card)
    assert model_flops((tiny_detector_run[1] / det.file).read_bytes(), det.input.size) > 0
    competent = CompetentStack(torch_grader(onnx_bytes, card.architecture, len(card.classes)), card, threads=1)
    grader = tiny_export / "tiny-grader.card.json"
    analyzer = Analyzer.load(grader, detector=det_card, quality=q_card)
    name, data = list(make_inputs(tmp_path, scale=0.06).items())[-1]
    r = measure_input(name, data, competent=competent, naive=None, analyzer=analyzer, repeats=1, warmup=0)
    assert "detection" in r.fovea and r.fovea["detection"][0] > 0
    assert 0 < r.model_share("fovea") <= 1


def test_drive_photographs_are_read_in_place_or_skipped_with_a_note(tmp_path: Path) -> None:
    import cv2

    got, note = drive_inputs(tmp_path / "absent", 3)
    assert got == {} and note is not None and "skipped" in note
    assert drive_inputs(tmp_path / "absent", 0) == ({}, None)
    for stem in ("02_test", "01_test", "03_training"):
        cv2.imwrite(str(tmp_path / f"{stem}.png"), np.zeros((30, 20, 3), np.uint8))
    got, note = drive_inputs(tmp_path, 2)
    assert note is None and list(got) == ["PNG 20x30 real (DRIVE 01_test, raw camera)",
                                          "PNG 20x30 real (DRIVE 02_test, raw camera)"]
    assert got[list(got)[0]] == (tmp_path / "01_test.png").read_bytes()


def test_http_comparison_alternates_and_takes_the_median() -> None:
    import httpx

    calls: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.host)
        grade = 3 if request.url.host == "fovea.test" else 2
        return httpx.Response(200, json={"dr_grade": {"grade": grade}})

    rows = compare_http({"a": b"\xff\xd8jpeg", "b": b"\x89PNGx"}, "http://fovea.test", "http://comp.test",
                        repeats=3, warmup=1, transport=httpx.MockTransport(handle))
    assert [r.name for r in rows] == ["a", "b"] and all(len(r.fovea) == len(r.competent) == 3 for r in rows)
    assert (rows[0].fovea_grade, rows[0].competent_grade) == (3, 2)
    assert calls[:4] == ["fovea.test", "comp.test", "fovea.test", "comp.test"]  # repeat 0: Fovea first
    assert calls[4:6] == ["comp.test", "fovea.test"]  # repeat 1: the competent server first
    failing = httpx.MockTransport(lambda request: httpx.Response(500, json={}))
    with pytest.raises(RuntimeError, match="answered 500"):
        compare_http({"a": b"x"}, "http://fovea.test", "http://comp.test", repeats=1, transport=failing)


def test_hand_written_notes_after_the_marker_are_kept(tmp_path: Path) -> None:
    page = tmp_path / "performance.md"
    assert kept_notes(page) == []
    page.write_text("# Performance\n\ngenerated\n", encoding="utf-8")
    assert kept_notes(page) == []
    page.write_text(f"# Performance\n\ngenerated\n\n{KEEP_MARKER}\n\n## Notes\n\nby hand\n", encoding="utf-8")
    assert kept_notes(page) == [KEEP_MARKER, "", "## Notes", "", "by hand"]


def test_a_torch_thread_check_flags_contended_cores(tiny: tuple[ModelCard, bytes]) -> None:
    from bench.pipeline import contention_note, torch_thread_check

    card, onnx_bytes = tiny
    c = torch_thread_check(torch_grader(onnx_bytes, card.architecture, len(card.classes)), _tensor(card.input.size),
                           2, runs=2)
    assert c["threads"] == 2 and c["forward_ms"] > 0 and c["one_thread_ms"] > 0 and torch.get_num_threads() == 2
    assert "inflated" in contention_note({"threads": 2, "forward_ms": 90.0, "one_thread_ms": 30.0})
    assert "inflated" not in contention_note({"threads": 2, "forward_ms": 33.0, "one_thread_ms": 30.0})
    assert "wait policy: PASSIVE" in contention_note({"threads": 2, "forward_ms": 9.0, "one_thread_ms": 9.0,
                                                      "omp_wait_policy": "PASSIVE"})
    assert "inflated" not in contention_note({"threads": 2, "forward_ms": 20.0, "one_thread_ms": 30.0})
    assert contention_note({"threads": 1, "forward_ms": 20.0, "one_thread_ms": 20.0}).endswith("took 20 ms.")
