"""Command line: ``python -m datasets.synthetic --out DIR --count N --seed S [--size 512]
[--grade-weights 1,1,1,1,1] [--workers K] [--dicom]``.

Writes the EyePACS layout described in :mod:`datasets.synthetic.writer`; ``--dicom`` also writes
``<image>.dcm`` (DICOM Ophthalmic Photography, JPEG Baseline) beside each JPEG. Bad arguments (count < 1,
size < 64, negative seed, workers < 1, ``--out`` an existing file, malformed grade weights) print a usage message on
stderr and exit with status 2, without a traceback; an I/O failure while writing exits with status 1.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

MIN_SIZE = 64  # mirrors datasets.synthetic.fundus.MIN_SIZE; kept here so argument errors need no numpy/OpenCV


def _grade_weights(text: str) -> tuple[float, ...]:
    """Parse ``"w0,w1,w2,w3,w4"``: five finite, non-negative numbers, not all zero."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 5:
        raise argparse.ArgumentTypeError(f"expected 5 comma-separated weights for grades 0-4, got {text!r}")
    try:
        weights = tuple(float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"weights must be numbers, got {text!r}") from None
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise argparse.ArgumentTypeError(f"weights must be finite, non-negative and not all zero, got {text!r}")
    return weights


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m datasets.synthetic",
        description="Generate synthetic diabetic-retinopathy fundus photographs in the EyePACS layout "
        "(trainLabels.csv, <patient>_<left|right>.jpeg) plus lesions.csv with lesion boxes.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory (created if missing)")
    parser.add_argument("--count", type=int, required=True, help="number of images (>= 1)")
    parser.add_argument("--seed", type=int, required=True, help="random seed (>= 0); same seed, same dataset")
    parser.add_argument("--size", type=int, default=512, help=f"image side in pixels (>= {MIN_SIZE}, default 512)")
    parser.add_argument(
        "--grade-weights",
        type=_grade_weights,
        default=(1.0, 1.0, 1.0, 1.0, 1.0),
        metavar="W0,W1,W2,W3,W4",
        help="relative frequencies of ICDR grades 0-4 (default 1,1,1,1,1)",
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes (>= 1, default 1)")
    parser.add_argument("--dicom", action="store_true",
                        help="also write <image>.dcm, a DICOM Ophthalmic Photography file, beside each JPEG")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error(f"--count must be >= 1, got {args.count}")
    if args.size < MIN_SIZE:
        parser.error(f"--size must be >= {MIN_SIZE}, got {args.size}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} exists and is not a directory")

    from datasets.synthetic.writer import generate  # heavy imports only once the arguments are good

    try:
        labels = generate(
            args.out,
            count=args.count,
            seed=args.seed,
            size=args.size,
            grade_weights=args.grade_weights,
            workers=args.workers,
            dicom=args.dicom,
        )
    except OSError as exc:
        print(f"{parser.prog}: error: cannot write to {args.out}: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.count} images and {labels.name} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
