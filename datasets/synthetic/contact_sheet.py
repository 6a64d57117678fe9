"""Contact sheet of the synthetic generator: one row per ICDR grade, one row per quality reason.

``python -m datasets.synthetic.contact_sheet --out docs/images/synthetic-contact-sheet.png [--seed 0]
[--thumb 168]`` renders, for each grade 0-4, several photographs (alternating eyes, mixed cameras) plus a
1:1 crop of the densest lesion area of a 1024-pixel photograph (the disc for grade 0), then for each reason of
:data:`datasets.synthetic.quality.ARTEFACTS` photographs degraded by that artefact alone at a strength that
makes them ungradable. Every tile is labelled. The sheet is written as an 8-bit palette PNG (adaptive
palette) to keep it small enough for the repository. Bad arguments print a message and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from datasets.synthetic import quality
from datasets.synthetic.fundus import SyntheticFundus, render_fundus

GRADE_LABELS = ("0 no DR", "1 mild", "2 moderate", "3 severe", "4 proliferative")
_LABEL_W = 150
_GAP = 4
_TEXT_H = 16


def _render_grade(grade: int, seed: int, laterality: str, size: tuple[int, int]) -> SyntheticFundus:
    """The first photograph from ``seed`` on whose *derived* grade is ``grade``."""
    for k in range(200):
        f = render_fundus(np.random.default_rng([seed, grade, k]), grade=grade, laterality=laterality, size=size)
        if f.grade == grade:
            return f
    raise RuntimeError(f"no photograph of grade {grade} in 200 tries")  # pragma: no cover


def _fit(img: np.ndarray, thumb: int) -> np.ndarray:
    """Letterbox ``img`` into a ``thumb`` x ``thumb`` black tile."""
    h, w = img.shape[:2]
    k = thumb / max(h, w)
    small = cv2.resize(img, (max(1, round(w * k)), max(1, round(h * k))), interpolation=cv2.INTER_AREA)
    tile = np.zeros((thumb, thumb, 3), dtype=np.uint8)
    y0, x0 = (thumb - small.shape[0]) // 2, (thumb - small.shape[1]) // 2
    tile[y0 : y0 + small.shape[0], x0 : x0 + small.shape[1]] = small
    return tile


def _zoom(f: SyntheticFundus, thumb: int) -> np.ndarray:
    """A 1:1 crop (``thumb`` px) centred on the densest lesions, or on the disc when there are none."""
    h, w = f.image.shape[:2]
    if f.lesions:
        centres = np.array([((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in (les.box for les in f.lesions)])
        near = ((centres[:, None, :] - centres[None, :, :]) ** 2).sum(-1) < (thumb / 2) ** 2
        cx, cy = centres[int(near.sum(1).argmax())]
    else:
        cx, cy = f.disc
    x0 = int(min(max(cx - thumb / 2, 0), w - thumb))
    y0 = int(min(max(cy - thumb / 2, 0), h - thumb))
    return np.ascontiguousarray(f.image[y0 : y0 + thumb, x0 : x0 + thumb])


def _caption(tile: np.ndarray, text: str) -> np.ndarray:
    """``tile`` with ``text`` on a dark strip beneath it."""
    strip = np.full((_TEXT_H, tile.shape[1], 3), 24, dtype=np.uint8)
    cv2.putText(strip, text, (3, _TEXT_H - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (235, 235, 235), 1, cv2.LINE_AA)
    return np.vstack([tile, strip])


def _row(label: str, tiles: list[np.ndarray]) -> np.ndarray:
    h = tiles[0].shape[0]
    head = np.full((h, _LABEL_W, 3), 40, dtype=np.uint8)
    for i, line in enumerate(label.split("\n")):
        cv2.putText(head, line, (8, 24 + 20 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    parts = [head]
    for t in tiles:
        parts += [np.full((h, _GAP, 3), 40, dtype=np.uint8), t]
    return np.hstack(parts)


def build_sheet(*, seed: int = 0, thumb: int = 168, per_row: int = 5, size: int = 768) -> np.ndarray:
    """The contact sheet as an RGB uint8 array (module docstring). ``size``: height of the photographs (square,
    4:3 and 3:2 cameras); the zoomed crop comes from a ``4/3 size`` square photograph."""
    cameras = ((size, size), (size * 4 // 3, size), (size * 3 // 2, size))
    big = size * 4 // 3
    thumb = min(thumb, size)
    rows: list[np.ndarray] = []
    for grade in range(5):
        tiles = []
        for k in range(per_row):
            lat = "L" if k % 2 == 0 else "R"
            f = _render_grade(grade, seed + k, lat, cameras[k % len(cameras)])
            tag = f"{lat} {f.image.shape[1]}x{f.image.shape[0]}" + (" DME" if f.dme else "")
            tiles.append(_caption(_fit(f.image, thumb), tag))
        zoomed = _render_grade(grade, seed + 100, "R", (big, big))
        tiles.append(_caption(_zoom(zoomed, thumb), f"1:1 crop of {big} px"))
        rows.append(_row(f"grade {GRADE_LABELS[grade]}", tiles))
    for i, reason in enumerate(quality.ARTEFACTS):
        tiles = []
        for k in range(per_row + 1):
            grade = (i + k) % 5
            f = _render_grade(grade, seed + 200 + 10 * i + k, "L" if k % 2 else "R", (size, size))
            qrng = np.random.default_rng([seed, 300 + i, k])
            plan = quality.sample_plan(qrng, force=reason, strength=round(0.5 + 0.5 * k / per_row, 3))
            pixels, _ = quality.apply(f.image, plan, qrng, field=f.field)
            q = quality.jpeg_quality(plan)
            if q != quality.CLEAN_JPEG_QUALITY:
                pixels = quality.recompress(pixels, q)
            tile = _fit(pixels, thumb)
            if reason == "jpeg_artefacts":  # show the blocks at 1:1, from the middle of the field
                c0 = (size - thumb) // 2
                tile = np.ascontiguousarray(pixels[c0 : c0 + thumb, c0 : c0 + thumb])
            tiles.append(_caption(tile, f"s={plan.strengths[reason]:.2f} grade {f.grade}"))
        rows.append(_row(f"ungradable:\n{reason}", tiles))
    width = max(r.shape[1] for r in rows)
    sep = np.full((_GAP, width, 3), 40, dtype=np.uint8)
    out: list[np.ndarray] = []
    for r in rows:
        out += [r, sep]
    return np.vstack(out[:-1])


def write_sheet(sheet: np.ndarray, path: Path) -> None:
    """Write ``sheet`` (RGB) as an adaptive-palette PNG (Floyd-Steinberg dithered)."""
    from PIL import Image

    rgb = Image.fromarray(sheet, "RGB")
    palette = rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    rgb.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).save(path, optimize=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datasets.synthetic.contact_sheet", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--seed", type=int, default=0, help="seed (>= 0, default 0)")
    parser.add_argument("--thumb", type=int, default=168, help="tile side in pixels (64-512, default 168)")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if not 64 <= args.thumb <= 512:
        parser.error(f"--thumb must be in 64-512, got {args.thumb}")
    if args.out.suffix.lower() != ".png":
        parser.error(f"--out must name a .png file, got {args.out}")
    if args.out.parent and not args.out.parent.is_dir():
        parser.error(f"--out: folder {args.out.parent} does not exist")
    write_sheet(build_sheet(seed=args.seed, thumb=args.thumb), args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
