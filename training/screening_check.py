"""``python -m training.screening_check``: how a grader behaves, served, on a folder of screening photographs.

Runs every photograph of ``--images`` through the serving pipeline (:class:`analysis.pipeline.Analyzer`: decode,
quality gate, the grader's own preprocessing recipe, grade, referral at the card's operating point) with the
given grader and the embedded quality model, and tabulates what a screening programme would see: how many
photographs were gradable, the grade distribution, how many were referred. For a folder of unlabelled photographs
from a screening population (mostly no or mild DR, such as DRIVE's), a model that behaves as a screening model
should grades most of them 0-1, refers few and finds them gradable; the numbers decide whether a research model
may become the embedded default (README "Real photographs").
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from models.store import DEFAULT_DIR

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm")


def screen(grader_card: Path, images: list[Path], *, quality_card: Path | None) -> dict[str, object]:
    """Analyse ``images`` and summarise: counts of gradable, grades (of gradable photographs), referable."""
    from analysis.pipeline import Analyzer

    analyzer = Analyzer.load(grader_card, quality=quality_card)
    grades: Counter[int] = Counter()
    gradable = referable = 0
    rows = []
    for path in images:
        f = analyzer.analyze(path.read_bytes())
        ok = bool(f.quality.gradable)
        gradable += ok
        if ok:
            grades[f.dr_grade.grade] += 1
            referable += bool(f.referable_dr.value)
        rows.append({"image": path.name, "gradable": ok, "quality": round(f.quality.score, 3),
                     "reasons": list(f.quality.reasons), "grade": f.dr_grade.grade,
                     "p_referable": round(f.referable_dr.probability, 3), "referable": f.referable_dr.value})
    n = len(images)
    return {"grader": analyzer.grader_card.tag, "photographs": n, "gradable": gradable,
            "grades_of_gradable": {g: grades.get(g, 0) for g in range(5)}, "referable": referable,
            "grade_0_1_share": (grades.get(0, 0) + grades.get(1, 0)) / max(gradable, 1), "per_image": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.screening_check", description=__doc__.splitlines()[0])
    p.add_argument("--card", type=Path, required=True, help="the grader's card (an export's *.card.json)")
    p.add_argument("--images", type=Path, default=Path("../shared/real-dev/drive/images"))
    p.add_argument("--quality", type=Path, default=DEFAULT_DIR / "image-quality.card.json",
                   help="image-quality model card (default: the embedded one; 'none' for the classic gate only)")
    p.add_argument("--json", type=Path, help="also write the summary with per-image rows here")
    args = p.parse_args(argv)
    images = sorted(q for q in args.images.glob("*") if q.suffix.lower() in IMAGE_SUFFIXES) if args.images.is_dir() else []
    if not images:
        print(f"error: no photographs ({', '.join(IMAGE_SUFFIXES)}) in {args.images}", file=sys.stderr)
        return 2
    quality = None if str(args.quality) == "none" or not args.quality.is_file() else args.quality
    summary = screen(args.card, images, quality_card=quality)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "per_image"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
