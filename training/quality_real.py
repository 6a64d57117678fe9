"""The service's quality gate on real photographs: figures per EyeQ class, raw DRIVE photographs, scikit-image's
``retina.jpg`` and held-out synthetic photographs, with the ROC of Reject vs Good, in one report folder.

    python -m training.quality_real [--real-dev ../shared/real-dev] [--card models/default/image-quality.card.json]
                                    [--no-model] [--synthetic data/synthetic-quality-test] [--report runs/quality-real]

The gate is the serving one (:func:`gate`: :func:`analysis.quality.measure` + :func:`~analysis.quality.assess`,
and with a model, its recipe's preprocessing + :func:`analysis.gradability.combine`), so these are the
verdicts ``POST /analyze`` returns. Writes ``report.json`` (every figure), ``roc.png`` and ``index.html``.

- EyeQ (``eyeq_quality.csv``, 256-px enhanced EyePACS copies): the ungradable rate per class (Good, Usable,
  Reject) and reasons, for all graded photographs and for the *validation patients* alone
  (:func:`training.quality_model.split_items` with ``--val-fraction``/``--seed``, the split
  :mod:`training.quality_refit` held out); the ROC AUC of Reject vs Good scored by ``1 - score``.
- DRIVE (``drive/images``, raw camera photographs, all gradable) and ``retina.jpg``: the gradable rate.
- ``--synthetic``: a synthetic folder with ``quality.csv``: "ungradable" sensitivity and specificity.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc, binary_roc
from tqdm import tqdm

from models.card import ModelCard, recipe_of
from models.preprocess import locate_field, preprocess
from analysis.findings import Quality
from analysis.gradability import combine
from analysis.quality import QualityRules, assess, measure
from training.data import load_rgb
from training.quality_model import load_quality, load_real_quality, split_items
from training.report import Curve, Point, roc_figure
from training.report_html import Page

EYEQ_CLASSES = ("Good", "Usable", "Reject")

Gate = Callable[[np.ndarray], Quality]


def gate(card_path: Path | None, rules: QualityRules = QualityRules()) -> Gate:
    """The serving decision for one RGB photograph: classic measures, and the model of ``card_path`` if given."""
    if card_path is None:
        def classic_only(rgb: np.ndarray) -> Quality:
            v = assess(measure(rgb), rules)
            return Quality(gradable=v.gradable, score=v.score, reasons=list(v.reasons), method="classic",
                           measures=v.measures.as_dict())
        return classic_only

    import onnxruntime as ort

    from models.card import read_verified
    from analysis.runtime import session_options

    card = ModelCard.load(card_path)
    sess = ort.InferenceSession(read_verified(card, card_path.parent), session_options(),
                                providers=["CPUExecutionProvider"])
    recipe = recipe_of(card)

    def with_model(rgb: np.ndarray) -> Quality:
        field = locate_field(rgb)
        v = assess(measure(rgb, field), rules)
        x = preprocess(rgb, card.input.size, field=field, recipe=recipe).tensor[None]
        (p,) = sess.run(["probabilities"], {card.input.name: x})
        return combine(p[0], card, v)
    return with_model


@dataclass(frozen=True)
class Verdicts:
    """Per photograph: its name, its label (EyeQ class 0-2, or 1 gradable / 0 not for the others), the gate's
    ``gradable``, ``score`` and ``reasons``."""

    names: list[str]
    labels: np.ndarray
    gradable: np.ndarray
    scores: np.ndarray
    reasons: list[list[str]]


def run(g: Gate, images: Sequence[tuple[str, Path, int]], desc: str) -> Verdicts:
    """Apply the gate to ``(name, path, label)`` photographs."""
    out = [g(load_rgb(p)) for _, p, _ in tqdm(images, desc=desc, unit="img", leave=False)]
    return Verdicts([n for n, _, _ in images], np.array([lab for _, _, lab in images]),
                    np.array([q.gradable for q in out]), np.array([q.score for q in out]),
                    [list(q.reasons) for q in out])


def class_figures(v: Verdicts, mask: np.ndarray | None = None) -> dict[str, float | dict[str, int]]:
    """Ungradable rate, count and reasons per EyeQ class, and the Reject-vs-Good AUC of ``1 - score``."""
    m = np.ones(len(v.names), bool) if mask is None else mask
    out: dict[str, float | dict[str, int]] = {}
    for q, name in enumerate(EYEQ_CLASSES):
        sel = m & (v.labels == q)
        out[f"{name}_n"] = float(sel.sum())
        out[f"{name}_ungradable"] = float((~v.gradable[sel]).mean()) if sel.any() else float("nan")
        out[f"{name}_reasons"] = dict(collections.Counter(r for i in np.flatnonzero(sel) for r in v.reasons[i]))
    sel = m & (v.labels != 1)
    if len({*v.labels[sel].tolist()}) == 2:
        out["auc_reject_vs_good"] = float(binary_auroc(torch.tensor(1.0 - v.scores[sel], dtype=torch.float64),
                                                       torch.tensor(v.labels[sel] == 2).long()))
    return out


def eyeq_images(real_dev: Path) -> list[tuple[str, Path, int]]:
    """The EyeQ-graded EyePACS photographs as ``(name, path, grade)``."""
    items = load_real_quality(real_dev / "eyeq_quality.csv", real_dev / "eyepacs256", "eyepacs")
    return [(it.record.image.stem, it.record.image, int(it.eyeq or 0)) for it in items]


def validation_names(real_dev: Path, val_fraction: float, seed: int) -> set[str]:
    """The EyeQ photographs of the validation patients (the split the head refit held out)."""
    items = load_real_quality(real_dev / "eyeq_quality.csv", real_dev / "eyepacs256", "eyepacs")
    _, val = split_items(items, val_fraction, seed)
    return {it.record.image.stem for it in val}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.quality_real", description=__doc__.split("\n")[0])
    p.add_argument("--real-dev", type=Path, default=Path("../shared/real-dev"))
    p.add_argument("--card", type=Path, default=Path("models/default/image-quality.card.json"))
    p.add_argument("--no-model", action="store_true", help="the classic measures alone")
    p.add_argument("--synthetic", type=Path, default=Path("data/synthetic-quality-test"),
                   help="held-out synthetic folder with quality.csv (skipped when absent)")
    p.add_argument("--report", type=Path, default=Path("runs/quality-real"))
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not (args.real_dev / "eyeq_quality.csv").is_file():
        p.error(f"{args.real_dev} has no eyeq_quality.csv")
    g = gate(None if args.no_model else args.card)
    report: dict[str, object] = {"gate": "classic measures" if args.no_model else str(args.card)}

    eyeq = run(g, eyeq_images(args.real_dev), "EyeQ")
    val = validation_names(args.real_dev, args.val_fraction, args.seed)
    report["eyeq_all"] = class_figures(eyeq)
    report["eyeq_validation_patients"] = class_figures(eyeq, np.array([n in val for n in eyeq.names]))

    raw = [(pth.stem, pth, 1) for pth in sorted((args.real_dev / "drive" / "images").glob("*.png"))]
    import skimage.data

    retina = Path(skimage.data.__file__).parent / "retina.jpg"
    if retina.is_file():
        raw.append(("retina.jpg", retina, 1))
    rv = run(g, raw, "raw")
    drive = np.array([n != "retina.jpg" for n in rv.names])
    report["drive_gradable"] = float(rv.gradable[drive].mean()) if drive.any() else float("nan")
    report["drive_ungradable_names"] = {n: rv.reasons[i] for i, n in enumerate(rv.names) if not rv.gradable[i]}
    if retina.is_file():
        report["retina_gradable"] = bool(rv.gradable[~drive][0])
        report["retina_score"] = float(rv.scores[~drive][0])

    if args.synthetic.is_dir():
        items = load_quality(args.synthetic, "synthetic")
        sv = run(g, [(it.record.image.stem, it.record.image, int(it.truth.gradable)) for it in items
                     if it.truth is not None], "synthetic")
        bad = sv.labels == 0
        report["synthetic"] = {"n": float(len(bad)), "ungradable": float(bad.sum()),
                               "sensitivity": float((~sv.gradable[bad]).mean()),
                               "specificity": float(sv.gradable[~bad].mean()),
                               "auc": float(binary_auroc(torch.tensor(1.0 - sv.scores, dtype=torch.float64),
                                                         torch.tensor(bad).long()))}

    args.report.mkdir(parents=True, exist_ok=True)
    (args.report / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    sel = eyeq.labels != 1
    fpr, tpr, _ = binary_roc(torch.tensor(1.0 - eyeq.scores[sel], dtype=torch.float64),
                             torch.tensor(eyeq.labels[sel] == 2).long())
    good, rej = eyeq.labels == 0, eyeq.labels == 2
    point = Point(float((~eyeq.gradable[good]).mean()), float((~eyeq.gradable[rej]).mean()), "the gate's verdict")
    auc = report["eyeq_all"]["auc_reject_vs_good"]  # type: ignore[index]
    png = roc_figure([Curve(fpr.numpy(), tpr.numpy(), f"Reject vs Good, AUC {auc:.3f}")],
                     "Quality gate on EyeQ-graded EyePACS photographs", [point])
    (args.report / "roc.png").write_bytes(png)
    page = Page(title="Quality gate on real photographs", synthetic_data=False, synthetic_training=False,
                meta=[("gate", str(report["gate"])), ("real data", str(args.real_dev))])
    page.section("EyeQ grades (256-px EyePACS copies)", "Ungradable rate per class: all graded photographs, and the "
                 "validation patients alone (held out from the head refit).")
    rows = []
    for key in ("eyeq_all", "eyeq_validation_patients"):
        f = report[key]
        rows.append([key] + [f"{f[f'{c}_ungradable']:.3f} of {int(f[f'{c}_n'])}" for c in EYEQ_CLASSES]  # type: ignore[index]
                    + [f"{f.get('auc_reject_vs_good', float('nan')):.3f}"])  # type: ignore[union-attr]
    page.table(["photographs", "Good", "Usable", "Reject", "AUC Reject vs Good"], rows, name="eyeq")
    page.figure(png, name="roc", caption="ROC of Reject vs Good, scored by 1 - gate score; the circle is the gate's "
                                         "own decision")
    page.section("Raw camera photographs and synthetic held-out photographs")
    page.json_block({k: v for k, v in report.items() if isinstance(v, (int, float))})
    page.paragraph(json.dumps({k: report[k] for k in ("drive_ungradable_names", "synthetic") if k in report}))
    page.write(args.report)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
