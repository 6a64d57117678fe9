"""A grader's learning curve against the amount of training data, and what it says about more data.

    python -m training.data_curve runs/scale-25/last.pt runs/scale-50/last.pt runs/real-grader/last.pt \\
        [--views 1] [--target-kappa 0.70 --target-auc 0.88] [--out docs/real-grader-data-curve.png]

Each checkpoint is a grader trained with the same recipe on a different ``data.train_fraction`` of the same
training patients (the validation patients do not depend on it, :func:`training.data.split_by_patient`). Every
one is graded on that one validation split, with ``--views`` test-time views (default: those it was trained with),
and the curve gets, per checkpoint: the training photographs and patients, QWK of the most probable grade,
referable AUC (each with its image-bootstrap 95 % interval), and the served grade rule's patient-grouped
cross-validated QWK (:func:`training.grade_rule.grade_rule`).

A power law in the error, ``1 - metric = a * n^b`` (least squares on the logarithms; the usual form of a learning
curve in the amount of data), is fitted to each metric over the checkpoints and extrapolated to the number of
training photographs at which it would reach its target. Learning curves flatten as the error nears what the
labels allow, so with three or more amounts of data the law through the two largest alone (the last stretch's
slope) is extrapolated as well: the more conservative of the two. Both are extrapolations from a few points, each
with the interval it has: the command prints them as such, and refuses checkpoints that were not validated on the
same photographs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from models.architectures.views import ViewAveraged
from training.checkpoint import load_checkpoint
from training.grade_rule import grade_rule
from training.metrics import grader_intervals, grader_metrics
from training.tasks import get_task
from training.tasks.grader import predict_probabilities

#: The learning-curve metrics: the :class:`CurvePoint` field, its label on the figure.
METRICS = (("quadratic_weighted_kappa", "QWK (most probable grade)"),
           ("referable_auc", "referable-DR AUC"),
           ("grade_rule_kappa_cv", "QWK (served grade rule, cross-validated)"))
#: The command's default goal of each metric.
TARGETS = {"quadratic_weighted_kappa": 0.70, "referable_auc": 0.88, "grade_rule_kappa_cv": 0.70}


@dataclass(frozen=True)
class CurvePoint:
    """One checkpoint's place on the curve: how much it learnt from, and what it scored on the validation split
    (``grade_rule_kappa_cv``: the QWK of cut-points fitted on other validation patients, whether or not a card
    would keep the rule)."""

    checkpoint: str
    train_fraction: float
    train_photographs: int
    train_patients: int
    views: int
    quadratic_weighted_kappa: float
    quadratic_weighted_kappa_ci: tuple[float, float]
    referable_auc: float
    referable_auc_ci: tuple[float, float]
    grade_rule_kappa_cv: float


@dataclass(frozen=True)
class PowerLaw:
    """``1 - metric = exp(log_a) * n ** exponent`` fitted over the curve's points."""

    log_a: float
    exponent: float

    def metric_at(self, n: float) -> float:
        return 1.0 - math.exp(self.log_a) * n ** self.exponent

    def photographs_for(self, target: float) -> float:
        """Training photographs at which the fitted metric reaches ``target``; ``inf`` when the fit does not
        improve with data (exponent ≥ 0), improves too slowly to say (beyond floating point), or the target is 1 or
        more."""
        if self.exponent >= 0.0 or target >= 1.0:
            return math.inf
        try:
            return math.exp((math.log(1.0 - target) - self.log_a) / self.exponent)
        except OverflowError:
            return math.inf


def fit_power_law(photographs: Sequence[int], values: Sequence[float]) -> PowerLaw:
    """Least-squares line through ``log(1 - value)`` against ``log(photographs)``; needs two distinct sizes
    and every value below 1."""
    n = np.asarray(photographs, float)
    v = np.asarray(values, float)
    if len(np.unique(n)) < 2:
        raise ValueError("a learning curve needs checkpoints trained on at least two amounts of data")
    if np.any(v >= 1.0):
        raise ValueError("a metric of 1 or more has no error to fit")
    exponent, log_a = np.polyfit(np.log(n), np.log(1.0 - v), 1)
    return PowerLaw(float(log_a), float(exponent))


