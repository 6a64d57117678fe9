"""Command line: ``python -m datasets.synthetic --out DIR --count N --seed S [--size 512 | --camera WxH ...]
[--grade-weights 1,1,1,1,1] [--p-degraded 0.1] [--workers K] [--dicom]``.

Writes the folder described in :mod:`datasets.synthetic.writer` (EyePACS ``trainLabels.csv`` and JPEGs,
``ground_truth.csv``, ``quality.csv``, COCO ``lesions.json``, ``lesions.csv``); ``--camera`` gives one or more
sensor sizes (e.g. ``2592x1944 3888x2592 4928x3264``), one drawn per image, instead of square ``--size``
images; ``--dicom`` also writes ``<image>.dcm`` (DICOM Ophthalmic Photography, JPEG Baseline) beside each JPEG.
Bad arguments (count < 1, a side < 64, a malformed camera, negative seed, workers < 1, ``--p-degraded``
outside [0, 1], ``--out`` an existing file, malformed grade weights, ``--size`` with ``--camera``) print a
usage message on stderr and exit with status 2, without a traceback; an I/O failure exits with status 1.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

MIN_SIZE = 64  # mirrors datasets.synthetic.fundus.MIN_SIZE; kept here so argument errors need no numpy/OpenCV
DEFAULT_P_DEGRADED = 0.1  # mirrors datasets.synthetic.writer.DEFAULT_P_DEGRADED


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


def _camera(text: str) -> tuple[int, int]:
    """Parse ``"WIDTHxHEIGHT"`` (e.g. ``2592x1944``): two integers >= 64."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 2592x1944, got {text!r}")
    w, h = (int(p) for p in parts)
    if min(w, h) < MIN_SIZE:
        raise argparse.ArgumentTypeError(f"camera {text!r}: both sides must be >= {MIN_SIZE}")
    return w, h


def _probability(text: str) -> float:
    try:
        p = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= p <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m datasets.synthetic",
        description="Generate synthetic diabetic-retinopathy fundus photographs in the EyePACS layout "
        "(trainLabels.csv, <patient>_<left|right>.jpeg) with full ground truth (ground_truth.csv, quality.csv) "
        "and lesion masks (COCO lesions.json, lesions.csv).",
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory (created if missing)")
    parser.add_argument("--count", type=int, required=True, help="number of images (>= 1)")
    parser.add_argument("--seed", type=int, required=True, help="random seed (>= 0); same seed, same dataset")
    parser.add_argument("--size", type=int, default=None,
                        help=f"square image side in pixels (>= {MIN_SIZE}, default 512)")
    parser.add_argument("--camera", type=_camera, nargs="+", metavar="WxH",
                        help="camera sensor size(s), e.g. 2592x1944 3888x2592 4928x3264; one is drawn per image")
    parser.add_argument("--p-degraded", type=_probability, default=DEFAULT_P_DEGRADED, metavar="P",
                        help=f"probability of quality artefacts per image (0-1, default {DEFAULT_P_DEGRADED}; "
                        "about half of the degraded images are ungradable)")
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
    if args.size is not None and args.camera:
        parser.error("give either --size or --camera, not both")
    if args.size is not None and args.size < MIN_SIZE:
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
            size=512 if args.size is None else args.size,
            cameras=args.camera,
            grade_weights=args.grade_weights,
            workers=args.workers,
            dicom=args.dicom,
            p_degraded=args.p_degraded,
        )
    except OSError as exc:
        print(f"{parser.prog}: error: cannot write to {args.out}: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.count} images, {labels.name}, ground_truth.csv, quality.csv, lesions.json and lesions.csv "
          f"to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
