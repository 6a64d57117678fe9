"""training/grade_rule.py (and training.metrics.quadratic_weighted_kappa, the one QWK): cut-points on the expected grade, fitted to maximise QWK and cross-validated by
patient; models.grading.grade_from applies them as serving does."""

from __future__ import annotations

import numpy as np
import pytest

from models.card import GradeRule
from models.grading import expected_grade, grade_from
from training.grade_rule import cross_validated_kappa, fit_cutpoints, grade_rule
from training.metrics import quadratic_weighted_kappa


def test_kappa_matches_the_textbook_values() -> None:
    y = np.array([0, 1, 2, 3, 4])
    assert quadratic_weighted_kappa(y, y) == pytest.approx(1.0)
    assert quadratic_weighted_kappa(y, np.zeros(5, int)) == pytest.approx(0.0)
    assert quadratic_weighted_kappa(y, 4 - y) == pytest.approx(-1.0)
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    assert quadratic_weighted_kappa(a, b) == pytest.approx(sklearn.cohen_kappa_score(a, b, weights="quadratic"), abs=1e-6)


def _overconfident(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A grader that puts most mass on grade 0 whatever the truth, but less of it the worse the eye: argmax
    says 0 nearly always, the expected grade still ranks the eyes."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(5, n, p=[0.6, 0.1, 0.2, 0.06, 0.04])
    probs = np.zeros((n, 5))
    for i, g in enumerate(labels):
        p0 = 0.9 - 0.12 * g + rng.normal(0, 0.03)
        probs[i, 0] = p0
        probs[i, g] += (1 - p0) * 0.7
        probs[i, :] += (1 - probs[i].sum()) / 5
    return probs, labels, [f"p{i // 2}" for i in range(n)]


def test_fitted_cutpoints_beat_argmax_and_hold_up_across_patients() -> None:
    probs, labels, groups = _overconfident()
    cuts, fitted = fit_cutpoints(expected_grade(probs), labels)
    assert list(cuts) == sorted(cuts) and 0 < cuts[0] < cuts[-1] < 4
    argmax = quadratic_weighted_kappa(labels, grade_from(probs))
    assert fitted > argmax + 0.3
    assert fitted - 0.1 < cross_validated_kappa(expected_grade(probs), labels, groups) <= fitted + 1e-9
    rule, metrics = grade_rule(probs, labels, groups, where="toy")
    assert rule is not None and rule.cutpoints == pytest.approx(cuts, abs=1e-4) and "cross-validated kappa" in rule.chosen_on
    assert metrics["quadratic_weighted_kappa_argmax"] == pytest.approx(argmax)


def test_grade_from_counts_the_cutpoints_at_or_below_the_expected_grade() -> None:
    probs = np.array([[1, 0, 0, 0, 0], [0.5, 0.5, 0, 0, 0], [0, 0, 0, 0, 1.0], [0.2, 0.2, 0.2, 0.2, 0.2]])
    assert grade_from(probs).tolist() == [0, 0, 4, 0]  # argmax (ties: the first)
    assert grade_from(probs, (0.5, 1.5, 2.5, 3.5)).tolist() == [0, 1, 4, 2]


def test_a_card_refuses_cutpoints_that_do_not_ascend() -> None:
    assert GradeRule(cutpoints=(0.6, 0.8, 1.5, 2.9), chosen_on="x").cutpoints[0] == 0.6
    with pytest.raises(ValueError):
        GradeRule(cutpoints=(0.6, 0.5, 1.5, 2.9), chosen_on="x")
    with pytest.raises(ValueError):
        GradeRule(cutpoints=(0.6, 0.8, 1.5, 4.5), chosen_on="x")


def test_too_little_data_gives_no_rule_rather_than_a_broken_one() -> None:
    probs = np.tile([0.2, 0.2, 0.2, 0.2, 0.2], (12, 1))  # one expected grade for every photograph
    rule, metrics = grade_rule(probs, np.array([0, 1, 2] * 4), [str(i) for i in range(12)], where="toy")
    assert rule is None and "quadratic_weighted_kappa_grade_rule_cv" in metrics


def test_the_command_refuses_a_card_that_is_not_a_grader(tiny_research_run: tuple, tmp_path, capsys) -> None:
    """The command shares its start with training.fellow_eye (training.grade_rule.card_on_validation)."""
    from models.store import DEFAULT_DIR
    from training.grade_rule import main

    cfg, _ = tiny_research_run
    assert main(["--config", str(cfg), "--card", str(DEFAULT_DIR / "image-quality.card.json")]) == 2
    assert "image-quality:" in capsys.readouterr().err
    assert main(["--config", str(cfg), "--card", str(tmp_path / "missing.card.json")]) == 2
    assert "error:" in capsys.readouterr().err