def measure(checkpoint: Path, views: int | None) -> tuple[CurvePoint, list[str]]:
    """Grade the checkpoint's validation split; the point and the validation photographs (to compare splits)."""
    model, cfg, _ = load_checkpoint(checkpoint)
    if cfg.task != "dr-grading":
        raise ValueError(f"{checkpoint} is a {cfg.task} checkpoint; the learning curve is the DR grader's")
    task = get_task(cfg.task)
    train, val = task.split(cfg, verbose=False)
    n_views = views or cfg.test_time_views
    ds = task.dataset(val, cfg, train=False, desc=f"preprocess {checkpoint.parent.name}")
    probs, labels = predict_probabilities(ViewAveraged(model, n_views), DataLoader(ds, batch_size=32))
    m = grader_metrics(probs, labels)
    if "referable_auc" not in m:
        raise ValueError(f"{checkpoint}: its validation split needs referable and non-referable photographs")
    ci = grader_intervals(probs, labels)
    _, rule = grade_rule(probs, labels, [r.group for r in val], where=str(checkpoint))
    point = CurvePoint(
        checkpoint=str(checkpoint), train_fraction=cfg.data.train_fraction, train_photographs=len(train),
        train_patients=len({r.group for r in train}), views=n_views,
        quadratic_weighted_kappa=m["quadratic_weighted_kappa"],
        quadratic_weighted_kappa_ci=(ci["quadratic_weighted_kappa_ci95_low"], ci["quadratic_weighted_kappa_ci95_high"]),
        referable_auc=m["referable_auc"], referable_auc_ci=(ci["referable_auc_ci95_low"], ci["referable_auc_ci95_high"]),
        grade_rule_kappa_cv=rule["quadratic_weighted_kappa_grade_rule_cv"])
    return point, sorted(str(r.image) for r in val)


