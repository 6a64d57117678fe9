"""The gradability decision with an image-quality model: the model's threshold, reasons, the no-fundus guard,
and the pipeline using a real (tiny) exported quality model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from models.card import CardError, InputSpec, ModelCard, OperatingPoint, PreprocessingSpec, TrainingProvenance
from analysis.gradability import CLASSIC_CLEAR, MODEL_VETO, NO_FIELD_COVERAGE, check_quality_card, combine
from analysis.quality import QualityMeasures, QualityRules, QualityVerdict

CLASSES = ("gradable", "field", "underexposed", "overexposed", "blur", "haze", "uneven")


def _card(threshold: float = 0.3, **changes: object) -> ModelCard:
    fields: dict[str, object] = dict(
        name="iq", version="1.0", task="image-quality", architecture="x", file="iq.onnx", sha256="0" * 64,
        opset=17, input=InputSpec(size=64, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2)), outputs=("probabilities",),
        preprocessing=PreprocessingSpec(name="p", version="2"), classes=CLASSES,
        operating_points=(OperatingPoint(name="gradable", threshold=threshold, sensitivity=0.9, specificity=0.9,
                                         chosen_on="test"),),
        metrics={}, metrics_data="none", created="2026-01-01",
        training=TrainingProvenance(data="d", command="c", code_commit="x", config={}, torch_version="t"))
    fields.update(changes)
    return ModelCard(**fields)  # type: ignore[arg-type]


def _classic(coverage: float = 0.95, score: float = 0.9, reasons: tuple[str, ...] = ()) -> QualityVerdict:
    m = QualityMeasures(coverage=coverage, brightness=0.4, clipped=0.0, sharpness=0.5, contrast=0.05, illumination=0.5)
    return QualityVerdict(gradable=score >= 0.5, score=score, reasons=reasons, measures=m)


def _probs(gradable: float, **reasons: float) -> np.ndarray:
    return np.array([gradable] + [reasons.get(c, 0.0) for c in CLASSES[1:]], np.float32)


def test_model_score_is_one_half_at_the_cards_threshold_and_decides_where_the_classic_gate_is_borderline() -> None:
    card = _card(threshold=0.3)
    at = combine(_probs(0.3), card, _classic(score=0.6))
    assert at.measures["model_score"] == pytest.approx(0.5, abs=1e-3)
    assert at.score == pytest.approx(0.5, abs=1e-3) and at.gradable
    q = combine(_probs(0.8), card, _classic(score=0.7))
    assert q.gradable and q.reasons == []
    assert q.score == pytest.approx(0.7, abs=1e-4)  # min(classic, max(model, guard)): the classic score caps it
    assert "iq:1.0" in q.method and q.measures["p_gradable"] == pytest.approx(0.8)
    assert q.measures["coverage"] == pytest.approx(0.95)  # the classic measures stay in the answer
    below = combine(_probs(0.1), card, _classic(score=0.7))
    assert not below.gradable and below.score < 0.5


def test_a_clear_classic_pass_stands_and_a_classic_failure_stands() -> None:
    card = _card(threshold=0.88)
    # A raw camera photograph the model has never seen the like of: the model fails it, the classic gate finds it
    # clearly fine -> gradable.
    assert combine(_probs(0.05), card, _classic(score=CLASSIC_CLEAR + 0.01)).gradable
    # Just below the classic gate's "clear" line the model's verdict counts.
    clear_fail = combine(_probs(0.01, blur=0.9), card, _classic(score=CLASSIC_CLEAR - 0.01))
    assert not clear_fail.gradable and clear_fail.reasons == ["blur"]
    # A classic failure is ungradable whatever the model says.
    q = combine(_probs(0.99), card, _classic(score=0.0, reasons=("underexposed",)))
    assert not q.gradable and q.reasons == ["underexposed"]


@pytest.mark.parametrize("classic", [0.1, 0.49, 0.5, 0.6, 0.79, 0.8, 0.9, 1.0])
@pytest.mark.parametrize("p", [0.01, 0.3, 0.5, 0.9])
def test_score_is_on_the_side_of_one_half_the_rule_says(classic: float, p: float) -> None:
    q = combine(_probs(p), _card(threshold=0.5), _classic(score=classic))
    expected = classic >= 0.5 and (p >= 0.5 or classic >= CLASSIC_CLEAR)
    assert q.gradable is expected and (q.score >= 0.5) is expected


def test_ungradable_always_says_why() -> None:
    q = combine(_probs(0.01, haze=0.3, uneven=0.4), _card(), _classic(score=0.3))
    assert not q.gradable and q.reasons == ["uneven"]  # none reaches 0.5, classic names none: the most probable
    q = combine(_probs(0.01, underexposed=0.6), _card(), _classic(score=0.2, reasons=("field",)))
    assert q.reasons == ["field", "underexposed"]  # both methods' reasons, in service order


def test_no_fundus_at_all_is_ungradable_whatever_the_model_says() -> None:
    q = combine(_probs(0.99), _card(), _classic(coverage=NO_FIELD_COVERAGE / 2))
    assert not q.gradable and q.reasons == ["field"] and q.score == 0.0


def test_cards_that_are_not_quality_models_are_refused() -> None:
    assert check_quality_card(_card(threshold=0.4)) == 0.4
    with pytest.raises(CardError):
        check_quality_card(_card(task="dr-grading"))
    with pytest.raises(CardError):
        check_quality_card(_card(classes=("gradable", "sparkle")))
    with pytest.raises(CardError):
        check_quality_card(_card(operating_points=()))


@pytest.mark.slow
def test_pipeline_uses_the_installed_quality_model(tiny_export: Path, tiny_quality_run: tuple[Path, Path],
                                                  retina_path: Path) -> None:
    from analysis.pipeline import Analyzer

    _, q_export = tiny_quality_run
    analyzer = Analyzer.load(tiny_export / "tiny-grader.card.json", quality=q_export / "tiny-quality.card.json")
    f = analyzer.analyze(retina_path.read_bytes())
    assert f.quality.method.startswith("tiny-quality:0.0.1")
    assert {"p_gradable", "p_blur", "coverage"} <= set(f.quality.measures)
    assert [m.name for m in f.models] == ["tiny-grader", "tiny-quality"]
    # The model's threshold takes part in the decision where the classic measures are borderline (the tiny model's
    # own verdict is arbitrary): with a sharpness threshold just below the photograph's, moved to either end, it
    # decides for the same photograph, and the referral follows. With the default rules retina.jpg is a clear
    # classic pass, which stands whatever the model says.
    qm = analyzer.quality_model
    assert qm is not None
    sharpness = f.quality.measures["sharpness"]
    for rules, threshold, gradable in ((QualityRules(sharpness_min=sharpness / 1.1), 0.0, True),
                                       (QualityRules(sharpness_min=sharpness / 1.1), 1.0, False),
                                       (QualityRules(), 1.0, True)):
        op = qm.card.operating_points[0].model_copy(update={"threshold": threshold})
        analyzer.quality_model = dataclasses.replace(qm, card=qm.card.model_copy(update={"operating_points": (op,)}))
        analyzer.rules = rules
        g = analyzer.analyze(retina_path.read_bytes())
        assert g.quality.gradable is gradable and (g.referable_dr.value is None) is (not gradable)  # type: ignore[union-attr]
        assert g.quality.measures["p_gradable"] == f.quality.measures["p_gradable"]
    with pytest.raises(CardError):  # a grader offered as the quality model
        Analyzer.load(tiny_export / "tiny-grader.card.json", quality=tiny_export / "tiny-grader.card.json")


def test_the_model_vetoes_a_clear_classic_pass_only_for_its_trusted_reasons() -> None:
    card = _card(threshold=0.5)
    clear = _classic(score=0.99)
    for reason, at in MODEL_VETO.items():
        sure = combine(_probs(0.05, **{reason: at}), card, clear)
        assert not sure.gradable and sure.reasons == [reason]
        assert sure.score == pytest.approx(sure.measures["model_score"], abs=1e-4) and sure.score < 0.5
        unsure = combine(_probs(0.05, **{reason: at - 0.05}), card, clear)
        assert unsure.gradable  # below its veto line the clear classic pass stands
    # Haze is not a veto reason: raw camera photographs look hazy to the model.
    assert "haze" not in MODEL_VETO and combine(_probs(0.01, haze=0.99), card, clear).gradable
    # A veto reason the model is sure of while it still finds the photograph gradable overall changes nothing.
    assert combine(_probs(0.9, uneven=0.9), card, clear).gradable
