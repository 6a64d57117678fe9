"""analysis.study: per-eye and per-patient outcome rules (the worse eye decides; ungradable never reassures)."""

from __future__ import annotations

import pytest

import numpy as np

from analysis.findings import DrGrade, Findings, ImageInfo, ModelRef, Quality, ReferableDr, Saliency
from analysis.study import eye_results, patient_result
from models.card import FellowEyeRule
from models.grading import referable_probability, with_fellow_eye


def _f(lat: str | None, grade: int, p_ref: float, *, gradable: bool = True, threshold: float = 0.5,
       probs: list[float] | None = None) -> Findings:
    if probs is None:
        probs = [0.0] * 5
        probs[grade] = 1.0
    value = None if not gradable else p_ref >= threshold
    return Findings(
        request_id="r", disclaimer="synthetic", image=ImageInfo(source="jpeg", width=8, height=8, laterality=lat),
        quality=Quality(gradable=gradable, score=0.9 if gradable else 0.1, reasons=[] if gradable else ["blur"],
                        method="test"),
        dr_grade=DrGrade(grade=grade, label=f"g{grade}", probabilities=probs),
        referable_dr=ReferableDr(value=value, probability=p_ref, operating_point=threshold),
        saliency=Saliency(target_grade=1, heatmap_png="", overlay_png=""),
        models=[ModelRef(name="m", version="1", sha256="0" * 64, provider="cpu")], timing_ms={},
    )


def test_worse_eye_decides() -> None:
    images = [_f("R", 1, 0.2), _f("L", 3, 0.9), _f("L", 2, 0.7)]
    eyes = eye_results(images)
    assert [e.laterality for e in eyes] == ["R", "L"]
    left = eyes[1]
    assert left.images == [1, 2] and left.dr_grade == 3 and left.referable is True
    assert left.photograph_grade == 3 and left.fellow_eye_weight is None  # no rule: each eye on its own
    assert left.referable_probability == pytest.approx(0.9)
    p = patient_result(images, eyes)
    assert p.referable is True and p.decided_by == "L" and "left eye" in p.reason


def test_both_eyes_clear_is_not_referable() -> None:
    images = [_f("R", 0, 0.1), _f("L", 1, 0.3)]
    p = patient_result(images, eye_results(images))
    assert p.referable is False and p.decided_by is None


def test_an_ungradable_eye_never_reassures() -> None:
    images = [_f("R", 0, 0.1), _f("L", 0, 0.1, gradable=False)]
    eyes = eye_results(images)
    assert eyes[1].gradable is False and eyes[1].referable is None and eyes[1].dr_grade is None
    p = patient_result(images, eyes)
    assert p.referable is None and "left eye" in p.reason and "insufficient image quality" in p.reason


def test_ungradable_image_is_ignored_when_the_eye_has_a_gradable_one() -> None:
    images = [_f("R", 4, 0.99, gradable=False), _f("R", 0, 0.1)]
    eye = eye_results(images)[0]
    assert eye.gradable and eye.dr_grade == 0 and eye.referable is False


def test_referable_eye_decides_even_if_the_other_is_ungradable() -> None:
    images = [_f("R", 2, 0.8), _f("L", 0, 0.1, gradable=False)]
    p = patient_result(images, eye_results(images))
    assert p.referable is True and p.decided_by == "R"


def test_images_without_laterality_still_count() -> None:
    images = [_f(None, 3, 0.95), _f("R", 0, 0.1)]
    p = patient_result(images, eye_results(images))
    assert p.referable is True and p.decided_by == "unknown"
    clear = [_f(None, 0, 0.1)]
    assert patient_result(clear, eye_results(clear)).referable is False


RULE = FellowEyeRule(weight=0.4, cutpoints=(0.5, 1.5, 2.5, 3.5), chosen_on="test")
CLEAR = [0.8, 0.15, 0.05, 0.0, 0.0]      # E 0.25, P(ref) 0.05
SEVERE = [0.0, 0.05, 0.15, 0.4, 0.4]     # E 3.15, P(ref) 0.95


def _pair(right: list[float], left: list[float], *, left_gradable: bool = True) -> list[Findings]:
    def one(lat: str, probs: list[float], gradable: bool = True) -> Findings:
        p = float(referable_probability(np.asarray(probs)))
        return _f(lat, int(np.argmax(probs)), p, probs=probs, gradable=gradable)
    return [one("R", right), one("L", left, left_gradable)]


def test_with_both_eyes_gradable_the_fellow_eye_informs_each_eyes_grade() -> None:
    images = _pair(CLEAR, SEVERE)
    plain = eye_results(images)
    right, left = eye_results(images, fellow_eye=RULE)
    e_r, _ = with_fellow_eye(np.array(CLEAR), np.array(SEVERE), 0.4)
    e_l, _ = with_fellow_eye(np.array(SEVERE), np.array(CLEAR), 0.4)
    # The clear right eye's photograph alone is grade 0; with its severe fellow its expected grade is 1.41.
    assert right.photograph_grade == 0 and right.dr_grade == int(np.digitize(e_r, RULE.cutpoints)) == 1
    assert right.label == "Mild NPDR" and right.fellow_eye_weight == 0.4
    assert left.photograph_grade == 3 and left.dr_grade == int(np.digitize(e_l, RULE.cutpoints)) == 2
    assert left.label == "Moderate NPDR" and left.fellow_eye_weight == 0.4
    # The referral stays the photographs': same values and probabilities as without the rule.
    for combined, alone in zip((right, left), plain, strict=True):
        assert (combined.referable, combined.referable_probability) == (alone.referable, alone.referable_probability)
    assert (right.referable, left.referable) == (False, True)
    p = patient_result(images, [right, left])
    assert p.referable is True and p.decided_by == "L"
    assert [f.dr_grade.grade for f in images] == [0, 3]  # the photographs' own findings are untouched


