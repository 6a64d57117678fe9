"""The Fovea synthetic dataset folder written by ``python -m datasets.synthetic`` (contract: the generator's
module docstring, :mod:`datasets.synthetic.writer`).

Layout
------
``<id>.jpeg`` photographs, ``id`` = ``<patient>_left`` / ``<patient>_right``, and:

* ``ground_truth.csv`` — ``image,patient,laterality,width,height,grade,dme,referable,gradable,
  quality_reasons``: the full truth of every image (``grade``/``dme`` are the disease truth even when the photo
  is ungradable; ``gradable`` is the quality verdict). When present it is the list of images.
* ``trainLabels.csv`` — EyePACS ``image,level``: the list of images when ``ground_truth.csv`` is absent (folders
  that have no ground-truth file); patient and laterality then come from the names, DME and gradability
  are ``None``.
* ``lesions.json`` — COCO instances with the canonical lesion categories (read with
  :func:`datasets.readers.coco.parse_coco`); else ``lesions.csv`` — ``image,type,x0,y0,x1,y1`` (x1/y1
  exclusive). Either way every image gets ``lesions`` (``()`` when it has none: the generator records every
  lesion it draws of the four types). With neither file, ``lesions`` is ``None``.

``quality.csv`` (per-artefact strengths) is not part of :class:`FundusRecord` and is not read.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from datasets.readers.coco import parse_coco
from datasets.readers.common import (csv_rows, parse_eyepacs_name, parse_flag, parse_grade, read_csv_layout,
                                     require_file)
from datasets.readers.errors import Problems, RowProblem
from datasets.readers.record import FundusRecord, LesionBox

LABELS_CSV = "trainLabels.csv"
GROUND_TRUTH_CSV = "ground_truth.csv"
LESIONS_JSON = "lesions.json"
LESIONS_CSV = "lesions.csv"
GROUND_TRUTH_COLUMNS = ("patient", "laterality", "grade", "dme", "gradable")
LESION_COLUMNS = ("type", "x0", "y0", "x1", "y1")
LAYOUT = "Fovea synthetic (ground_truth.csv or trainLabels.csv + <id>.jpeg)"


def read_synthetic(root: Path) -> list[FundusRecord]:
    """One :class:`FundusRecord` per image of the synthetic folder ``root`` (see the module docstring)."""
    root = Path(root)
    ground_truth = root / GROUND_TRUTH_CSV
    if ground_truth.is_file():
        records = read_csv_layout(ground_truth, layout=LAYOUT, source="synthetic", name_col="image",
                                  required=GROUND_TRUTH_COLUMNS, dirs=[root], fields=_ground_truth_fields)
    else:
        require_file(root / LABELS_CSV, LAYOUT)
        records = read_csv_layout(root / LABELS_CSV, layout=LAYOUT, source="synthetic", name_col="image",
                                  required=("level",), dirs=[root], fields=_label_fields)
    lesions = _lesions(root, {r.image.stem for r in records})
    if lesions is None:
        return records
    return [replace(r, lesions=tuple(lesions.get(r.image.stem, ()))) for r in records]


def _ground_truth_fields(row: dict[str, str], name: str) -> dict[str, Any]:
    laterality = row["laterality"]
    if laterality not in ("L", "R"):
        raise RowProblem(f"laterality {laterality!r} of image {name!r} is not L or R")
    gradable = parse_flag(row["gradable"], "gradable", name)
    dme = parse_flag(row["dme"], "dme", name)
    if gradable is None or dme is None:
        raise RowProblem(f"dme and gradable of image {name!r} must be 0 or 1, not empty")
    return {"grade": parse_grade(row["grade"], "grade", name), "dme": dme, "gradable": gradable,
            "laterality": laterality, "patient": row["patient"] or None}


def _label_fields(row: dict[str, str], name: str) -> dict[str, Any]:
    patient, laterality = parse_eyepacs_name(name)
    return {"grade": parse_grade(row["level"], "level", name), "patient": patient, "laterality": laterality}


def _lesions(root: Path, images: set[str]) -> dict[str, list[LesionBox]] | None:
    """Lesions per image id from ``lesions.json`` (preferred) or ``lesions.csv``; ``None`` without either."""
    problems = Problems(f"{LAYOUT} at {root}")
    out: dict[str, list[LesionBox]] = {}
    if (root / LESIONS_JSON).is_file():
        for entry in parse_coco(root / LESIONS_JSON, ignore=frozenset()):
            stem = Path(entry.file_name).stem
            if stem not in images:
                problems.add(str(root / LESIONS_JSON), f"image {entry.file_name!r} is not in the label file")
            out[stem] = list(entry.lesions)
    elif (root / LESIONS_CSV).is_file():
        for where, row in csv_rows(root / LESIONS_CSV, ("image", *LESION_COLUMNS)):
            try:
                if row["image"] not in images:
                    raise RowProblem(f"image {row['image']!r} is not in the label file")
                x0, y0, x1, y1 = (float(row[k]) for k in ("x0", "y0", "x1", "y1"))
                out.setdefault(row["image"], []).append(LesionBox(row["type"], (x0, y0, x1, y1)))
            except (RowProblem, ValueError) as exc:  # LesionBox's ValueError names the bad type or box
                problems.add(where, str(exc))
    else:
        return None
    problems.raise_if_any()
    return out
