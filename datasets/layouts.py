"""Readers for the public diabetic-retinopathy dataset layouts (besides EyePACS, see :mod:`datasets.eyepacs`).

Every reader takes the dataset root and returns, in file order, one ``(image path, ICDR grade 0-4)`` per
labelled image. Images named without an extension are found by trying :data:`datasets.images.IMAGE_EXTENSIONS`
in order (``.jpeg .jpg .png .tif .tiff``).

Errors: a missing labels file raises ``FileNotFoundError``; a header lacking a needed column, an empty image
name, an image listed twice, a grade that is not an integer 0-4 or an image that cannot be found raises
``ValueError`` with a message of the form ``<csv path>:<line>: <what is wrong>`` (line 1 is the header).

Layouts
-------
* :func:`read_aptos` — APTOS 2019 Blindness Detection (Kaggle): ``train.csv`` with ``id_code,diagnosis``,
  images ``train_images/<id_code>.png``.
* :func:`read_messidor2` — Messidor-2 with the adjudicated grades of Krause et al. 2018 (Kaggle
  "messidor2" layout): ``messidor_data.csv`` with ``image_id,adjudicated_dr_grade,adjudicated_dme,
  adjudicated_gradable``, images under ``IMAGES/`` (or ``messidor-2/preprocess/``, or the root).
* :func:`read_idrid` — IDRiD sub-challenge B, Disease Grading (Porwal et al. 2018): ``B. Disease Grading/
  2. Groundtruths/{a. IDRiD_Disease Grading_Training Labels.csv | b. IDRiD_Disease Grading_Testing Labels.csv}``
  with ``Image name,Retinopathy grade,Risk of macular edema``, images ``B. Disease Grading/1. Original Images/
  {a. Training Set | b. Testing Set}/<name>.jpg``.
* :func:`read_folders` — torchvision ``ImageFolder`` style: ``root/<grade>/<any image>`` for grades ``0``..``4``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from datasets.images import GRADES, IMAGE_EXTENSIONS, csv_rows, find_image, parse_grade, require_file

APTOS_CSV = "train.csv"
APTOS_IMAGES = "train_images"

MESSIDOR2_CSV = "messidor_data.csv"
#: Sub-folders searched, in order, for Messidor-2 images (then the root itself).
MESSIDOR2_IMAGE_DIRS: tuple[str, ...] = ("IMAGES", "messidor-2/preprocess")

IDRID_DIR = "B. Disease Grading"
IDRID_LABELS = {
    "train": "2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv",
    "test": "2. Groundtruths/b. IDRiD_Disease Grading_Testing Labels.csv",
}
IDRID_IMAGES = {
    "train": "1. Original Images/a. Training Set",
    "test": "1. Original Images/b. Testing Set",
}


def _locate(dirs: Sequence[Path], name: str) -> Path | None:
    """The image ``name`` in the first of ``dirs`` holding it: as given (if it has an extension), else with
    each of :data:`IMAGE_EXTENSIONS` appended, else with its extension replaced by each of them."""
    stem = Path(name).stem if Path(name).suffix else None
    for folder in dirs:
        if stem is not None and (folder / name).is_file():
            return folder / name
        found = find_image(folder, name) or (find_image(folder, stem) if stem else None)
        if found is not None:
            return found
    return None


def _not_found(where: str, name: str, dirs: Sequence[Path]) -> ValueError:
    folders = ", ".join(str(d) for d in dirs)
    return ValueError(f"{where}: image {name!r} not found in {folders} (tried {', '.join(IMAGE_EXTENSIONS)})")


def _check_name(where: str, name: str, seen: dict[str, int]) -> None:
    if not name:
        raise ValueError(f"{where}: empty image name")
    if name in seen:
        raise ValueError(f"{where}: image {name!r} already listed on line {seen[name]}")
    seen[name] = int(where.rsplit(":", 1)[1])


def _read_csv_layout(path: Path, layout: str, name_col: str, grade_col: str, dirs: Sequence[Path], *,
                     extra_cols: tuple[str, ...] = (),
                     skip: Callable[[str, dict[str, str], str], bool] | None = None) -> list[tuple[Path, int]]:
    """Shared body of the one-row-per-image CSV layouts (APTOS, IDRiD, Messidor-2). ``skip(where, row, name)``
    may drop a row (after its name was checked) or raise ``ValueError`` for a malformed one."""
    require_file(path, layout)
    items: list[tuple[Path, int]] = []
    seen: dict[str, int] = {}
    for where, row in csv_rows(path, (name_col, grade_col, *extra_cols)):
        name = row[name_col]
        _check_name(where, name, seen)
        if skip is not None and skip(where, row, name):
            continue
        grade = parse_grade(row[grade_col], where, grade_col, name)
        image = _locate(dirs, name)
        if image is None:
            raise _not_found(where, name, dirs)
        items.append((image, grade))
    return items


def read_aptos(root: Path) -> list[tuple[Path, int]]:
    """APTOS 2019 Blindness Detection: ``root/train.csv`` (``id_code,diagnosis``), ``root/train_images/<id>.png``.

    ``diagnosis`` is the ICDR grade 0-4. Any of the usual extensions is accepted for the images.
    """
    root = Path(root)
    return _read_csv_layout(root / APTOS_CSV, "APTOS 2019 (train.csv + train_images/)", "id_code", "diagnosis",
                            [root / APTOS_IMAGES])


def read_messidor2(root: Path, *, images: str | None = None) -> list[tuple[Path, int]]:
    """Messidor-2 with adjudicated grades: ``root/messidor_data.csv``.

    Columns ``image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable`` (Krause et al.,
    Ophthalmology 2018; only the first two and the last are used). **Rows with ``adjudicated_gradable`` equal to
    0 or with an empty ``adjudicated_dr_grade`` are skipped** (the four ungradable images of the published
    table); an empty ``adjudicated_gradable`` counts as gradable. Grades may be written ``2`` or ``2.0``.

    ``image_id`` usually carries its extension (``20051020_43808_0100_PP.png``, ``IM002385.JPG``); it is looked
    up as given, then with each usual extension appended, then with its extension replaced by each of them.
    Folders searched, in order: ``root/<images>`` when ``images`` is given, else ``root/IMAGES`` and
    ``root/messidor-2/preprocess``; then ``root`` itself.
    """
    root = Path(root)
    subdirs = (images,) if images is not None else MESSIDOR2_IMAGE_DIRS
    dirs = [root / d for d in subdirs] + [root]
    grade_col, gradable_col = "adjudicated_dr_grade", "adjudicated_gradable"

    def ungradable(where: str, row: dict[str, str], name: str) -> bool:
        text = row[gradable_col]
        if text:
            try:
                gradable = float(text)
            except ValueError:
                gradable = -1.0
            if gradable not in (0.0, 1.0):
                raise ValueError(f"{where}: {gradable_col} {text!r} of image {name!r} is not 0 or 1")
            if gradable == 0.0:
                return True
        return not row[grade_col]

    return _read_csv_layout(root / MESSIDOR2_CSV, "Messidor-2 (messidor_data.csv + IMAGES/)", "image_id", grade_col,
                            dirs, extra_cols=(gradable_col,), skip=ungradable)


def read_idrid(root: Path, *, split: str = "train") -> list[tuple[Path, int]]:
    """IDRiD Disease Grading (sub-challenge B), ``split`` ``"train"`` (default) or ``"test"``.

    Labels: ``root/B. Disease Grading/2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv`` (``b. ...
    Testing Labels.csv`` for the test split) with the columns ``Image name,Retinopathy grade,Risk of macular
    edema`` — header names are stripped (the published header has a trailing space) and the empty trailing
    columns/rows of the published CSVs are ignored. Images: ``root/B. Disease Grading/1. Original Images/
    a. Training Set/<name>.jpg`` (``b. Testing Set``). ``root`` may also be the ``B. Disease Grading`` folder.
    """
    if split not in IDRID_LABELS:
        raise ValueError(f"IDRiD split must be one of {', '.join(IDRID_LABELS)}, got {split!r}")
    root = Path(root)
    base = root / IDRID_DIR
    if not base.is_dir() and (root / "2. Groundtruths").is_dir():
        base = root
    return _read_csv_layout(base / IDRID_LABELS[split], f"IDRiD Disease Grading, {split} split",
                            "Image name", "Retinopathy grade", [base / IDRID_IMAGES[split]])


def read_folders(root: Path) -> list[tuple[Path, int]]:
    """ImageFolder layout: ``root/0/*`` .. ``root/4/*``, the folder name being the ICDR grade.

    Files whose extension (any case) is one of :data:`IMAGE_EXTENSIONS` are returned, grade by grade, in name
    order; other files and hidden or non-numeric folders are ignored. ``FileNotFoundError`` when ``root`` has
    none of the folders ``0``-``4``; ``ValueError`` for a numeric folder outside 0-4 or when no image is found.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no directory {root} (expected the folders layout: {root}/0 .. {root}/4)")
    for child in sorted(root.iterdir()):
        if child.is_dir() and child.name.isdigit() and int(child.name) not in GRADES:
            raise ValueError(f"{child}: folder name {child.name!r} is not a grade 0-4")
    grade_dirs = [(g, root / str(g)) for g in GRADES if (root / str(g)).is_dir()]
    if not grade_dirs:
        raise FileNotFoundError(f"no grade folders 0-4 in {root} (expected the folders layout: {root}/0 .. {root}/4)")
    items = [
        (p, grade)
        for grade, folder in grade_dirs
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    ]
    if not items:
        raise ValueError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the grade folders 0-4")
    return items
