"""The grader's grade rule: cut-points on the expected grade, chosen on the validation patients to maximise
quadratic weighted kappa (QWK), and an honest estimate of what they give on patients they were not chosen on.

    python -m training.grade_rule --config training/configs/real-grader.yaml \\
        --card models/default/dr-grader.card.json [--write]

Export (:class:`training.tasks.grader.GraderTask`) fits the rule for every grader it exports; this command fits
it for an exported card without retraining: it runs the card's ONNX file on the config's patient-disjoint
validation split, fits the cut-points on all of it, estimates their QWK by patient-grouped cross-validation
(:func:`cross_validated_kappa`: each fold's cut-points fitted on the other folds' patients) and, with
``--write``, puts the rule and both figures into the card (the ONNX file is unchanged).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from models.card import GradeRule, ModelCard, recipe_of
from models.grading import expected_grade, grade_at, grade_from
from training.metrics import quadratic_weighted_kappa

if TYPE_CHECKING:  # the grader task imports this module
    from datasets.readers.record import FundusRecord
    from training.config import TrainConfig
    from training.tasks.base import Task
    from training.tasks.grader import OnnxEvaluation

GRADES = 5  # ICDR 0-4
#: Cut-points start between the grades and move over this many quantiles of the expected grade.
GRID_POINTS = 201
SWEEPS = 4


def fit_cutpoints(expected: np.ndarray, labels: np.ndarray) -> tuple[tuple[float, float, float, float], float]:
    """Cut-points on ``expected`` grades maximising QWK against ``labels`` (coordinate ascent from the midpoints
    0.5/1.5/2.5/3.5 over quantiles of ``expected``), and that QWK."""
    cuts = np.array([0.5, 1.5, 2.5, 3.5])
    grid = np.unique(np.quantile(expected, np.linspace(0.0, 1.0, GRID_POINTS)))
    best = quadratic_weighted_kappa(labels, grade_at(expected, cuts))
    for _ in range(SWEEPS):
        for k in range(len(cuts)):
            lo = cuts[k - 1] if k > 0 else 0.0
            hi = cuts[k + 1] if k < len(cuts) - 1 else GRADES - 1.0
            for g in grid[(grid > lo) & (grid < hi)]:
                trial = cuts.copy()
                trial[k] = g
                kappa = quadratic_weighted_kappa(labels, grade_at(expected, trial))
                if kappa > best:
                    best, cuts = kappa, trial
    return (float(cuts[0]), float(cuts[1]), float(cuts[2]), float(cuts[3])), best


def cross_validated_kappa(expected: np.ndarray, labels: np.ndarray, groups: Sequence[str], *, folds: int = 5,
                          seed: int = 0) -> float:
    """QWK of cut-points on patients they were not fitted on: ``folds`` patient-grouped folds, each predicted
    with the cut-points fitted on the others."""
    groups_arr = np.asarray(groups)
    patients = np.random.default_rng(seed).permutation(np.unique(groups_arr))
    predicted = np.zeros(len(labels), int)
    for fold in np.array_split(patients, folds):
        test = np.isin(groups_arr, fold)
        cuts, _ = fit_cutpoints(expected[~test], labels[~test])
        predicted[test] = grade_at(expected[test], cuts)
    return quadratic_weighted_kappa(labels, predicted)


def grade_rule(probs: np.ndarray, labels: np.ndarray, groups: Sequence[str], *, where: str
               ) -> tuple[GradeRule | None, dict[str, float]]:
    """The rule fitted on ``probs``/``labels`` and the metrics that describe it: argmax QWK, the rule's QWK on
    the data it was fitted on (optimistic) and its patient-grouped cross-validated QWK. No rule (``None``: the
    card then shows the most probable grade) when the data cannot place four distinct cut-points (too few
    photographs or too few distinct expected grades), or when on patients they were not fitted on the cut-points
    do no better than the most probable grade."""
    e = expected_grade(probs)
    cuts, fitted = fit_cutpoints(e, labels)
    metrics = {
        "quadratic_weighted_kappa_argmax": quadratic_weighted_kappa(labels, grade_from(probs)),
        "quadratic_weighted_kappa_grade_rule_fitted": fitted,
        "quadratic_weighted_kappa_grade_rule_cv": cross_validated_kappa(e, labels, groups),
    }
    rounded = tuple(round(c, 4) for c in cuts)
    if (any(b <= a for a, b in zip(rounded, rounded[1:], strict=False))
            or metrics["quadratic_weighted_kappa_grade_rule_cv"] <= metrics["quadratic_weighted_kappa_argmax"]):
        return None, metrics
    rule = GradeRule(cutpoints=rounded,  # type: ignore[arg-type]
                     chosen_on=f"{where}: cut-points on the expected grade maximising quadratic weighted kappa; "
                               f"patient-grouped 5-fold cross-validated kappa "
                               f"{metrics['quadratic_weighted_kappa_grade_rule_cv']:.3f}")
    return rule, metrics


@dataclass(frozen=True)
class CardOnValidation:
    """What a command that re-measures an exported grader on its validation split starts from (the
    ``--config``/``--card``/``--write`` commands: this one and :mod:`training.fellow_eye`)."""

    card_path: Path
    write: bool
    card: ModelCard
    onnx: bytes
    cfg: TrainConfig
    task: Task
    val: list[FundusRecord]

    def where(self) -> str:
        """The validation split, described as the card's texts describe it."""
        return self.task.describe_validation(self.cfg, self.val)

    def finish(self, field: str, value: object, metrics: dict[str, float], what: str) -> int:
        """Print ``metrics``; with ``--write``, put ``value`` in the card's ``field`` and the metrics beside
        the card's (the ONNX file is unchanged) and say so. Returns the exit code, 0."""
        for k, v in metrics.items():
            print(f"  {k}: {v:.3f}")
        if self.write:
            update = {field: value, "metrics": {**self.card.metrics, **metrics}}
            self.card.model_copy(update=update).save(self.card_path)
            print(f"wrote {what} into {self.card_path}")
        return 0

    def predict(self) -> OnnxEvaluation:
        """The card's ONNX model on the validation split, preprocessed as serving does."""
        from training.tasks.grader import onnx_evaluate

        return onnx_evaluate(self.onnx, self.val, self.card.input.size, recipe=recipe_of(self.card))


