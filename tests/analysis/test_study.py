"""analysis.study: per-eye and per-patient outcome rules (the worse eye decides; ungradable never reassures)."""

from __future__ import annotations

import pytest

from analysis.findings import DrGrade, Findings, ImageInfo, ModelRef, Quality, ReferableDr, Saliency
from analysis.study import eye_results, patient_result


def _f(lat: str | None, grade: int, p_ref: float, *, gradable: bool = True, threshold: float = 0.5) -> Findings:
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
