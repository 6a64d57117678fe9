"""A folder of DICOM photographs with a grades table keyed by SOP Instance UID.

Layout
------
``root/grades.csv`` with the header ``sop_instance_uid,grade`` and optionally ``dme`` and ``gradable``
(``0``/``1``, empty for "not given"); ``grade`` is 0-4, or empty for an image without a grade. DICOM Part 10
files anywhere under ``root`` (any name; files that are not DICOM are skipped unless they end in ``.dcm``,
which must be DICOM; ``DICOMDIR`` is skipped).

Only headers are read (``stop_before_pixels``). Each DICOM file gives one record, in path order:
``image`` = the ``.dcm`` file (the training loader decodes it), ``grade``/``dme``/``gradable`` from its
``grades.csv`` row (``None`` when the file has no row), ``laterality`` from ImageLaterality (0020,0062), else
Laterality (0020,0060) (``"B"``/``"U"``/absent → ``None``), ``patient`` = the first 16 hex digits of the
SHA-256 of PatientID (0010,0020) — a pseudonymous key that keeps a patient's images together without putting
the hospital's identifier in records, logs or checkpoints — or ``None`` when PatientID is empty.

Problems (reported together): a ``grades.csv`` row whose UID no file carries, two rows or two files with one
UID, a bad grade or flag, a ``.dcm`` that is not DICOM or has no SOPInstanceUID. Messages quote UIDs and file
names, never patient attributes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from datasets.readers.common import check_name, csv_rows, line_of, parse_flag, parse_grade, require_file
from datasets.readers.errors import Problems, RowProblem
from datasets.readers.record import FundusRecord

GRADES_CSV = "grades.csv"
UID, GRADE, DME, GRADABLE = "sop_instance_uid", "grade", "dme", "gradable"
#: Hex digits of SHA-256(PatientID) kept as the patient key (64 bits: collisions are negligible).
PATIENT_KEY_HEX = 16
_TAGS = ["SOPInstanceUID", "PatientID", "ImageLaterality", "Laterality"]


def patient_key(patient_id: str) -> str | None:
    """The pseudonymous patient key of a PatientID (``None`` for an empty one)."""
    patient_id = patient_id.strip()
    if not patient_id:
        return None
    return hashlib.sha256(patient_id.encode("utf-8")).hexdigest()[:PATIENT_KEY_HEX]


def _laterality(ds: pydicom.Dataset) -> str | None:
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(ds.get(keyword, "") or "").strip().upper()
        if value in ("L", "R"):
            return value
    return None


def read_dicom_folder(root: Path) -> list[FundusRecord]:
    """One :class:`FundusRecord` per DICOM file under ``root`` (see the module docstring)."""
    root = Path(root)
    grades_csv = root / GRADES_CSV
    require_file(grades_csv, "DICOM folder (grades.csv keyed by sop_instance_uid + DICOM files)")
    problems = Problems(f"DICOM folder {root}")

    labels: dict[str, tuple[str, dict[str, Any]]] = {}  # uid -> (where, label fields)
    seen: dict[str, int] = {}
    for where, row in csv_rows(grades_csv, (UID, GRADE)):
        uid = row[UID]
        try:
            check_name(uid, line_of(where), seen)
            fields = {"grade": parse_grade(row[GRADE], GRADE, uid) if row[GRADE] else None,
                      "dme": parse_flag(row.get(DME, ""), DME, uid),
                      "gradable": parse_flag(row.get(GRADABLE, ""), GRADABLE, uid)}
        except RowProblem as exc:
            problems.add(where, str(exc).replace("image ", "sop_instance_uid ", 1))
            continue
        labels[uid] = (where, fields)

    records: list[FundusRecord] = []
    files: dict[str, Path] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path == grades_csv or path.name.startswith(".") or path.name.upper() == "DICOMDIR":
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
        # pydicom raises many exception types on corrupt files: report them, never crash.
        except Exception as exc:  # noqa: BLE001
            if path.suffix.lower() == ".dcm" or not isinstance(exc, InvalidDicomError):
                problems.add(str(path), f"not a readable DICOM Part 10 file ({type(exc).__name__})")
            continue
        uid = str(ds.get("SOPInstanceUID", "") or "").strip()
        if not uid:
            problems.add(str(path), "has no SOPInstanceUID (0008,0018)")
            continue
        if uid in files:
            problems.add(str(path), f"SOPInstanceUID {uid} is also that of {files[uid]}")
            continue
        files[uid] = path
        _, fields = labels.get(uid, ("", {"grade": None}))
        records.append(FundusRecord(image=path, laterality=_laterality(ds),  # type: ignore[arg-type]
                                    patient=patient_key(str(ds.get("PatientID", "") or "")), source="dicom",
                                    **fields))
    for uid, (where, _) in labels.items():
        if uid not in files:
            problems.missing(where, uid, f"the DICOM files under {root} (matched by SOPInstanceUID)")
    problems.raise_if_any()
    return records
