"""The grader's fellow-eye rule: how a study's per-eye grade combines an eye's photograph with the patient's
other eye (:func:`models.grading.with_fellow_eye`), chosen on the validation patients, with an honest estimate
of what it gives on patients it was not chosen on.

    python -m training.fellow_eye --config training/configs/real-grader.yaml \\
        --card models/default/dr-grader.card.json [--write]

Diabetic retinopathy affects both eyes, and one photograph's grade is noisy (a 256-px copy, one grader per
photograph): the fellow eye is evidence about this one. The rule is a weight (from :data:`WEIGHTS`) and
cut-points on the combined expected grade, chosen to maximise quadratic weighted kappa (QWK). Its QWK on patients
it was not chosen on comes from patient-grouped cross-validation in which each fold's weight and cut-points are
chosen on the other folds. The rule is kept only when that QWK is above the grade rule's (the photograph alone)
on the same photographs. The referable AUC of the combined probability, cross-validated the same way, is
reported beside the photograph's; the referral itself is not combined (:mod:`analysis.study`).

Export (:class:`training.tasks.grader.GraderTask`) fits it for every grader whose validation split has both
eyes of enough patients; this command fits it for an exported card without retraining (like
:mod:`training.grade_rule`) and, with ``--write``, puts the rule and its figures into the card.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np

from datasets.readers.record import FundusRecord
from models.card import FellowEyeRule
from models.grading import expected_grade, grade_at, referable_probability, with_fellow_eye
from training.grade_rule import card_on_validation, cross_validated_kappa, fit_cutpoints
from training.metrics import quadratic_weighted_kappa, referable_auc

#: The fellow eye's weights tried (0.5 would give both eyes one result).
WEIGHTS = (0.1, 0.2, 0.3, 0.4)
#: Fewer validation patients with both eyes graded than this: no rule (its figures would be noise).
MIN_PATIENTS = 30
FOLDS = 5


def fellow_indices(records: Sequence[FundusRecord]) -> np.ndarray:
    """For each record, the index of a photograph of the same patient's other eye (the first in ``records``), or
    -1: no laterality, no patient, or no photograph of the other eye. Records without ``patient`` have no
    fellow (their file stem is not a patient). EyePACS has one photograph per eye; a study served with several
    combines each eye's worst (:mod:`analysis.study`)."""
    first: dict[tuple[str, str], int] = {}
    for i, r in enumerate(records):
        if r.patient is not None and r.laterality is not None:
            first.setdefault((r.patient, r.laterality), i)
    other = {"L": "R", "R": "L"}
    return np.array([first.get((r.patient, other[r.laterality]), -1)
                     if r.patient is not None and r.laterality is not None else -1 for r in records], dtype=np.int64)


def _auc(p_ref: np.ndarray, labels: np.ndarray) -> float:
    auc = referable_auc(p_ref, labels)
    return float("nan") if auc is None else auc


def _choose(own: np.ndarray, fellow: np.ndarray, labels: np.ndarray
            ) -> tuple[float, tuple[float, float, float, float], float]:
    """The weight (ties: the smaller) and cut-points maximising QWK on these photographs, and that QWK."""
    best: tuple[float, tuple[float, float, float, float], float] | None = None
    for w in WEIGHTS:
        cuts, kappa = fit_cutpoints(with_fellow_eye(own, fellow, w)[0], labels)
        if best is None or kappa > best[2] + 1e-12:
            best = (w, cuts, kappa)
    assert best is not None
    return best


