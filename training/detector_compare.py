"""``python -m training.detector_compare``: two lesion detectors, served, side by side on real photographs.

A replacement detector is measured on synthetic photographs with boxes (mAP, ``bench.served_detector``); real
photographs here have no lesion boxes, so what a new detector must not do on them is checked by comparison:
every photograph of ``--images`` (by default the raw DRIVE screening photographs in ``../shared/real-dev``,
read in place) and scikit-image's real ``retina.jpg`` go through the serving pipeline
(:class:`analysis.pipeline.Analyzer`, the default grader) once with each detector. Written to ``--out``:

* ``compare.jpg``: one row per photograph, the ``--before`` detector's served lesions on the left and the
  ``--after`` detector's on the right (the overlay's own lesion boxes, :func:`analysis.render.draw_lesions`);
* ``compare.json``: per photograph and class, the lesion counts of both, and the *new misses*: lesions the
  before detector reported that no lesion of the same class from the after detector overlaps (IoU ≥
  :data:`MATCH_IOU`), with their scores, so a reviewer can look each one up in the picture.

Neither detector's output is ground truth (both were trained on synthetic photographs only); the comparison
shows where they differ, not which one is right.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from models.store import DEFAULT_DIR

#: A before-lesion counts as found again when an after-lesion of its class overlaps it this much.
MATCH_IOU = 0.3
#: Side of each panel in the picture (pixels, long side).
PANEL = 480


def iou(a: list[float], b: list[float]) -> float:
    """Intersection over union of two ``x0, y0, x1, y1`` boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def new_misses(before: list[dict], after: list[dict]) -> list[dict]:
    """The ``before`` lesions (``{"type", "score", "box"}``) that no ``after`` lesion of the same type overlaps
    with IoU ≥ :data:`MATCH_IOU`."""
    return [b for b in before
            if not any(a["type"] == b["type"] and iou(a["box"], b["box"]) >= MATCH_IOU for a in after)]


def _panel(rgb: np.ndarray, lesions: list[dict], title: str) -> np.ndarray:
    from analysis.render import draw_lesions

    k = max(rgb.shape[:2]) / PANEL
    small = cv2.resize(rgb, (round(rgb.shape[1] / k), round(rgb.shape[0] / k)), interpolation=cv2.INTER_AREA)
    draw_lesions(small, [(les["type"], les["score"], tuple(les["box"])) for les in lesions], scale=k)
    canvas = np.zeros((PANEL + 22, PANEL, 3), np.uint8)
    canvas[22:22 + small.shape[0], :small.shape[1]] = small
    cv2.putText(canvas, title, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


def compare(before: Path, after: Path, images: list[tuple[str, bytes]], out: Path) -> dict[str, object]:
    """Serve ``images`` (name, bytes) with each detector card; write the picture and JSON to ``out``."""
    from analysis.decode import decode
    from analysis.pipeline import Analyzer

    grader = DEFAULT_DIR / "dr-grader.card.json"
    analyzers = {"before": Analyzer.load(grader, detector=before), "after": Analyzer.load(grader, detector=after)}
    tags = {k: a.detector.card.tag for k, a in analyzers.items() if a.detector is not None}
    rows, panels = [], []
    for name, data in images:
        found = {k: [les.model_dump() for les in (a.analyze(data).lesions or [])] for k, a in analyzers.items()}
        img = decode(data)[0]
        rgb, f = img.rgb, img.scale  # boxes are in original pixels; a decode may be reduced
        shown = {k: [{**les, "box": [v / f for v in les["box"]]} for les in v] for k, v in found.items()}
        counts = {k: {c: sum(les["type"] == c for les in v) for c in sorted({les["type"] for les in
                                                                            found["before"] + found["after"]})}
                  for k, v in found.items()}
        misses = new_misses(found["before"], found["after"])
        rows.append({"image": name, "before": counts["before"], "after": counts["after"],
                     "new_misses": [{"type": m["type"], "score": m["score"], "box": m["box"]} for m in misses]})
        panels.append(np.hstack([_panel(rgb, shown["before"], f"{name}  {tags['before']}: {len(found['before'])}"),
                                 _panel(rgb, shown["after"], f"{tags['after']}: {len(found['after'])}"
                                        f"  (new misses {len(misses)})")]))
    out.mkdir(parents=True, exist_ok=True)
    picture = np.vstack(panels)
    cv2.imwrite(str(out / "compare.jpg"), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
    summary = {"before": tags["before"], "after": tags["after"], "photographs": len(rows),
               "lesions_before": sum(sum(r["before"].values()) for r in rows),
               "lesions_after": sum(sum(r["after"].values()) for r in rows),
               "new_misses": sum(len(r["new_misses"]) for r in rows), "match_iou": MATCH_IOU, "per_image": rows}
    (out / "compare.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.detector_compare", description=__doc__.splitlines()[0])
    p.add_argument("--before", type=Path, required=True, help="the detector card served today")
    p.add_argument("--after", type=Path, default=DEFAULT_DIR / "lesion-detector.card.json")
    p.add_argument("--images", type=Path, default=Path("../shared/real-dev/drive/images"))
    p.add_argument("--limit", type=int, default=8, help="photographs of --images to use (sorted by name)")
    p.add_argument("--out", type=Path, default=Path("runs/detector-compare"))
    args = p.parse_args(argv)
    for card in (args.before, args.after):
        if not card.is_file():
            print(f"error: no detector card at {card}", file=sys.stderr)
            return 2
    import skimage

    from training.tasks.detector import read_negatives

    # The photographs export caps thresholds on are listed the same way (sorted, the same suffixes).
    paths = [r.image for r in read_negatives(args.images)][:args.limit] if args.images.is_dir() else []

    retina = Path(skimage.__file__).parent / "data" / "retina.jpg"
    images = [("retina.jpg", retina.read_bytes())] + [(q.name, q.read_bytes()) for q in paths]
    summary = compare(args.before, args.after, images, args.out)
    print(json.dumps({k: v for k, v in summary.items() if k != "per_image"}, indent=2))
    print(f"wrote {args.out / 'compare.jpg'} and {args.out / 'compare.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
