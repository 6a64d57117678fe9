"""training/fellow_eye.py: which photograph is whose fellow eye, and the rule fitted on validation patients, kept
only when it beats the photograph alone on patients it was not chosen on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datasets.readers.record import FundusRecord
from models.grading import with_fellow_eye
from training.fellow_eye import MIN_PATIENTS, fellow_eye_rule, fellow_indices
from training.metrics import quadratic_weighted_kappa


def _r(name: str, lat: str | None, patient: str | None) -> FundusRecord:
    return FundusRecord(image=Path(f"{name}.jpeg"), grade=0, laterality=lat, patient=patient,  # type: ignore[arg-type]
                        source="test")


def test_fellow_indices_pair_the_other_eye_of_the_same_patient() -> None:
    records = [_r("1_left", "L", "1"), _r("1_right", "R", "1"), _r("2_left", "L", "2"), _r("3", None, "3"),
               _r("4_right", "R", None), _r("1_left_b", "L", "1"), _r("5_right", "R", "5"), _r("5_left", "L", "5")]
    assert fellow_indices(records).tolist() == [1, 0, -1, -1, -1, 1, 7, 6]


def _probs_for(latent: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Class probabilities centred on a noisy reading of each photograph's latent severity."""
    reading = latent + rng.normal(0.0, noise, latent.shape)
    logits = -0.5 * (np.arange(5)[None, :] - reading[:, None]) ** 2
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def _patients(n: int, *, shared: bool, noise: float, seed: int = 0
              ) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """``n`` patients with both eyes (rows 2k, 2k+1): their grades share the patient's severity (``shared``)
    or not, and each photograph reads its grade with ``noise``."""
    rng = np.random.default_rng(seed)
    severity = rng.choice(5, n, p=[0.55, 0.15, 0.18, 0.07, 0.05]).astype(float)
    if shared:
        grades = np.clip(np.repeat(severity, 2) + rng.choice([-1, 0, 0, 0, 1], 2 * n), 0, 4)
    else:
        grades = rng.choice(5, 2 * n, p=[0.55, 0.15, 0.18, 0.07, 0.05]).astype(float)
    probs = _probs_for(grades, rng, noise)
    fellow = np.arange(2 * n) ^ 1  # 0<->1, 2<->3, ...
    return probs, grades.astype(int), [f"p{i // 2}" for i in range(2 * n)], fellow


@pytest.fixture
def two_weights(monkeypatch: pytest.MonkeyPatch) -> tuple[float, ...]:
    """Two of the weights only: each one tried costs six cut-point fits (seconds)."""
    import training.fellow_eye as fe

    monkeypatch.setattr(fe, "WEIGHTS", (0.2, 0.4))
    return fe.WEIGHTS


def test_a_fellow_eye_that_shares_the_disease_is_kept_with_honest_figures(two_weights: tuple[float, ...]) -> None:
    probs, labels, groups, fellow = _patients(200, shared=True, noise=1.2)
    rule, m = fellow_eye_rule(probs, labels, groups, fellow, where="toy split")
    assert rule is not None and rule.weight in two_weights and m["fellow_eye_weight"] == rule.weight
    assert m["fellow_eye_photographs"] == 400
    assert m["quadratic_weighted_kappa_fellow_eye_cv"] > m["quadratic_weighted_kappa_grade_rule_cv_paired"] + 0.03
    assert m["referable_auc_fellow_eye_cv"] > m["referable_auc_paired"]
    assert m["quadratic_weighted_kappa_fellow_eye_cv"] <= m["quadratic_weighted_kappa_fellow_eye_fitted"] + 1e-9
    assert list(rule.cutpoints) == sorted(rule.cutpoints)
    assert rule.chosen_on.startswith("toy split; of them the 400 photographs of 200 patients with both eyes")
    # The fitted kappa is the rule's own: its weight and cut-points on all the photographs.
    expected, _ = with_fellow_eye(probs, probs[fellow], rule.weight)
    assert quadratic_weighted_kappa(labels, np.digitize(expected, rule.cutpoints)) == pytest.approx(
        m["quadratic_weighted_kappa_fellow_eye_fitted"], abs=1e-3)


