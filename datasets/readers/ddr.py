"""DDR (Li et al., Information Sciences 2019; the ``DDR-dataset`` of nkicsl): grading and lesion boxes.

Layout (``root`` is ``DDR-dataset`` or the folder holding it)
------------------------------------------------------------
Grading::

    DR_grading/train.txt  valid.txt  test.txt      one "<image name> <grade>" per line
    DR_grading/train/007-0004-000.jpg ...          (valid/, test/)

Grades 0-4 are ICDR; **5 means ungradable** and gives ``grade=None, gradable=False`` (0-4 give
``gradable=True``). Patient, laterality and DME are not given.

Lesions (Pascal VOC XML, object names ``ma``, ``he``, ``ex``, ``se`` → microaneurysm, haemorrhage,
hard exudate, cotton-wool spot; parsed by :mod:`datasets.readers.voc`)::

    lesion_detection/<split>/<name>.xml             (any *.xml under lesion_segmentation/<split>/ too)
    lesion_segmentation/<split>/image/<name>.jpg    the annotated images

Each XML gives one record with ``grade=None`` and its boxes; its image (the XML's ``<filename>``) is looked for
beside the XML, in ``lesion_segmentation/<split>/image/`` and in ``DR_grading/<split>/``. The segmentation
masks (``lesion_segmentation/<split>/label/*``) are not read: the VOC boxes describe the same lesions.
"""

from __future__ import annotations

from pathlib import Path

from datasets.readers.common import check_name, locate, searched
from datasets.readers.errors import DatasetError, Problems, RowProblem
from datasets.readers.record import GRADES, FundusRecord
from datasets.readers.voc import parse_voc

SPLITS: tuple[str, ...] = ("train", "valid", "test")
UNGRADABLE = 5
_PARTS = ("DR_grading", "lesion_detection", "lesion_segmentation")


def _base(root: Path) -> Path:
    if any((root / p).is_dir() for p in _PARTS):
        return root
    if any((root / "DDR-dataset" / p).is_dir() for p in _PARTS):
        return root / "DDR-dataset"
    raise DatasetError(f"no dataset at {root}: none of {', '.join(_PARTS)} found in it or in "
                       f"{root / 'DDR-dataset'} (expected the DDR layout)")


def read_ddr(root: Path, *, split: str = "train") -> list[FundusRecord]:
    """The grading records of ``split`` (``train``, ``valid`` or ``test``), then its lesion records."""
    if split not in SPLITS:
        raise DatasetError(f"DDR split must be one of {', '.join(SPLITS)}, got {split!r}")
    base = _base(Path(root))
    labels = base / "DR_grading" / f"{split}.txt"
    xmls = sorted((base / "lesion_detection" / split).glob("*.xml"))
    xmls += sorted((base / "lesion_segmentation" / split).rglob("*.xml"))
    if not labels.is_file() and not xmls:
        raise DatasetError(f"no {split} data in {base}: neither {labels} nor VOC XML files under "
                           f"{base / 'lesion_detection' / split} (expected the DDR layout)")
    problems = Problems(f"DDR {split} split at {base}")
    records = _read_grading(labels, base / "DR_grading" / split, problems) if labels.is_file() else []
    image_dirs = [base / "lesion_segmentation" / split / "image", base / "DR_grading" / split]
    for xml in xmls:
        annotation = parse_voc(xml, problems)
        if annotation is None:
            continue
        dirs = [xml.parent, *image_dirs]
        image = locate(dirs, annotation.filename)
        if image is None:
            problems.missing(str(xml), annotation.filename, searched(dirs))
            continue
        records.append(FundusRecord(image=image, grade=None, lesions=annotation.lesions, source="ddr"))
    problems.raise_if_any()
    return records


def _read_grading(labels: Path, images: Path, problems: Problems) -> list[FundusRecord]:
    records: list[FundusRecord] = []
    seen: dict[str, int] = {}
    try:
        lines = labels.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{labels}: not UTF-8 text ({exc.reason})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{labels}:{number}"
        fields = line.split()
        try:
            if len(fields) != 2:
                raise RowProblem(f"expected '<image name> <grade>', got {line.strip()!r}")
            name, text = fields
            check_name(name, number, seen)
            grade = int(text) if text.isdigit() else -1
            if grade not in GRADES and grade != UNGRADABLE:
                raise RowProblem(f"grade {text!r} of image {name!r} is not 0-4 (or 5 for ungradable)")
        except RowProblem as exc:
            problems.add(where, str(exc))
            continue
        image = locate([images], name)
        if image is None:
            problems.missing(where, name, searched([images]))
            continue
        ungradable = grade == UNGRADABLE
        records.append(FundusRecord(image=image, grade=None if ungradable else grade, gradable=not ungradable,
                                    source="ddr"))
    return records
