"""Per-eye and per-patient screening outcome of a study (several photographs of one patient).

Screening programmes report per eye and per patient; the rules implemented here:

* an image counts only if it is gradable (quality gate) — an ungradable image never makes an eye "not
  referable";
* **per eye**: the worst gradable image decides: the highest ICDR grade, and referable if any gradable image
  of that eye is referable (its probability is the largest among them); ``referable`` is ``null`` when no
  image of the eye is gradable;
* **the fellow eye**, when both eyes have a gradable image and the grader's card has a fellow-eye rule
  (:class:`models.card.FellowEyeRule`, fitted by :mod:`training.fellow_eye`): each eye's grade combines the
  expected grade of its worst photograph with the other eye's worst (:func:`models.grading.with_fellow_eye`),
  cut at the rule's cut-points. Diabetic retinopathy affects both eyes and one photograph's grade is noisy; the
  eye's own photograph still weighs more, and ``photograph_grade`` keeps what it showed alone. An eye its own
  photographs do not refer keeps a grade below 2. The referral is not combined: on the validation patients the
  combined probability ranked eyes better, but per patient it was no clear gain (more specific at a patient
  sensitivity of 0.91, less at 0.95) and, at its own per-eye operating point, less sensitive than today's rule
  (README, "Real photographs"); a screening referral should not trade sensitivity for a grade's agreement;
* **per patient**: referable if any eye (or any image of unknown laterality) is referable — the worse eye
  decides; not referable only when every eye photographed has a gradable, non-referable result; otherwise
  ``null`` with the reason (insufficient quality).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from analysis.findings import EyeResult, Findings, PatientResult
from models.card import ICDR_LABELS, FellowEyeRule
from models.grading import REFERABLE_MIN_GRADE, grade_at, with_fellow_eye

_EYES: tuple[Literal["L", "R"], ...] = ("R", "L")
_EYE_NAMES = {"R": "right eye", "L": "left eye", "unknown": "image(s) without laterality"}


def eye_results(images: Sequence[Findings], *, fellow_eye: FellowEyeRule | None = None,
                classes: Sequence[str] = ICDR_LABELS) -> list[EyeResult]:
    """One :class:`EyeResult` per laterality present among ``images`` (right eye first, as charts read).
    ``fellow_eye``: the grader card's rule, applied when both eyes have a gradable image (module docstring);
    ``classes`` name its grades."""
    results = []
    for eye in _EYES:
        idx = [i for i, f in enumerate(images) if f.image.laterality == eye]
        if idx:
            results.append(_eye(eye, idx, images))
    if fellow_eye is None or sum(e.gradable for e in results) < 2:
        return results
    right, left = (_worst(_gradable(e.images, images), images) for e in results)
    return [_with_fellow(results[0], images[right], images[left], fellow_eye, classes),
            _with_fellow(results[1], images[left], images[right], fellow_eye, classes)]


def _gradable(idx: list[int], images: Sequence[Findings]) -> list[int]:
    return [i for i in idx if images[i].quality.gradable]


def _worst(gradable: list[int], images: Sequence[Findings]) -> int:
    return max(gradable, key=lambda i: (images[i].dr_grade.grade, _p_ref(images[i])))


def _with_fellow(result: EyeResult, own: Findings, fellow: Findings, rule: FellowEyeRule,
                 classes: Sequence[str]) -> EyeResult:
    """``result`` with its grade combined from its worst photograph ``own`` and the other eye's ``fellow``."""
    expected, _ = with_fellow_eye(np.asarray(own.dr_grade.probabilities, dtype=np.float64),
                                  np.asarray(fellow.dr_grade.probabilities, dtype=np.float64), rule.weight)
    grade = int(grade_at(expected, rule.cutpoints))
    if result.referable is False:
        # The fellow eye never shows a referable grade on an eye its own photographs do not refer ("2 - Moderate
        # NPDR, do not refer" would contradict itself). A photograph alone cannot: below the operating point its
        # expected grade is far under the grade-2 cut-point. On the validation patients no eye was capped.
        grade = min(grade, REFERABLE_MIN_GRADE - 1)
    return result.model_copy(update={"dr_grade": grade, "label": classes[grade], "fellow_eye_weight": rule.weight})


def _eye(eye: Literal["L", "R"], idx: list[int], images: Sequence[Findings]) -> EyeResult:
    gradable = _gradable(idx, images)
    if not gradable:
        return EyeResult(laterality=eye, images=idx, gradable=False)
    worst = _worst(gradable, images)
    refs = [images[i].referable_dr for i in gradable if images[i].referable_dr is not None]
    referable = any(r.value for r in refs) if refs else None
    return EyeResult(
        laterality=eye, images=idx, gradable=True, dr_grade=images[worst].dr_grade.grade,
        label=images[worst].dr_grade.label, referable=referable,
        referable_probability=max(r.probability for r in refs) if refs else None,
        photograph_grade=images[worst].dr_grade.grade,
    )


def _p_ref(f: Findings) -> float:
    return f.referable_dr.probability if f.referable_dr is not None else 0.0


def patient_result(images: Sequence[Findings], eyes: Sequence[EyeResult]) -> PatientResult:
    """The patient-level referral from the per-eye results (and images of unknown laterality)."""
    groups: dict[str, bool | None] = {e.laterality: e.referable for e in eyes}
    unknown = [f for f in images if f.image.laterality is None]
    if unknown:
        graded = [f.referable_dr.value for f in unknown if f.quality.gradable and f.referable_dr is not None]
        groups["unknown"] = any(graded) if graded else None
    referable = [g for g, v in groups.items() if v is True]
    if referable:
        worst = max(referable, key=lambda g: _group_probability(g, eyes, unknown))
        return PatientResult(referable=True, decided_by=worst,  # type: ignore[arg-type]
                             reason=f"referable diabetic retinopathy in the {_EYE_NAMES[worst]}")
    ungraded = [g for g, v in groups.items() if v is None]
    if ungraded:
        names = " and ".join(_EYE_NAMES[g] for g in ungraded)
        return PatientResult(referable=None, decided_by=None,
                             reason=f"insufficient image quality for the {names}: re-photograph, or refer per the "
                                    "programme's protocol for ungradable photographs")
    return PatientResult(referable=False, decided_by=None,
                         reason="no referable diabetic retinopathy in any gradable photograph")


def _group_probability(group: str, eyes: Sequence[EyeResult], unknown: Sequence[Findings]) -> float:
    if group == "unknown":
        return max((f.referable_dr.probability for f in unknown if f.referable_dr is not None), default=0.0)
    return next((e.referable_probability or 0.0 for e in eyes if e.laterality == group), 0.0)
