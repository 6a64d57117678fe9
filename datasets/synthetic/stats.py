"""Lesion statistics per grade of a written synthetic folder, as a Markdown table.

``python -m datasets.synthetic.stats DIR`` reads ``DIR/lesions.json`` (and ``DIR/quality.csv``) and prints, for
each ICDR grade, the number of images, the mean / min / max count per image of every annotated lesion type
(haemorrhages split into intraretinal and pre-retinal), the share of images with each image-level finding
(venous beading, IRMA, neovascularisation, vitreous haemorrhage, laser scars), the share with DME, referable
and ungradable, and the most frequent quality reasons. A missing or malformed folder prints a message and
exits with status 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_COUNTS = ("microaneurysm", "haemorrhage", "preretinal", "hard_exudate", "cotton_wool_spot")
_HEAD = {"microaneurysm": "MA", "haemorrhage": "intraretinal haem.", "preretinal": "pre-retinal haem.",
         "hard_exudate": "exudate clusters", "cotton_wool_spot": "CWS"}


def _counts(anns: list[dict[str, Any]], names: dict[int, str]) -> Counter[str]:
    c: Counter[str] = Counter()
    for a in anns:
        kind = names[a["category_id"]]
        if kind == "haemorrhage" and a.get("attributes", {}).get("subtype") == "preretinal":
            kind = "preretinal"
        c[kind] += 1
    return c


def summarise(root: Path) -> str:
    """The Markdown report of folder ``root`` (module docstring). ``ValueError`` for a malformed folder."""
    try:
        data = json.loads((root / "lesions.json").read_text(encoding="utf-8"))
        names = {c["id"]: c["name"] for c in data["categories"]}
        images = data["images"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{root / 'lesions.json'}: not a synthetic lesions file ({exc})") from None
    reasons: dict[str, list[str]] = {}
    quality_csv = root / "quality.csv"
    if quality_csv.is_file():
        with quality_csv.open(newline="", encoding="utf-8") as f:
            reasons = {r["image"]: [x for x in r["reasons"].split(";") if x] for r in csv.DictReader(f)}
    by_image: dict[int, list[dict[str, Any]]] = {im["id"]: [] for im in images}
    for a in data["annotations"]:
        by_image[a["image_id"]].append(a)

    lines = [f"{len(images)} images in {root.name}; counts per image as mean (min-max).", ""]
    head = ["grade", "images", *(_HEAD[k] for k in _COUNTS), "DME", "referable", "ungradable"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    signs = ["| grade | venous beading (2+ quadrants) | IRMA | NVD | NVE | pre-retinal | vitreous | laser scars |",
             "|---|---|---|---|---|---|---|---|"]
    all_reasons: Counter[str] = Counter()
    for grade in range(5):
        ims = [im for im in images if im["grade"] == grade]
        if not ims:
            continue
        per = [_counts(by_image[im["id"]], names) for im in ims]
        cells = [str(grade), str(len(ims))]
        for k in _COUNTS:
            values = [c[k] for c in per]
            cells.append(f"{sum(values) / len(values):.1f} ({min(values)}-{max(values)})")
        pct = lambda n: f"{100 * n / len(ims):.0f} %"  # noqa: E731
        ungradable = sum(bool(reasons.get(Path(im["file_name"]).stem)) or not im["gradable"] for im in ims)
        cells += [pct(sum(im["dme"] for im in ims)), pct(sum(im["referable"] for im in ims)), pct(ungradable)]
        lines.append("| " + " | ".join(cells) + " |")
        fd = [im["findings"] for im in ims]
        signs.append("| " + " | ".join([
            str(grade),
            pct(sum(len(f["venous_beading_quadrants"]) >= 2 for f in fd)),
            pct(sum(bool(f["irma_quadrants"]) for f in fd)),
            pct(sum("disc" in f["neovascularisation"] for f in fd)),
            pct(sum("elsewhere" in f["neovascularisation"] for f in fd)),
            pct(sum(f["preretinal_haemorrhages"] > 0 for f in fd)),
            pct(sum(f["vitreous_haemorrhage"] for f in fd)),
            pct(sum(f["laser_scars"] > 0 for f in fd)),
        ]) + " |")
        for im in ims:
            all_reasons.update(reasons.get(Path(im["file_name"]).stem, []))
    lines += ["", "Image-level signs (share of the grade's images):", "", *signs]
    if all_reasons:
        lines += ["", "Quality reasons of the ungradable images: "
                  + ", ".join(f"{k} {v}" for k, v in all_reasons.most_common()) + "."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datasets.synthetic.stats", description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path, help="a folder written by python -m datasets.synthetic")
    args = parser.parse_args(argv)
    if not (args.root / "lesions.json").is_file():
        parser.error(f"{args.root} has no lesions.json (write one with python -m datasets.synthetic --out DIR ...)")
    try:
        print(summarise(args.root))
    except ValueError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
