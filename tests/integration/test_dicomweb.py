"""DICOMweb end to end: the real service (``bentoml serve``) and the dicomweb-client library, as a PACS or a
script would use them: STOW-RS a synthetic fundus photograph, poll its analysis, find the SR with QIDO-RS,
retrieve it with WADO-RS and read the ICDR grade back; resend it and find no duplicate."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest

from tests.integration.conftest import running_service

pytestmark = pytest.mark.integration


def _code_items(ds: pydicom.Dataset) -> Iterator[pydicom.Dataset]:
    """Every CODE content item of an SR content tree, depth first."""
    for item in ds.get("ContentSequence", []):
        if item.get("ValueType") == "CODE":
            yield item
        yield from _code_items(item)


def _sr_grade(sr: pydicom.Dataset) -> int | None:
    """The ICDR grade an SR states (its coded value among analysis.dicom_out's grade codes), None if none."""
    from analysis.dicom_out import GRADE_CODES

    values = {(c.ConceptCodeSequence[0].CodeValue, c.ConceptCodeSequence[0].CodingSchemeDesignator)
              for c in _code_items(sr)}
    grades = [g for g, code in enumerate(GRADE_CODES) if (code.value, code.scheme_designator) in values]
    assert len(grades) <= 1, grades
    return grades[0] if grades else None


def _poll(url: str, uid: str, timeout_s: float = 90) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        r = httpx.get(f"{url}/dicomweb/analyses/{uid}", timeout=10)
        assert r.status_code in (200, 202), r.text[:300]
        if r.status_code == 200:
            return r.json()
        assert time.monotonic() < deadline, f"analysis still {r.json()['state']} after {timeout_s} s"
        time.sleep(0.25)


def test_stow_qido_wado_with_dicomweb_client(tmp_path: Path) -> None:
    web = pytest.importorskip("dicomweb_client", reason="dicomweb-client (dev extra) is not installed")
    from datasets.synthetic.dicom import write_op_dicom
    from datasets.synthetic.fundus import render_fundus

    photo = tmp_path / "fundus.dcm"
    write_op_dicom(render_fundus(np.random.default_rng(5), grade=3, laterality="R", size=512).image, photo,
                   laterality="R", patient_id="DW-PATIENT-7", seed=21)
    source = pydicom.dcmread(photo)
    data_dir = tmp_path / "data"
    with running_service(tmp_path, {"FOVEA_DATA_DIR": str(data_dir)}) as url:
        client = web.DICOMwebClient(url=f"{url}/dicomweb")
        response = client.store_instances([source])
        (ref,) = response.ReferencedSOPSequence
        assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID and "FailedSOPSequence" not in response

        state = _poll(url, source.SOPInstanceUID)
        assert state["state"] == "done", state
        direct = httpx.post(f"{url}/analyze", files={"image": ("f.dcm", photo.read_bytes(), "application/dicom")},
                            timeout=60).json()

        found = client.search_for_instances(study_instance_uid=source.StudyInstanceUID,
                                            search_filters={"Modality": "SR"})
        assert len(found) == 1
        hit = pydicom.Dataset.from_json(found[0])
        sr = client.retrieve_instance(hit.StudyInstanceUID, hit.SeriesInstanceUID, hit.SOPInstanceUID)
        assert sr.Modality == "SR" and sr.StudyInstanceUID == source.StudyInstanceUID
        assert sr.PatientID == "DW-PATIENT-7" and sr.SeriesInstanceUID != source.SeriesInstanceUID
        # The grade in the SR is the one /analyze gives for the same file.
        assert direct["quality"]["gradable"]  # this synthetic photograph is gradable: the SR states a grade
        assert _sr_grade(sr) == direct["dr_grade"]["grade"]
        # The overlay, as Secondary Capture, is in the same study.
        (sc,) = client.search_for_instances(study_instance_uid=source.StudyInstanceUID,
                                            search_filters={"Modality": "OT"})
        assert pydicom.Dataset.from_json(sc).SeriesInstanceUID != source.SeriesInstanceUID

        # Idempotent: sending the same instance again changes nothing.
        client.store_instances([source])
        assert _poll(url, source.SOPInstanceUID)["attempts"] == 1
        assert len(client.search_for_instances(study_instance_uid=source.StudyInstanceUID)) == 2

    # The background analysis is in the audit trail like an /analyze call: the models and the outcome.
    from service.audit import AuditLog
    from service.dicomweb_worker import AUDIT_ENDPOINT

    audit = AuditLog(f"sqlite:///{tmp_path / 'bentoml_home' / 'fovea-audit.sqlite'}")
    (row,) = [r for r in audit.rows() if r["endpoint"] == AUDIT_ENDPOINT]  # the resend was not analysed again
    assert row["status"] == 200 and audit.verify().ok
    assert json.loads(row["models"]) == [{k: m[k] for k in ("name", "version", "sha256")} for m in direct["models"]]
    assert json.loads(row["outcome"])["grade"] == direct["dr_grade"]["grade"]
    assert b"DW-PATIENT-7" not in json.dumps(row).encode()

    # At rest, nothing identifies the patient in clear.
    for path in data_dir.rglob("*"):
        if path.is_file():
            assert b"DW-PATIENT-7" not in path.read_bytes(), path.name
