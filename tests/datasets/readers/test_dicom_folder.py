"""DICOM folder + grades.csv keyed by SOPInstanceUID: headers only, laterality, pseudonymous patient key."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from datasets.readers import DatasetError
from datasets.readers.dicom_folder import read_dicom_folder
from tests.datasets.readers.helpers import rel, write_dicom, write_text


def test_layout(tmp_path: Path) -> None:
    write_text(tmp_path / "grades.csv", "sop_instance_uid,grade,dme,gradable\n1.2.3.1,2,1,1\n1.2.3.2,,,0\n1.2.3.3,4,,\n")
    write_dicom(tmp_path / "p1" / "a.dcm", sop_instance_uid="1.2.3.1", patient_id="MRN-0042", image_laterality="L")
    write_dicom(tmp_path / "p1" / "IM0002", sop_instance_uid="1.2.3.2", patient_id="MRN-0042", laterality="R")
    write_dicom(tmp_path / "p2" / "c.dcm", sop_instance_uid="1.2.3.3", patient_id="", image_laterality="B")
    write_dicom(tmp_path / "p2" / "d.dcm", sop_instance_uid="1.2.3.4", patient_id="other")  # no row: no grade
    write_text(tmp_path / "README.txt", "not DICOM, not .dcm: skipped")
    records = read_dicom_folder(tmp_path)
    assert rel(records, tmp_path) == ["p1/IM0002", "p1/a.dcm", "p2/c.dcm", "p2/d.dcm"]
    key = hashlib.sha256(b"MRN-0042").hexdigest()[:16]
    assert [(r.grade, r.dme, r.gradable, r.laterality, r.patient) for r in records] == [
        (None, None, False, "R", key), (2, True, True, "L", key), (4, None, None, None, None),
        (None, None, None, None, hashlib.sha256(b"other").hexdigest()[:16])]
    assert all(r.source == "dicom" and r.lesions is None for r in records)
    assert not any("MRN-0042" in repr(r) for r in records)  # no hospital identifier in a record


def test_problems_reported_together_without_patient_data(tmp_path: Path) -> None:
    write_text(tmp_path / "grades.csv",
               "sop_instance_uid,grade\n1.2.3.1,7\n1.2.3.1,1\n9.9.9.1,0\n9.9.9.2,1\n1.2.3.5,x\n")
    write_dicom(tmp_path / "a.dcm", sop_instance_uid="1.2.3.1", patient_id="MRN-0042")
    write_dicom(tmp_path / "copy.dcm", sop_instance_uid="1.2.3.1", patient_id="MRN-0042")
    write_text(tmp_path / "broken.dcm", "this is not DICOM")
    with pytest.raises(DatasetError) as info:
        read_dicom_folder(tmp_path)
    msg, csv = str(info.value), tmp_path / "grades.csv"
    assert msg.startswith(f"DICOM folder {tmp_path}: 7 problems (2 images not found):")
    assert f"{csv}:2: grade 7 of sop_instance_uid '1.2.3.1' is outside 0-4" in msg
    assert f"{csv}:3: sop_instance_uid '1.2.3.1' already listed on line 2" in msg
    assert f"{csv}:6: grade 'x' of sop_instance_uid '1.2.3.5' is not an integer 0-4" in msg
    assert f"{tmp_path / 'broken.dcm'}: not a readable DICOM Part 10 file" in msg
    assert f"{tmp_path / 'copy.dcm'}: SOPInstanceUID 1.2.3.1 is also that of {tmp_path / 'a.dcm'}" in msg
    assert f"{csv}:4: image '9.9.9.1' not found" in msg and f"{csv}:5: image '9.9.9.2' not found" in msg
    assert "matched by SOPInstanceUID" in msg
    assert "MRN-0042" not in msg and "Doe" not in msg


def test_missing_grades_csv_and_bad_header(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"grades\.csv not found \(expected the DICOM folder"):
        read_dicom_folder(tmp_path)
    write_text(tmp_path / "grades.csv", "uid,grade\n1.2,1\n")
    with pytest.raises(DatasetError, match=r"grades\.csv:1: header lacks column\(s\) sop_instance_uid"):
        read_dicom_folder(tmp_path)
