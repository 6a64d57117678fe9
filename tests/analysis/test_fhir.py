"""analysis.fhir: the FHIR Bundle of real Analyzer findings validates against fhir.resources' R4B models and
carries every finding, the ImagingStudy reference and the AI-output statement."""

from __future__ import annotations

import json
from typing import Any

import pytest

from analysis.dicom_out import GRADE_CODES, build_results
from analysis.fhir import LOINC_GRADE_ANSWERS, SYSTEMS, fhir_report
from analysis.findings import Findings
from analysis.pipeline import Analyzer
pytest.register_assert_rewrite("tests.analysis.results_cases")
from tests.analysis.results_cases import header

#: The shared fixtures (analyzer, lesion_analyzer, op_dicom, dark_dicom, jpeg_upload, fundus).
pytest_plugins = ("tests.analysis.results_cases",)

R4B = pytest.importorskip("fhir.resources.R4B.bundle", reason="fhir.resources (dev extra) is not installed")


#: Required bindings the models do not check (FHIR R4 value sets observation-status, diagnostic-report-status,
#: bundle-type, device-nametype).
OBSERVATION_STATUS = {"registered", "preliminary", "final", "amended", "corrected", "cancelled",
                      "entered-in-error", "unknown"}
REPORT_STATUS = {"registered", "partial", "preliminary", "final", "amended", "corrected", "appended",
                 "cancelled", "entered-in-error", "unknown"}
DEVICE_NAME_TYPE = {"udi-label-name", "user-friendly-name", "patient-reported-name", "manufacturer-name",
                    "model-name", "other"}


def _validate(bundle: dict[str, Any]) -> dict[str, Any]:
    """Round-trip through JSON and the R4B Bundle model (which validates every contained resource's structure,
    cardinalities and primitive formats), then the required code bindings the models leave out."""
    text = json.dumps(bundle)
    model = R4B.Bundle.model_validate_json(text)
    kinds = {e.resource.get_resource_type() for e in model.entry}
    assert kinds >= {"DiagnosticReport", "Observation", "Device"}
    out = json.loads(text)
    assert out["type"] in {"document", "message", "transaction", "transaction-response", "batch",
                           "batch-response", "history", "searchset", "collection"}
    assert all(o["status"] in OBSERVATION_STATUS for o in _resources(out, "Observation"))
    assert all(r["status"] in REPORT_STATUS for r in _resources(out, "DiagnosticReport"))
    assert all(n["type"] in DEVICE_NAME_TYPE for d in _resources(out, "Device") for n in d["deviceName"])
    return out


def _resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def _by_code(bundle: dict[str, Any], code: str) -> list[dict[str, Any]]:
    return [o for o in _resources(bundle, "Observation")
            if any(c["code"] == code for c in o["code"]["coding"])]


def _codes(concept: dict[str, Any]) -> set[tuple[str, str]]:
    return {(c["system"], c["code"]) for c in concept["coding"]}


