"""IDRiD (Indian Diabetic Retinopathy Image Dataset, Porwal et al. 2018): disease grading and lesion masks.

Layout (as published; ``root`` is the folder holding ``A. Segmentation`` and/or ``B. Disease Grading``, or
``B. Disease Grading`` itself)
-----------------------------------------------------------------------------------------------------------
Grading (sub-challenge B)::

    B. Disease Grading/1. Original Images/a. Training Set/IDRiD_001.jpg      (b. Testing Set for "test")
    B. Disease Grading/2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv
    B. Disease Grading/2. Groundtruths/b. IDRiD_Disease Grading_Testing Labels.csv

with the header ``Image name,Retinopathy grade,Risk of macular edema `` — the published header has a trailing
space and empty trailing columns and rows; all are tolerated. Records: ``grade`` = Retinopathy grade,
``dme`` = risk of macular edema > 0; patient, laterality, quality and lesions are not given (``None``).

Segmentation (sub-challenge A)::

    A. Segmentation/1. Original Images/a. Training Set/IDRiD_01.jpg
    A. Segmentation/2. All Segmentation Groundtruths/a. Training Set/1. Microaneurysms/IDRiD_01_MA.tif
                                                                    2. Haemorrhages/IDRiD_01_HE.tif
                                                                    3. Hard Exudates/IDRiD_01_EX.tif
                                                                    4. Soft Exudates/IDRiD_01_SE.tif
                                                                    5. Optic Disc/IDRiD_01_OD.tif (ignored)

One record per original image, ``grade=None`` (the segmentation images are not graded) and ``lesions`` = the
boxes of the 8-connected components of each mask (soft exudates are cotton-wool spots). A missing mask means
no lesion of that type (IDRiD ships masks only for the types present), so every segmentation image has
``lesions`` (possibly ``()``). A mask whose size differs from its image, an unreadable mask or a mask without
an image is a problem.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import cv2
from PIL import Image
from tqdm import tqdm

from datasets.readers.common import parse_grade, read_csv_layout
from datasets.readers.errors import DatasetError, Problems, RowProblem
from datasets.readers.lesions import mask_boxes
from datasets.readers.record import FundusRecord, LesionBox

GRADING_DIR = "B. Disease Grading"
GRADING_LABELS = {
    "train": "2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv",
    "test": "2. Groundtruths/b. IDRiD_Disease Grading_Testing Labels.csv",
}
GRADING_IMAGES = {"train": "1. Original Images/a. Training Set", "test": "1. Original Images/b. Testing Set"}

SEGMENTATION_DIR = "A. Segmentation"
SEGMENTATION_IMAGES = {"train": "1. Original Images/a. Training Set", "test": "1. Original Images/b. Testing Set"}
SEGMENTATION_MASKS = {"train": "2. All Segmentation Groundtruths/a. Training Set",
                      "test": "2. All Segmentation Groundtruths/b. Testing Set"}
#: Mask folder and file suffix of each canonical lesion type (``5. Optic Disc``/``_OD`` is anatomy: not read).
MASKS: dict[str, tuple[str, str]] = {
    "microaneurysm": ("1. Microaneurysms", "MA"),
    "haemorrhage": ("2. Haemorrhages", "HE"),
    "hard_exudate": ("3. Hard Exudates", "EX"),
    "cotton_wool_spot": ("4. Soft Exudates", "SE"),
}
SPLITS: tuple[str, ...] = ("train", "test")
GRADE, DME = "Retinopathy grade", "Risk of macular edema"


def read_idrid(root: Path, *, split: str = "train") -> list[FundusRecord]:
    """The grading records, then the segmentation records, of ``split`` (``"train"`` or ``"test"``).

    Either part may be absent; :class:`DatasetError` when both are.
    """
    if split not in SPLITS:
        raise DatasetError(f"IDRiD split must be one of {', '.join(SPLITS)}, got {split!r}")
    root = Path(root)
    grading = root / GRADING_DIR
    if not grading.is_dir() and (root / "2. Groundtruths").is_dir():
        grading = root  # root is the "B. Disease Grading" folder itself
    segmentation = root / SEGMENTATION_DIR
    labels = grading / GRADING_LABELS[split]
    has_grading, has_segmentation = labels.is_file(), (segmentation / SEGMENTATION_IMAGES[split]).is_dir()
    if not has_grading and not has_segmentation:
        raise DatasetError(f"no dataset at {root}: neither {labels} nor {segmentation / SEGMENTATION_IMAGES[split]} "
                           f"exists (expected the IDRiD layout: '{GRADING_DIR}' and/or "
                           f"'{SEGMENTATION_DIR}')")
    records = _read_grading(labels, grading / GRADING_IMAGES[split], split) if has_grading else []
    if has_segmentation:
        records += _read_segmentation(segmentation, split)
    return records


def _read_grading(labels: Path, images: Path, split: str) -> list[FundusRecord]:
    def fields(row: dict[str, str], name: str) -> dict[str, Any]:
        grade = parse_grade(row[GRADE], GRADE, name)
        try:
            risk = float(row[DME])
        except ValueError:
            risk = math.nan
        if risk not in (0.0, 1.0, 2.0):
            raise RowProblem(f"{DME} {row[DME]!r} of image {name!r} is not 0, 1 or 2")
        return {"grade": grade, "dme": risk > 0}

    return read_csv_layout(labels, layout=f"IDRiD Disease Grading, {split} split", source="idrid",
                           name_col="Image name", required=(GRADE, DME), dirs=[images], fields=fields)


def _read_segmentation(segmentation: Path, split: str) -> list[FundusRecord]:
    image_dir = segmentation / SEGMENTATION_IMAGES[split]
    mask_dir = segmentation / SEGMENTATION_MASKS[split]
    problems = Problems(f"IDRiD Segmentation, {split} split, at {segmentation}")
    images = sorted(p for p in image_dir.iterdir() if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg")
                    and not p.name.startswith("."))
    stems = {p.stem for p in images}
    for kind, (folder, suffix) in MASKS.items():  # masks of images that do not exist: a broken copy
        for mask in sorted((mask_dir / folder).glob(f"*_{suffix}.tif")):
            if mask.name[: -len(f"_{suffix}.tif")] not in stems:
                problems.missing(str(mask), mask.name[: -len(f"_{suffix}.tif")] + ".jpg", str(image_dir))
    records: list[FundusRecord] = []
    for image in tqdm(images, desc=f"IDRiD {split} masks", unit="img", leave=False, disable=len(images) < 10):
        try:
            with Image.open(image) as im:  # the header only: the size the masks must have
                width, height = im.size
        except OSError:
            problems.add(str(image), "cannot be read as an image")
            continue
        lesions: list[LesionBox] = []
        for kind, (folder, suffix) in MASKS.items():
            mask_path = mask_dir / folder / f"{image.stem}_{suffix}.tif"
            if not mask_path.is_file():
                continue  # IDRiD ships a mask only when the image has lesions of that type
            mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
            if mask is None:
                problems.add(str(mask_path), "cannot be read as an image")
                continue
            if mask.shape[:2] != (height, width):
                problems.add(str(mask_path), f"is {mask.shape[1]}x{mask.shape[0]} but its image {image.name} is "
                                             f"{width}x{height}")
                continue
            lesions += [LesionBox(kind, box) for box in mask_boxes(mask)]
        records.append(FundusRecord(image=image, grade=None, lesions=tuple(lesions), source="idrid"))
    problems.raise_if_any()
    return records
