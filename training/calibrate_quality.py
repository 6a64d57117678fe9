"""Calibrate the service's classic quality gate (:mod:`analysis.quality`) on synthetic photographs whose
artefacts and gradability are known (:mod:`datasets.synthetic.quality`).

    python -m training.calibrate_quality --count 600 --seed 7 [--size 768] [--out runs/quality-gate]

Six measures each reject on their own, so their false rejections add up: each threshold is therefore set so
that ``--pass-rate`` (99 %) of the gradable photographs pass that measure, or at the best separation
(Youden's J) of the photographs its target artefacts spoilt from the gradable ones when that is more lenient.
The field coverage is capped at :data:`COVERAGE_CAP`: real cameras' masks routinely cut the top and bottom
of the field, and such photographs are gradable. Sharpness is raised to :data:`REAL_SHARPNESS_MIN`, the line
people draw on real photographs. The rules are then scored on a second, independent sample:
sensitivity/specificity for "ungradable", the ROC AUC of the gate's score and the recall per artefact.
Writes ``report.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from datasets.synthetic import quality as artefacts
from datasets.synthetic.fundus import render_fundus
from models.preprocess import locate_field
from analysis.quality import QualityMeasures, QualityRules, assess, measure

#: Which synthetic artefacts each gate measure is meant to catch ("field" loss has several causes).
TARGETS: dict[str, tuple[str, ...]] = {
    "coverage": ("off_centre", "cut_field", "lid_shadow", "uneven_illumination"),
    "brightness": ("underexposed",),
    "clipped": ("overexposed",),
    "sharpness": ("blur", "jpeg_artefacts"),
    "contrast": ("haze",),
    "illumination": ("uneven_illumination", "lid_shadow"),
}
#: ``True`` when a *low* value of the measure means bad quality.
LOW_IS_BAD = {"coverage": True, "brightness": True, "clipped": False, "sharpness": True, "contrast": True,
              "illumination": False}
#: Normal camera masks hide up to ~15 % of the field disc (top/bottom chords on 4:3 sensors).
COVERAGE_CAP = 0.85
#: Fine over coarse detail below which people grading real photographs call them ungradable: EyeQ "Reject"
#: EyePACS photographs mostly fall below it, "Good" ones above (python -m training.quality_real). The synthetic
#: generator's defocus threshold is milder, so its fit alone would pass most of the real rejects.
REAL_SHARPNESS_MIN = 0.40
RULE_NAMES = {"coverage": "coverage_min", "brightness": "brightness_min", "clipped": "clipped_max",
              "sharpness": "sharpness_min", "contrast": "contrast_min", "illumination": "illumination_max"}


@dataclass(frozen=True)
class Sample:
    """One synthetic photograph's measures and its truth."""

    measures: QualityMeasures
    gradable: bool
    reasons: tuple[str, ...]


def make_samples(count: int, seed: int, size: int, p_degraded: float = 0.6) -> list[Sample]:
    """Render ``count`` photographs with sampled artefacts (JPEG encoded as the writer would) and measure them."""
    out = []
    for i in tqdm(range(count), desc="render + measure", unit="img"):
        rng = np.random.default_rng([seed, i])
        fundus = render_fundus(rng, grade=int(rng.integers(0, 5)), laterality="LR"[i % 2], size=size)
        plan = artefacts.sample_plan(rng, p_degraded=p_degraded)
        field = locate_field(fundus.image)
        img, _ = artefacts.apply(fundus.image, plan, rng, field=field)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, artefacts.jpeg_quality(plan)])
        assert ok
        rgb = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        truth = artefacts.judge(plan)
        out.append(Sample(measure(rgb), truth.gradable, truth.reasons))
    return out


def _youden_threshold(good: np.ndarray, bad: np.ndarray, low_is_bad: bool) -> float:
    """The threshold maximising sensitivity + specificity for flagging ``bad`` against ``good``."""
    values = np.unique(np.concatenate([good, bad]))
    best, best_j = float(values[0]), -1.0
    for t in values:
        sens = float(np.mean(bad < t)) if low_is_bad else float(np.mean(bad > t))
        spec = float(np.mean(good >= t)) if low_is_bad else float(np.mean(good <= t))
        if sens + spec - 1 > best_j:
            best, best_j = float(t), sens + spec - 1
    return best


def fit_rules(samples: list[Sample], pass_rate: float = 0.99) -> QualityRules:
    """One threshold per measure (see the module docstring)."""
    clean = [s for s in samples if s.gradable]
    values: dict[str, float] = {}
    for name, targets in TARGETS.items():
        bad = [s for s in samples if any(r in targets for r in s.reasons)]
        if not bad or not clean:
            continue
        good_v = np.array([getattr(s.measures, name) for s in clean])
        bad_v = np.array([getattr(s.measures, name) for s in bad])
        youden = _youden_threshold(good_v, bad_v, LOW_IS_BAD[name])
        if LOW_IS_BAD[name]:
            t = min(youden, float(np.quantile(good_v, 1.0 - pass_rate)))
        else:
            t = max(youden, float(np.quantile(good_v, pass_rate)))
        if name == "coverage":
            t = min(t, COVERAGE_CAP)
        if name == "sharpness":
            t = max(t, REAL_SHARPNESS_MIN)
        values[RULE_NAMES[name]] = round(t, 4)
    return QualityRules(**values)


def score(samples: list[Sample], rules: QualityRules) -> dict[str, float]:
    """Sensitivity/specificity of "ungradable", ROC AUC of the gate's score, per-artefact recall."""
    import torch
    from torchmetrics.functional.classification import binary_auroc

    verdicts = [assess(s.measures, rules) for s in samples]
    bad = np.array([not s.gradable for s in samples])
    flagged = np.array([not v.gradable for v in verdicts])
    report = {
        "n": float(len(samples)), "ungradable": float(bad.sum()),
        "sensitivity": float(flagged[bad].mean()), "specificity": float((~flagged[~bad]).mean()),
        "auc": float(binary_auroc(torch.tensor([1.0 - v.score for v in verdicts]), torch.tensor(bad.astype(int)))),
    }
    for a in artefacts.ARTEFACTS:
        idx = [i for i, s in enumerate(samples) if a in s.reasons]
        if idx:
            report[f"recall_{a}"] = float(flagged[idx].mean())
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.calibrate_quality", description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=600)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--size", type=int, default=768)
    p.add_argument("--pass-rate", type=float, default=0.99, help="gradable photographs passing each measure")
    p.add_argument("--out", type=Path, default=Path("runs/quality-gate"))
    args = p.parse_args(argv)
    if args.count < 20 or args.size < 256:
        p.error("--count must be >= 20 and --size >= 256")
    fit = make_samples(args.count, args.seed, args.size)
    rules = fit_rules(fit, args.pass_rate)
    test = make_samples(args.count, args.seed + 1, args.size)
    report = {"rules": asdict(rules), "held_out": score(test, rules),
              "default_rules_held_out": score(test, QualityRules())}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