def test_an_unrelated_fellow_eye_is_not_kept(two_weights: tuple[float, ...]) -> None:
    probs, labels, groups, fellow = _patients(200, shared=False, noise=0.4)
    rule, m = fellow_eye_rule(probs, labels, groups, fellow, where="toy")
    assert rule is None
    assert m["quadratic_weighted_kappa_fellow_eye_cv"] <= m["quadratic_weighted_kappa_grade_rule_cv_paired"]


def test_too_few_patients_with_both_eyes_give_no_rule_and_no_figures() -> None:
    probs, labels, groups, fellow = _patients(MIN_PATIENTS - 1, shared=True, noise=1.2)
    assert fellow_eye_rule(probs, labels, groups, fellow, where="toy") == (None, {})
    # Photographs without a fellow eye do not count.
    probs, labels, groups, fellow = _patients(MIN_PATIENTS, shared=True, noise=1.2)
    fellow[:2] = -1
    assert fellow_eye_rule(probs, labels, groups, fellow, where="toy") == (None, {})


def test_the_command_refuses_a_split_without_enough_patients_with_both_eyes(
        tiny_research_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """The tiny research grader's validation split has a handful of patients: the command says why it cannot fit
    a rule, exits non-zero and leaves the card alone."""
    from training.fellow_eye import main

    cfg, export = tiny_research_run
    card = export / "tiny-research.card.json"
    before = card.read_bytes()
    assert main(["--config", str(cfg), "--card", str(card), "--write"]) == 1
    err = capsys.readouterr().err
    assert f"the rule needs {MIN_PATIENTS}" in err and "validation patients have photographs of both eyes" in err
    assert card.read_bytes() == before


def test_the_command_refuses_a_card_that_is_not_a_grader(tiny_research_run: tuple[Path, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from models.store import DEFAULT_DIR
    from training.fellow_eye import main

    cfg, _ = tiny_research_run
    assert main(["--config", str(cfg), "--card", str(DEFAULT_DIR / "lesion-detector.card.json")]) == 2
    assert "not a grader" in capsys.readouterr().err
    assert main(["--config", str(cfg), "--card", str(tmp_path / "missing.card.json")]) == 2
    assert "error:" in capsys.readouterr().err


def test_each_fold_is_predicted_by_a_choice_made_without_its_patients(monkeypatch: pytest.MonkeyPatch) -> None:
    """The nested cross-validation: every fold's weight and cut-points are chosen on the other folds' rows only
    (each row left out of exactly one choice), then the rule itself on all of them."""
    import training.fellow_eye as fe

    probs, labels, groups, fellow = _patients(60, shared=True, noise=1.2)
    seen: list[np.ndarray] = []
    real = fe._choose

    def spy(own: np.ndarray, other: np.ndarray, y: np.ndarray):  # type: ignore[no-untyped-def]
        seen.append(own.copy())
        return real(own, other, y)

    monkeypatch.setattr(fe, "WEIGHTS", (0.2,))
    monkeypatch.setattr("training.grade_rule.GRID_POINTS", 21)  # coarse fits: only who is fitted on matters
    monkeypatch.setattr(fe, "_choose", spy)
    fe.fellow_eye_rule(probs, labels, groups, fellow, where="toy")
    assert len(seen) == fe.FOLDS + 1 and len(seen[-1]) == len(labels)
    left_out = [{tuple(r) for r in probs} - {tuple(r) for r in chosen_on} for chosen_on in seen[:-1]]
    assert all(left_out) and sum(len(s) for s in left_out) == len(labels)  # a partition of the photographs
    for out in left_out:  # whole patients: both eyes of a patient leave together
        rows = [i for i, r in enumerate(probs) if tuple(r) in out]
        assert {groups[i] for i in rows} == {groups[i ^ 1] for i in rows}