def plot(points: Sequence[CurvePoint], fits: Curve, targets: dict[str, float], out: Path) -> None:
    """One panel per metric: the points with their intervals, the fitted power law to past the target, the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(5.2 * len(METRICS), 4.2))
    n = np.array([p.train_photographs for p in points], float)
    for ax, (key, label) in zip(axes, METRICS):
        ys = np.array([getattr(p, key) for p in points], float)
        ci = f"{key}_ci"  # the bootstrap interval, where the point has one
        if hasattr(points[0], ci):
            lo = np.array([getattr(p, ci)[0] for p in points])
            hi = np.array([getattr(p, ci)[1] for p in points])
            ax.errorbar(n, ys, yerr=[ys - lo, hi - ys], fmt="o", color="C0", capsize=3, label="measured (95 % CI)")
        else:
            ax.plot(n, ys, "o", color="C0", label="measured")
        target = targets[key]
        ax.axhline(target, color="C3", linestyle=":", label=f"goal {target:g}")
        laws = [(fits.all[key], "C1", "--", "power law, all points"),
                *([(fits.last[key], "C2", "-.", "the two largest only")] if key in fits.last else [])]
        needs = [law.photographs_for(target) for law, *_ in laws]
        finite = [x for x in needs if math.isfinite(x)]
        right = min(max(max(finite, default=0.0) * 1.3, n.max() * 2), n.max() * 1000)
        grid = np.geomspace(n.min() * 0.8, right, 100)
        for (law, colour, style, what), need in zip(laws, needs, strict=True):
            ax.plot(grid, [law.metric_at(g) for g in grid], style, color=colour,
                    label=f"{what} (exponent {law.exponent:.2f})")
            if math.isfinite(need) and need <= right:
                ax.axvline(need, color=colour, alpha=0.4)
                ax.annotate(f"≈{need:,.0f}", (need, target), textcoords="offset points", xytext=(4, -14),
                            fontsize=8, color=colour)
        ax.set_xscale("log")
        ax.set_xlabel("training photographs (log scale)")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("DR grader against the amount of training data (same validation patients; an extrapolation)",
                 fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


@dataclass(frozen=True)
class Curve:
    """Each metric's power law through ``all`` the points, and through the ``last`` two amounts of data only
    (present with three or more amounts: with two it is the same law)."""

    all: dict[str, PowerLaw]
    last: dict[str, PowerLaw]


def curve(points: Sequence[CurvePoint]) -> Curve:
    """The power laws of each metric over ``points`` (two or more amounts of data)."""
    sizes = [p.train_photographs for p in points]
    largest = sorted(set(sizes))[-2:]
    tail = [p for p in points if p.train_photographs in largest]
    return Curve(
        all={key: fit_power_law(sizes, [getattr(p, key) for p in points]) for key, _ in METRICS},
        last=({key: fit_power_law([p.train_photographs for p in tail], [getattr(p, key) for p in tail])
               for key, _ in METRICS} if len(set(sizes)) >= 3 else {}))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.data_curve", description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+", type=Path, help="grader checkpoints, one per amount of training data")
    ap.add_argument("--views", type=int, default=None, help="test-time views (default: each checkpoint's own)")
    ap.add_argument("--target-kappa", type=float, default=TARGETS["quadratic_weighted_kappa"])
    ap.add_argument("--target-auc", type=float, default=TARGETS["referable_auc"])
    ap.add_argument("--out", type=Path, default=None, help="the figure (PNG)")
    ap.add_argument("--json", type=Path, default=None, help="the points and fits as JSON")
    args = ap.parse_args(argv)
    targets = {"quadratic_weighted_kappa": args.target_kappa, "referable_auc": args.target_auc,
               "grade_rule_kappa_cv": args.target_kappa}
    try:
        for ck in args.checkpoints:
            if not ck.is_file():
                raise ValueError(f"checkpoint {ck} does not exist")
        measured = [measure(ck, args.views) for ck in args.checkpoints]
        if any(split != measured[0][1] for _, split in measured[1:]):
            raise ValueError("these checkpoints were validated on different photographs (another data folder, "
                             "val_fraction or seed): their points do not lie on one curve")
        points = sorted((p for p, _ in measured), key=lambda p: p.train_photographs)
        fits = curve(points)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for p in points:
        print(f"{p.train_photographs:6d} photographs ({p.train_patients} patients, {p.train_fraction:.0%}), "
              f"{p.views} view(s): QWK {p.quadratic_weighted_kappa:.3f} "
              f"[{p.quadratic_weighted_kappa_ci[0]:.3f}, {p.quadratic_weighted_kappa_ci[1]:.3f}], "
              f"AUC {p.referable_auc:.3f} [{p.referable_auc_ci[0]:.3f}, {p.referable_auc_ci[1]:.3f}], "
              f"grade rule (CV) {p.grade_rule_kappa_cv:.3f}   {p.checkpoint}")
    for key, label in METRICS:
        for law, what in ((fits.all.get(key), "all points"), (fits.last.get(key), "the two largest")):
            if law is not None:
                need = law.photographs_for(targets[key])
                where = f"~{need:,.0f} training photographs" if math.isfinite(need) else "never (no gain with data)"
                print(f"{label}, {what}: error ∝ n^{law.exponent:.2f}; {targets[key]:g} extrapolates to {where}")
    if args.out:
        plot(points, fits, targets, args.out)
        print(f"figure: {args.out}")
    if args.json:
        args.json.write_text(json.dumps({"points": [asdict(p) for p in points],
                                         "fits": {k: asdict(f) for k, f in fits.all.items()},
                                         "fits_two_largest": {k: asdict(f) for k, f in fits.last.items()},
                                         "targets": targets}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