def card_on_validation(argv: list[str] | None, *, prog: str, description: str) -> CardOnValidation | int:
    """Parse ``--config``, ``--card`` and ``--write``, verify the card's ONNX file and split the config's data
    as training did; an exit code (after an ``error:`` line) for a card that is unreadable, does not match its
    file, or is not a grader."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--config", type=Path, required=True, help="the grader's training config (its validation split)")
    p.add_argument("--card", type=Path, required=True, help="the exported grader's card")
    p.add_argument("--write", action="store_true", help="write the result and its figures into the card")
    args = p.parse_args(argv)
    from models.card import CardError, read_verified
    from training.config import load_config
    from training.tasks.registry import get_task

    try:
        card = ModelCard.load(args.card)
        onnx = read_verified(card, args.card.parent)
    except CardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if card.task != "dr-grading":
        print(f"error: {card.tag} is a {card.task} model, not a grader", file=sys.stderr)
        return 2
    cfg = load_config(args.config)
    task = get_task(cfg.task)
    _, val = task.split(cfg, verbose=False)
    return CardOnValidation(card_path=args.card, write=args.write, card=card, onnx=onnx, cfg=cfg, task=task,
                            val=val)


def main(argv: list[str] | None = None) -> int:
    opened = card_on_validation(argv, prog="python -m training.grade_rule", description=__doc__.split("\n")[0])
    if isinstance(opened, int):
        return opened
    card, val = opened.card, opened.val
    ev = opened.predict()
    rule, metrics = grade_rule(ev.probs, ev.labels, [r.group for r in val], where=opened.where())
    if rule is None:
        print(f"error: on {len(val)} validation photographs no cut-points beat the most probable grade "
              f"(cross-validated kappa {metrics['quadratic_weighted_kappa_grade_rule_cv']:.3f}, argmax "
              f"{metrics['quadratic_weighted_kappa_argmax']:.3f})", file=sys.stderr)
        return 1
    print(f"{card.tag} on {len(val)} validation photographs: cut-points {rule.cutpoints}")
    return opened.finish("grade_rule", rule, metrics, "the grade rule")


if __name__ == "__main__":
    sys.exit(main())
