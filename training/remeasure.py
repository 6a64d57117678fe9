"""Re-measure an exported grader on held-out data and refresh its card's metrics, without its checkpoint.

``python -m training.remeasure --card models/default/dr-grader.card.json --data DIR [--format F] [--split S]``

For a model whose training checkpoint is gone (the embedded default ships its ONNX file and card only) and
whose card predates a metric (bootstrap intervals, the pointing game) or whose held-out data has changed (a new
synthetic generator). The ONNX file is verified against the card's sha256 first and is not modified, so the
card keeps its hash; the operating point is *not* re-chosen (it was chosen on validation data at export and
stays the artifact's contract): sensitivity and specificity are measured at it. The card's ``metrics_data``
records that the metrics were re-measured, when, and with which code commit; the held-out confusion matrix
beside the card is redrawn.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from models.card import ICDR_LABELS, CardError, ModelCard, recipe_of
from models.store import load_verified
from training.cards import code_commit
from training.data import load_graded
from training.tasks.grader import onnx_evaluate
from training.metrics import (BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, POINTING_TOLERANCE, confusion_matrix,
                              grader_intervals, grader_metrics, pointing_game)
from training.report import plot_confusion

#: Metrics that describe the export itself (parity), not held-out data: kept from the original card.
_EXPORT_METRICS = ("max_abs_logit_diff", "max_rel_cam_diff")


def remeasure(card_path: Path, data: Path, data_format: str, split: str | None = None) -> ModelCard:
    """Measure the grader of ``card_path`` on ``data`` and rewrite the card (and its confusion matrix)."""
    card, onnx_bytes = load_verified(card_path)
    if card.task != "dr-grading":
        raise CardError(f"{card.tag} is a {card.task} model: only graders are re-measured here")
    op = card.operating_point("referable_dr")
    items = load_graded(data, data_format, split=split)
    ev = onnx_evaluate(onnx_bytes, items, card.input.size, recipe=recipe_of(card))
    metrics = grader_metrics(ev.probs, ev.labels, op.threshold if op else None)
    metrics.update(grader_intervals(ev.probs, ev.labels))
    with_lesions = sum(r.lesions is not None for r in items)
    if with_lesions:
        metrics.update(pointing_game(ev.pointing_hits, ev.centre_hits))
    metrics.update({k: card.metrics[k] for k in _EXPORT_METRICS if k in card.metrics})
    game = (f"pointing game: {len(ev.pointing_hits)} referable images with lesion boxes, hit = CAM peak of the "
            f"shown grade within {POINTING_TOLERANCE * card.input.size:.1f} model pixels of a lesion box; centre "
            f"baseline: the field centre as the point" if with_lesions else "no lesion ground truth")
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    metrics_data = (f"{data} ({len(items)} images, {data_format}, held out from training); re-measured from the "
                    f"ONNX file on {today} at code commit {code_commit()[:12]} (python -m training.remeasure), "
                    f"operating point as chosen at export; 95 % intervals: percentile bootstrap over images, "
                    f"{BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}; {game}")
    new = card.model_copy(update={"metrics": metrics, "metrics_data": metrics_data})
    new.save(card_path)
    plot_confusion(confusion_matrix(ev.probs, ev.labels), ICDR_LABELS,
                   card_path.parent / f"{card.name}.confusion.png",
                   f"{card.name} {card.version}: held-out confusion matrix (n={len(items)})")
    return new


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.remeasure", description=__doc__.splitlines()[0])
    p.add_argument("--card", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="held-out data folder")
    p.add_argument("--format", default="synthetic", help="its published layout (default synthetic)")
    p.add_argument("--split", help="published split, for layouts that have them")
    args = p.parse_args(argv)
    try:
        card = remeasure(args.card, args.data, args.format, args.split)
    except (ValueError, FileNotFoundError, KeyError) as exc:  # CardError and reader errors are ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for k, v in sorted(card.metrics.items()):
        print(f"{k:45s} {v:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