def test_the_fellow_eye_is_not_used_when_an_eye_is_ungradable() -> None:
    right, left = eye_results(_pair(CLEAR, SEVERE, left_gradable=False), fellow_eye=RULE)
    assert right.fellow_eye_weight is None and right.dr_grade == right.photograph_grade == 0
    assert left.gradable is False and left.fellow_eye_weight is None


def test_each_eyes_worst_photograph_is_combined() -> None:
    """An eye with several photographs: its worst gradable one (highest shown grade, then highest P(ref)) meets
    the other eye's worst. The probabilities are chosen so that any other photograph gives another grade."""
    worst = [0.0, 0.1, 0.3, 0.6, 0.0]        # shown 2, P(ref) 0.9, E 2.5
    tied = [0.2, 0.5, 0.3, 0.0, 0.0]         # shown 2 too, P(ref) 0.3: loses the tie
    milder = [1.0, 0.0, 0.0, 0.0, 0.0]       # shown 1 (as a grade rule may), E 0
    hidden = [1.0, 0.0, 0.0, 0.0, 0.0]       # ungradable, shown 4: never combined, E 0
    fellow = [0.9, 0.1, 0.0, 0.0, 0.0]
    images = [_f("R", 2, 0.3, probs=tied), _f("R", 1, 0.0, probs=milder), _f("R", 2, 0.9, probs=worst),
              _f("R", 4, 1.0, probs=hidden, gradable=False), _f("L", 0, 0.1, probs=fellow),
              _f("L", 4, 1.0, probs=hidden, gradable=False)]
    right, left = eye_results(images, fellow_eye=RULE)
    e, _ = with_fellow_eye(np.array(worst), np.array(fellow), 0.4)
    assert right.photograph_grade == 2 and right.dr_grade == int(np.digitize(e, RULE.cutpoints)) == 2  # E 1.54
    for other in (tied, milder, hidden):  # any other photograph would have given another grade
        e_other, _ = with_fellow_eye(np.array(other), np.array(fellow), 0.4)
        assert int(np.digitize(e_other, RULE.cutpoints)) != right.dr_grade
    e, _ = with_fellow_eye(np.array(fellow), np.array(worst), 0.4)
    assert left.images == [4, 5] and left.dr_grade == int(np.digitize(e, RULE.cutpoints)) == 1  # E 1.06
    e_hidden, _ = with_fellow_eye(np.array(fellow), np.array(hidden), 0.4)
    assert int(np.digitize(e_hidden, RULE.cutpoints)) != left.dr_grade


def test_an_eye_its_photographs_do_not_refer_keeps_a_grade_below_2() -> None:
    """Cut-points low enough to put the clear eye's combined grade (E 1.41) at 3: it is shown 1, as its own
    photograph does not refer it; the referred severe eye keeps its combined grade."""
    low = FellowEyeRule(weight=0.4, cutpoints=(0.5, 1.0, 1.4, 3.5), chosen_on="test")
    right, left = eye_results(_pair(CLEAR, SEVERE), fellow_eye=low)
    assert right.referable is False and right.dr_grade == 1 and right.label == "Mild NPDR"
    e, _ = with_fellow_eye(np.array(SEVERE), np.array(CLEAR), 0.4)
    assert left.referable is True and left.dr_grade == int(np.digitize(e, low.cutpoints)) == 3


@pytest.mark.parametrize("case", ["right ungradable", "left missing", "left only", "no laterality beside both"])
def test_the_rule_needs_both_eyes_gradable(case: str) -> None:
    r, l_ = _pair(CLEAR, SEVERE)
    images = {
        "right ungradable": [r.model_copy(update={"quality": Quality(gradable=False, score=0.1, reasons=["blur"],
                                                                      method="test")}), l_],
        "left missing": [r],
        "left only": [l_],
        "no laterality beside both": [r, _f(None, 4, 1.0, probs=[0, 0, 0, 0, 1.0]), l_],
    }[case]
    eyes = eye_results(images, fellow_eye=RULE)
    combined = [e for e in eyes if e.fellow_eye_weight is not None]
    if case == "no laterality beside both":
        # The unlabelled photograph is nobody's fellow: each eye is combined with the other eye's photograph.
        assert len(combined) == 2 and eyes[0].images == [0] and eyes[1].images == [2]
        e, _ = with_fellow_eye(np.array(CLEAR), np.array(SEVERE), 0.4)
        assert eyes[0].dr_grade == int(np.digitize(e, RULE.cutpoints))
    else:
        assert combined == [] and all(e.dr_grade == e.photograph_grade for e in eyes)