def test_dicom_source_with_lesions(lesion_analyzer: Analyzer, op_dicom: bytes) -> None:
    f: Findings = lesion_analyzer.analyze(op_dicom)
    source = header(op_dicom)
    bundle = _validate(fhir_report(f, source))
    (report,) = _resources(bundle, "DiagnosticReport")
    assert report["status"] == "preliminary"
    assert report["imagingStudy"][0]["identifier"] == {"system": "urn:dicom:uid",
                                                        "value": f"urn:oid:{source.StudyInstanceUID}"}
    assert report["subject"]["identifier"]["value"] == source.PatientID
    assert "synthetic data, not for diagnosis" in report["conclusion"]
    urls = {e["fullUrl"] for e in bundle["entry"]}
    assert all(r["reference"] in urls for r in report["result"])

    (grade,) = _by_code(bundle, "ICDR")
    g = f.dr_grade.grade
    assert (SYSTEMS["LN"], LOINC_GRADE_ANSWERS[g][0]) in _codes(grade["valueCodeableConcept"])
    sct = (SYSTEMS[GRADE_CODES[g].scheme_designator], GRADE_CODES[g].value)
    assert sct in _codes(grade["valueCodeableConcept"])
    assert report["conclusionCode"][0] == grade["valueCodeableConcept"]
    (ref,) = _by_code(bundle, "REFDR")
    assert f.referable_dr is not None
    yes_no = "373066001" if f.referable_dr.value else "373067005"
    assert _codes(ref["valueCodeableConcept"]) == {(SYSTEMS["SCT"], yes_no)}
    p = next(c for c in ref["component"] if c["code"]["coding"][0]["code"] == "PREFDR")
    assert p["valueQuantity"]["value"] == pytest.approx(f.referable_dr.probability, abs=1e-6)
    (quality,) = _by_code(bundle, "111101")
    assert _codes(quality["valueCodeableConcept"]) == {(SYSTEMS["DCM"], "122741")}
    assert f.lesions
    lesion_obs = [o for o in _resources(bundle, "Observation")
                  if any(c["code"]["coding"][0]["code"] == "BOX" for c in o.get("component", []))]
    assert len(lesion_obs) == len(f.lesions)
    boxes = {next(c["valueString"] for c in o["component"] if c["code"]["coding"][0]["code"] == "BOX")
             for o in lesion_obs}
    assert boxes == {", ".join(f"{v:g}" for v in les.box) for les in f.lesions}
    devices = _resources(bundle, "Device")
    assert [d["version"][0]["value"] for d in devices] == [m.version for m in f.models]
    for o in _resources(bundle, "Observation"):
        assert o["derivedFrom"] == report["imagingStudy"] and o["bodySite"]["text"] == "right eye"


def test_ungradable_has_no_grade(analyzer: Analyzer, dark_dicom: bytes) -> None:
    f = analyzer.analyze(dark_dicom)
    assert not f.quality.gradable
    bundle = _validate(fhir_report(f, header(dark_dicom)))
    assert _by_code(bundle, "ICDR") == []
    (ref,) = _by_code(bundle, "REFDR")
    assert _codes(ref["valueCodeableConcept"]) == {(SYSTEMS["SCT"], "373068000")}  # Undetermined
    assert any("insufficient image quality" in n["text"] for n in ref["note"])
    (quality,) = _by_code(bundle, "111101")
    assert _codes(quality["valueCodeableConcept"]) == {(SYSTEMS["DCM"], "111235")}
    (report,) = _resources(bundle, "DiagnosticReport")
    assert "conclusionCode" not in report and "Ungradable" in report["conclusion"]


def test_jpeg_upload_points_at_the_results_study(lesion_analyzer: Analyzer, jpeg_upload: bytes) -> None:
    f = lesion_analyzer.analyze(jpeg_upload)
    bundle = _validate(fhir_report(f))
    (report,) = _resources(bundle, "DiagnosticReport")
    assert "subject" not in report
    study = build_results(f).sr.StudyInstanceUID
    assert report["imagingStudy"][0]["identifier"]["value"] == f"urn:oid:{study}"


def test_identities_are_deterministic(analyzer: Analyzer, op_dicom: bytes) -> None:
    source = header(op_dicom)
    a = fhir_report(analyzer.analyze(op_dicom), source)
    b = fhir_report(analyzer.analyze(op_dicom), source)
    assert [e["fullUrl"] for e in a["entry"]] == [e["fullUrl"] for e in b["entry"]]
    assert len({e["fullUrl"] for e in a["entry"]}) == len(a["entry"])


def test_research_grader_conclusion_states_research_use(research_analyzer: Analyzer, op_dicom: bytes) -> None:
    from analysis.dicom_out import AI_STATEMENT_RESEARCH
    from tests.conftest import TINY_RESEARCH_TERMS

    f = research_analyzer.analyze(op_dicom)
    bundle = _validate(fhir_report(f, header(op_dicom)))
    (report,) = _resources(bundle, "DiagnosticReport")
    assert AI_STATEMENT_RESEARCH in report["conclusion"] and TINY_RESEARCH_TERMS in report["conclusion"]
    assert "synthetic" not in report["conclusion"].lower()
