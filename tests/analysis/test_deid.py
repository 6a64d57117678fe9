"""analysis.deid: each Table E.1-1 action class on a dataset with a marker in every PHI attribute; the written
bytes carry none of the markers, a zeroed preamble and the De-identification Method Code Sequence."""

from __future__ import annotations

import io
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.datadict import dictionary_VR, keyword_dict
from pydicom.sequence import Sequence

from analysis.deid import ACTIONS, TYPE1, DeidentificationError, deidentify, resolve, uid_replacement, write

REPO = Path(__file__).resolve().parents[2]
KEY = b"k" * 32
_VALUE_FOR_VR = {"DA": "20240131", "TM": "101112", "DT": "20240131101112", "AS": "042Y", "IS": "42", "DS": "42.5",
                 "US": 42, "UL": 42, "SS": 42, "FL": 1.5, "FD": 1.5}


def marker(keyword: str) -> str:
    return f"PHI{zlib.crc32(keyword.encode()):010d}"


def fundus(preamble: bytes = b"MZ" + b"\x90" * 126) -> Dataset:
    """An 8-bit Ophthalmic Photography dataset with a marker in every attribute the table names."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = uid.OphthalmicPhotography8BitImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.99.1.1"
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.file_meta.SourceApplicationEntityTitle = "PHISITEAE"
    ds.preamble = preamble
    ds.SOPClassUID = uid.OphthalmicPhotography8BitImageStorage
    ds.Modality = "OP"
    ds.ImageLaterality = "R"
    for keyword in ACTIONS:
        vr = dictionary_VR(keyword_dict[keyword])
        if vr == "SQ":
            item = Dataset()
            item.PatientName = marker(keyword) + "SQ"  # inside the sequence too
            setattr(ds, keyword, Sequence([item]))
        elif vr == "UI":
            setattr(ds, keyword, f"1.2.826.0.1.3680043.99.{zlib.crc32(keyword.encode())}")
        elif vr in _VALUE_FOR_VR:
            setattr(ds, keyword, _VALUE_FOR_VR[vr])
        else:
            setattr(ds, keyword, marker(keyword))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    # A retained sequence holding PHI-named attributes and a nested instance reference.
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "81745001", "SCT", "Eye"
    region.OperatorsName = marker("nested-operator")
    ref = Dataset()
    ref.ReferencedSOPClassUID = uid.OphthalmicPhotography8BitImageStorage
    ref.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.99.7.7"
    region.ReferencedImageSequence = Sequence([ref])
    ds.AnatomicRegionSequence = Sequence([region])
    ds.add_new(0x00091010, "LO", marker("private"))  # private creator-less private tag
    ds.add_new(0x60003000, "OW", b"\x01" * 8)  # Overlay Data
    ds.add_new(0x60004000, "LT", marker("overlay-comment"))
    ds.add_new(0x50000022, "LO", marker("curve"))  # Curve Description
    ds.set_pixel_data(np.zeros((8, 8, 3), np.uint8), "RGB", 8, generate_instance_uid=False)
    return ds


def written(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    write(ds, buf)
    return buf.getvalue()


def test_every_table_keyword_is_a_dicom_keyword_and_every_action_is_valid() -> None:
    assert all(k in keyword_dict for k in ACTIONS)
    assert all(set(a.split("/")) <= {"X", "Z", "D", "U", "K"} for a in ACTIONS.values())


def test_compound_actions_resolve_per_the_iod() -> None:
    assert resolve("InstitutionName", "X/Z/D") == "X"
    assert resolve("ContentDate", "Z/D") == "D" and "ContentDate" in TYPE1
    assert resolve("ReferencedStudySequence", "X/Z") == "Z"
    assert resolve("PatientName", "Z") == "Z"


def test_x_removes() -> None:
    out = deidentify(fundus(), key=KEY)
    for keyword in ("InstitutionName", "PatientAddress", "StudyDescription", "OtherPatientIDsSequence",
                    "PatientAge", "OperatorsName", "RequestAttributesSequence", "ContentSequence"):
        assert keyword not in out, keyword


def test_z_empties_but_keeps() -> None:
    out = deidentify(fundus(), key=KEY)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyDate", "StudyID",
                    "ReferringPhysicianName"):
        assert keyword in out and out[keyword].value in ("", None), keyword
    assert "ReferencedStudySequence" in out and len(out.ReferencedStudySequence) == 0


def test_d_replaces_with_dummies_of_the_same_vr() -> None:
    out = deidentify(fundus(), key=KEY)
    assert out.ContentDate == "19000101" and out.ContentTime == "000000"
    assert out.AcquisitionDateTime == "19000101000000"
    assert str(out.VerifyingObserverName) == "ANONYMOUS" and str(out.PersonName) == "ANONYMOUS"
    assert len(out.VerifyingObserverSequence) == 1 and "PatientName" not in out.VerifyingObserverSequence[0]


def test_u_replaces_uids_consistently_and_keeps_class_uids() -> None:
    src = fundus()
    out = deidentify(src, key=KEY)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        assert out[keyword].value == uid_replacement(src[keyword].value, KEY) != src[keyword].value
        assert out[keyword].value.startswith("2.25.") and len(out[keyword].value) <= 64
    assert out.SOPClassUID == src.SOPClassUID
    nested = out.AnatomicRegionSequence[0].ReferencedImageSequence[0]
    assert nested.ReferencedSOPInstanceUID == uid_replacement("1.2.826.0.1.3680043.99.7.7", KEY)
    assert nested.ReferencedSOPClassUID == uid.OphthalmicPhotography8BitImageStorage
    # same key, same mapping (a study stays a study); another key, another mapping
    assert deidentify(src, key=KEY).StudyInstanceUID == out.StudyInstanceUID
    assert deidentify(src, key=b"other").StudyInstanceUID != out.StudyInstanceUID


def test_retain_uids_option_keeps_them_and_says_so() -> None:
    src = fundus()
    out = deidentify(src, retain_uids=True)
    assert out.StudyInstanceUID == src.StudyInstanceUID and out.SOPInstanceUID == src.SOPInstanceUID
    codes = [(c.CodeValue, c.CodingSchemeDesignator) for c in out.DeidentificationMethodCodeSequence]
    assert codes == [("113100", "DCM"), ("113110", "DCM")]


def test_private_curves_overlays_go_and_the_method_is_recorded() -> None:
    out = deidentify(fundus(), key=KEY)
    assert not any(e.tag.is_private for e in out.iterall())
    assert not any((e.tag.group & 0xFF00) in (0x5000, 0x6000) for e in out.iterall())
    assert out.PatientIdentityRemoved == "YES"
    assert "PS3.15" in out.DeidentificationMethod and len(out.DeidentificationMethod) <= 64
    assert [c.CodeValue for c in out.DeidentificationMethodCodeSequence] == ["113100"]
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    assert out.pixel_array.shape == (8, 8, 3)  # the image itself is kept


def test_no_marker_survives_in_the_written_bytes_and_the_preamble_is_zero() -> None:
    src = fundus()
    raw_src = io.BytesIO()
    src.save_as(raw_src, enforce_file_format=True)
    markers = [marker(k) for k in ACTIONS] + [marker(k) for k in ("nested-operator", "private", "overlay-comment",
                                                                   "curve")]
    present = [m for m in markers if m.encode() in raw_src.getvalue()]
    assert len(present) > 40  # the test would catch them: they are in the source bytes
    data = written(deidentify(src, key=KEY))
    assert [m for m in markers if m.encode() in data] == []
    assert b"PHISITEAE" not in data and b"1.2.826.0.1.3680043.99.1.1" not in data
    assert data[:128] == b"\x00" * 128 and data[128:132] == b"DICM"
    back = pydicom.dcmread(io.BytesIO(data))
    assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID


def test_the_input_is_not_modified() -> None:
    src = fundus()
    deidentify(src, key=KEY)
    assert str(src.PatientName) == marker("PatientName") and src.preamble[:2] == b"MZ"


def test_burned_in_annotation_is_refused() -> None:
    ds = fundus()
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(DeidentificationError, match="Clean Pixel Data"):
        deidentify(ds)


def test_cli(tmp_path: Path) -> None:
    src = tmp_path / "in.dcm"
    fundus().save_as(src, enforce_file_format=True)
    out = tmp_path / "out.dcm"
    r = subprocess.run([sys.executable, "-m", "analysis.deid", str(src), str(out)], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    data = out.read_bytes()
    assert data[:128] == b"\x00" * 128 and marker("PatientName").encode() not in data
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not dicom " + marker("PatientName").encode())
    r = subprocess.run([sys.executable, "-m", "analysis.deid", str(bad), str(tmp_path / "x.dcm")], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and marker("PatientName") not in r.stderr
