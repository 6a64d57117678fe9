"""``python -m training.preprocess_sheet``: a picture of what a preprocessing recipe does to real photographs.

Raw camera photographs (DRIVE: black surround, uneven light, colour cast) and publisher-enhanced EyePACS copies
(256 px, strong colour equalisation), each shown as photographed (top) and as the model sees it after the
recipe (bottom), so a reader can judge whether the two domains meet. Reads ``../shared/real-dev`` (never copied
into the repository); the sheet is small thumbnails, written as one JPEG (quality 85: a picture for people, not data).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from models.preprocess import RECIPES, preprocess
from training.data import load_rgb

DEFAULT_REAL_DEV = Path("../shared/real-dev")


def pick(real_dev: Path, per_domain: int) -> list[tuple[str, Path]]:
    """``per_domain`` DRIVE photographs and as many EyePACS ones (the first grade 0 and the most severe grades,
    so lesions show), deterministic."""
    drive = sorted((real_dev / "drive" / "images").glob("*.png"))[:per_domain]
    labels = real_dev / "eyepacs256" / "trainLabels.csv"
    rows = [line.split(",") for line in labels.read_text().split()[1:]]
    by_grade = sorted(rows, key=lambda r: (-int(r[1]), r[0]))
    chosen = [r[0] for r in by_grade[:per_domain - 1]] + [next(r[0] for r in rows if r[1] == "0")]
    eyepacs = [real_dev / "eyepacs256" / "train" / f"{name}.jpeg" for name in chosen]
    return [("DRIVE raw", p) for p in drive] + [("EyePACS 256", p) for p in eyepacs]


def sheet(items: list[tuple[str, Path]], recipe_name: str, tile: int = 200) -> np.ndarray:
    """RGB sheet: one column per photograph, as photographed above, after ``recipe_name`` below."""
    recipe = RECIPES[recipe_name]
    cols = []
    for label, path in items:
        pre = preprocess(load_rgb(path), tile, recipe=recipe)
        col = np.concatenate([pre.crop, pre.image], axis=0).copy()
        cv2.putText(col, label, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        cols.append(col)
    return np.concatenate(cols, axis=1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.preprocess_sheet", description=__doc__.splitlines()[0])
    p.add_argument("--real-dev", type=Path, default=DEFAULT_REAL_DEV)
    p.add_argument("--recipe", default="fovea.fundus-contrast", choices=list(RECIPES))
    p.add_argument("--per-domain", type=int, default=4)
    p.add_argument("--out", type=Path, default=Path("docs/images/preprocessing-contrast.jpg"))
    args = p.parse_args(argv)
    if not (args.real_dev / "drive" / "images").is_dir() or not (args.real_dev / "eyepacs256").is_dir():
        print(f"error: {args.real_dev} does not hold drive/images and eyepacs256 (see its README)", file=sys.stderr)
        return 2
    img = sheet(pick(args.real_dev, args.per_domain), args.recipe)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