def fellow_eye_rule(probs: np.ndarray, labels: np.ndarray, groups: Sequence[str], fellow: np.ndarray, *,
                    where: str, seed: int = 0) -> tuple[FellowEyeRule | None, dict[str, float]]:
    """The rule fitted on the photographs that have a fellow eye (``fellow`` from :func:`fellow_indices`) and
    the figures that describe it, all on those photographs: its patient-grouped cross-validated QWK and referable
    AUC (weight and cut-points re-chosen in every fold), and the photograph alone's (the grade rule's
    cross-validated QWK, the referable AUC). ``None`` (and no figures) when fewer than :data:`MIN_PATIENTS`
    patients have both eyes; ``None`` with the figures when the rule does not beat the photograph alone."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    groups_arr, fellow = np.asarray(groups), np.asarray(fellow)
    paired = np.flatnonzero(fellow >= 0)
    patients = np.unique(groups_arr[paired])
    if len(patients) < MIN_PATIENTS:
        return None, {}
    own, other, y, g = probs[paired], probs[fellow[paired]], labels[paired], groups_arr[paired]

    # Nested: each fold predicted by the weight and cut-points chosen on the other folds' patients.
    graded = np.zeros(len(y), np.int64)
    p_cv = np.zeros(len(y))
    for fold in np.array_split(np.random.default_rng(seed).permutation(patients), FOLDS):
        test = np.isin(g, fold)
        w, cuts, _ = _choose(own[~test], other[~test], y[~test])
        e, p = with_fellow_eye(own[test], other[test], w)
        graded[test], p_cv[test] = grade_at(e, cuts), p
    weight, cuts, fitted = _choose(own, other, y)
    _, p_ref = with_fellow_eye(own, other, weight)
    metrics = {
        "fellow_eye_photographs": float(len(y)),
        "fellow_eye_weight": weight,
        "quadratic_weighted_kappa_fellow_eye_fitted": fitted,
        "quadratic_weighted_kappa_fellow_eye_cv": quadratic_weighted_kappa(y, graded),
        "quadratic_weighted_kappa_grade_rule_cv_paired": cross_validated_kappa(expected_grade(own), y, g, seed=seed),
        "referable_auc_fellow_eye": _auc(p_ref, y),
        "referable_auc_fellow_eye_cv": _auc(p_cv, y),
        "referable_auc_paired": _auc(referable_probability(own), y),
    }
    beats = metrics["quadratic_weighted_kappa_fellow_eye_cv"] > metrics["quadratic_weighted_kappa_grade_rule_cv_paired"]
    rounded = tuple(round(c, 4) for c in cuts)
    if not beats or any(b <= a for a, b in zip(rounded, rounded[1:], strict=False)):
        return None, metrics
    rule = FellowEyeRule(
        weight=weight, cutpoints=rounded,  # type: ignore[arg-type]
        chosen_on=(f"{where}; of them the {len(y)} photographs of {len(patients)} patients with both eyes: weight and "
                   f"cut-points maximising quadratic weighted kappa; patient-grouped {FOLDS}-fold cross-validation "
                   f"(weight and cut-points chosen in each fold): kappa "
                   f"{metrics['quadratic_weighted_kappa_fellow_eye_cv']:.3f} against "
                   f"{metrics['quadratic_weighted_kappa_grade_rule_cv_paired']:.3f} for the photograph alone"))
    return rule, metrics


def main(argv: list[str] | None = None) -> int:
    opened = card_on_validation(argv, prog="python -m training.fellow_eye", description=__doc__.split("\n")[0])
    if isinstance(opened, int):
        return opened
    card, val = opened.card, opened.val
    fellow = fellow_indices(val)
    patients = len({val[i].group for i in np.flatnonzero(fellow >= 0)})
    if patients < MIN_PATIENTS:
        print(f"error: {patients} validation patients have photographs of both eyes with laterality; the rule needs "
              f"{MIN_PATIENTS} (a layout that names the eye, e.g. EyePACS <patient>_left/_right)", file=sys.stderr)
        return 1
    ev = opened.predict()
    rule, metrics = fellow_eye_rule(ev.probs, ev.labels, [r.group for r in val], fellow, where=opened.where())
    if rule is None:
        print("error: with the fellow eye the grade does not beat the photograph alone on patients it was not "
              f"chosen on (cross-validated kappa {metrics['quadratic_weighted_kappa_fellow_eye_cv']:.3f} against "
              f"{metrics['quadratic_weighted_kappa_grade_rule_cv_paired']:.3f})", file=sys.stderr)
        return 1
    print(f"{card.tag} on {int(metrics['fellow_eye_photographs'])} validation photographs with a fellow eye: "
          f"weight {rule.weight}, cut-points {rule.cutpoints}")
    return opened.finish("fellow_eye", rule, metrics, "the fellow-eye rule")


if __name__ == "__main__":
    sys.exit(main())
