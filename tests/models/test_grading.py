"""models.grading.with_fellow_eye: an eye's expected grade and referable probability with the fellow eye's."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.grading import logit, with_fellow_eye

OWN = np.array([0.7, 0.2, 0.1, 0.0, 0.0])        # E = 0.4, P(ref) = 0.1
FELLOW = np.array([0.1, 0.1, 0.3, 0.3, 0.2])     # E = 2.4, P(ref) = 0.8


def test_the_fellow_eye_adds_its_weight_on_the_expected_grade_and_the_referable_logit() -> None:
    expected, p_ref = with_fellow_eye(OWN, FELLOW, 0.25)
    assert float(expected) == pytest.approx(0.75 * 0.4 + 0.25 * 2.4)
    z = 0.75 * math.log(0.1 / 0.9) + 0.25 * math.log(0.8 / 0.2)
    assert float(p_ref) == pytest.approx(1 / (1 + math.exp(-z)))


def test_the_own_photograph_weighs_more_below_one_half_and_as_much_at_it() -> None:
    e_own, p_own = with_fellow_eye(OWN, FELLOW, 0.4)
    e_fel, p_fel = with_fellow_eye(FELLOW, OWN, 0.4)
    assert e_own < e_fel and p_own < p_fel  # each eye keeps more of its own evidence
    assert with_fellow_eye(OWN, FELLOW, 0.5) == pytest.approx(with_fellow_eye(FELLOW, OWN, 0.5))


def test_batches_and_certain_photographs() -> None:
    certain = np.array([[1.0, 0, 0, 0, 0], [0, 0, 0, 0, 1.0]])
    expected, p_ref = with_fellow_eye(certain, certain[::-1], 0.3)
    assert expected.shape == p_ref.shape == (2,) and np.isfinite(p_ref).all()  # 0 and 1 are clipped, not inf
    assert expected == pytest.approx([1.2, 2.8])
    assert float(logit(1.0)) == pytest.approx(math.log((1 - 1e-6) / 1e-6))


@pytest.mark.parametrize("weight", [0.0, -0.1, 0.51, 1.0])
def test_a_weight_outside_the_open_half_is_refused(weight: float) -> None:
    with pytest.raises(ValueError, match="fellow-eye weight"):
        with_fellow_eye(OWN, FELLOW, weight)


def test_grade_at_counts_the_cutpoints_at_or_below_and_grade_from_uses_it() -> None:
    from models.grading import expected_grade, grade_at, grade_from

    cuts = (0.5, 1.5, 2.5, 3.5)
    assert grade_at(np.array([0.0, 0.5, 1.49, 3.5, 4.0]), cuts).tolist() == [0, 1, 1, 4, 4]
    probs = np.array([OWN, FELLOW])
    assert grade_from(probs, cuts).tolist() == grade_at(expected_grade(probs), cuts).tolist() == [0, 2]
