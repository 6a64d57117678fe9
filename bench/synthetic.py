"""Throughput of the synthetic fundus generator on this machine, with the cost of every stage.

Usage: ``python -m bench.synthetic [--count 300] [--size 1024 | --camera WxH ...] [--workers 2] [--profile-count 40]
[--p-degraded 0.1]``

1. Stages: ``--profile-count`` images are written in this process (one OpenCV thread) through
   :func:`datasets.synthetic.writer.write_image` with a timings dict, so the per-stage milliseconds are those of
   the real code path (renderer stages, quality artefacts, JPEG encoding, writing, masks + RLE).
2. Throughput: ``generate`` writes ``--count`` images with ``--workers`` processes into a temporary folder
   (tables and ``lesions.json`` included); prints images/s, ms per image per worker, and the time projected for
   10,000 images. The 1-minute load average before and after is printed: other processes on the cores inflate
   the numbers.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2


def _stages(count: int, cameras: tuple[tuple[int, int], ...], p_degraded: float, out: Path) -> dict[str, float]:
    from datasets.synthetic.writer import Task, grade_probabilities, write_image

    probabilities = tuple(float(p) for p in grade_probabilities((1, 1, 1, 1, 1)))
    timings: dict[str, float] = {}
    for i in range(count):
        write_image(Task(out, 12345, i, cameras, probabilities, p_degraded), timings)
    return {k: v / count * 1000 for k, v in timings.items()}


def main(argv: list[str] | None = None) -> int:
    from datasets.synthetic.__main__ import _camera, _probability

    parser = argparse.ArgumentParser(prog="python -m bench.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=300, help="images for the throughput run (default 300)")
    parser.add_argument("--size", type=int, default=1024, help="square side (default 1024)")
    parser.add_argument("--camera", type=_camera, nargs="+", metavar="WxH", help="camera size(s) instead of --size")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--profile-count", type=int, default=40, help="images for the per-stage timings (default 40)")
    parser.add_argument("--p-degraded", type=_probability, default=0.1, metavar="P", help="default 0.1")
    args = parser.parse_args(argv)
    if args.count < 1 or args.workers < 1 or args.profile_count < 0 or args.size < 64:
        parser.error("--count and --workers must be >= 1, --profile-count >= 0, --size >= 64")
    cameras = tuple(args.camera) if args.camera else ((args.size, args.size),)

    from datasets.synthetic.writer import generate

    label = " ".join(f"{w}x{h}" for w, h in cameras)
    print(f"synthetic fundus benchmark: {label}, p_degraded {args.p_degraded}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="fovea-bench-") as tmp:
        if args.profile_count:
            cv2.setNumThreads(1)
            stages = _stages(args.profile_count, cameras, args.p_degraded, Path(tmp))
            total = sum(stages.values())
            print(f"\nper-stage cost, one process, mean of {args.profile_count} images (ms per image):")
            for name, ms in sorted(stages.items(), key=lambda kv: -kv[1]):
                print(f"  {name:<20} {ms:7.1f}")
            print(f"  {'total':<20} {total:7.1f}")
        load0 = os.getloadavg()[0]
        t = time.perf_counter()
        generate(Path(tmp) / "set", count=args.count, seed=1, cameras=cameras, workers=args.workers,
                 p_degraded=args.p_degraded, progress=sys.stderr.isatty())
        wall = time.perf_counter() - t
        load1 = os.getloadavg()[0]
    rate = args.count / wall
    print(f"\nthroughput: {args.count} images with {args.workers} worker(s) in {wall:.1f} s = {rate:.2f} images/s "
          f"({wall / args.count * args.workers * 1000:.0f} ms per image per worker)")
    print(f"projected for 10,000 images: {10000 / rate / 60:.1f} min")
    print(f"load average (1 min) before/after: {load0:.2f} / {load1:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
