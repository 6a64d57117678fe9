"""Results as FHIR R4: a ``Bundle`` (type ``collection``) holding one ``DiagnosticReport``, its
``Observation``s and a ``Device`` per model, as a JSON-ready dict.

Contract
--------
:func:`fhir_report` builds the bundle from one :class:`analysis.findings.Findings`; ``source`` (the analysed
DICOM header, or ``None`` for a JPEG/PNG upload) supplies the study and the patient identifier; without one
the study is the new one :func:`analysis.dicom_out.build_results` files the SR and SC in. It uses the
same concepts as the DICOM SR (:mod:`analysis.dicom_out`, whose docstring says where each code comes from),
written with their FHIR system URIs (SNOMED CT ``http://snomed.info/sct``, LOINC ``http://loinc.org``, DICOM
``http://dicom.nema.org/resources/ontology/DCM``, UCUM ``http://unitsofmeasure.org``; Fovea's private scheme
as ``urn:oid:`` + its UID).

- ``DiagnosticReport``: status ``preliminary`` (AI output, not verified by a reader), code LOINC 105914-6 "Eye
  Diabetic retinopathy screening Autonomous artificial intelligence" (as named in eCQM CMS131) plus Fovea's
  own, ``imagingStudy`` -> the DICOM study by identifier (system ``urn:dicom:uid``, value ``urn:oid:<Study
  Instance UID>``, the FHIR ImagingStudy convention), ``result`` -> the observations, ``conclusion`` (with the
  AI-output statement) and ``conclusionCode`` (the ICDR grade's code, when gradable).
- ``Observation`` (status ``preliminary``, category ``imaging``, ``device`` -> the model, ``derivedFrom`` ->
  the study, ``bodySite`` the eye): image quality (DICOM "Image Quality" with reasons and score as components),
  ICDR severity (gradable only; SNOMED CT and the LOINC LL2117-1 answer as codings of one concept), referable
  DR (Yes / No / Undetermined, with probability and operating point), and, when a detector ran, a detection
  summary (present/absent per lesion type) and one observation per lesion (its box in original pixels as a
  component; the geometry proper lives in the SR).
- Entry ``fullUrl``s are ``urn:uuid:`` UUIDs derived from the same anchors as the DICOM result UIDs, so the
  same instance analysed by the same models gives the same bundle identities.

The bundle validates against the R4B models of ``fhir.resources`` (DiagnosticReport, Observation, Device and
Bundle are structurally unchanged from R4 in R4B); the tests do that.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes

from analysis.dicom_out import (
    GRADE_CODES, ICDR_SEVERITY, LESION_CODES, LESION_SCORE, OPERATING_POINT, P_REFERABLE, PRIVATE_SCHEME,
    PRIVATE_SCHEME_UID, QUALITY_PROBLEM, QUALITY_REASON_CODES, QUALITY_SCORE, REFERABLE_DR, ai_statement,
    result_uid,
)
from analysis.findings import Findings, ModelRef, model_for

SYSTEMS = {
    "SCT": "http://snomed.info/sct",
    "LN": "http://loinc.org",
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    "UCUM": "http://unitsofmeasure.org",
    PRIVATE_SCHEME: f"urn:oid:{PRIVATE_SCHEME_UID}",
}
#: LOINC answer list LL2117-1 (the ICDR severity names), as codings equivalent to the SNOMED CT grade codes.
LOINC_GRADE_ANSWERS = (
    ("LA18643-9", "No apparent retinopathy"),
    ("LA18644-7", "Mild non-proliferative retinopathy"),
    ("LA18645-4", "Moderate non-proliferative retinopathy"),
    ("LA18646-2", "Severe non-proliferative retinopathy"),
    ("LA18648-8", "Proliferative retinopathy"),
)
REPORT_CODE = {"system": SYSTEMS["LN"], "code": "105914-6",
               "display": "Eye Diabetic retinopathy screening Autonomous artificial intelligence"}
LESION_DETECTION = hd.sr.CodedConcept("LESDET", PRIVATE_SCHEME, "Retinal lesion detection")
LESION_BOX = hd.sr.CodedConcept("BOX", PRIVATE_SCHEME, "Bounding box in original pixels (x0, y0, x1, y1)")
REPORT_PRIVATE = hd.sr.CodedConcept("DRSCREEN", PRIVATE_SCHEME, "AI diabetic retinopathy screening report")
_EYE = {"system": SYSTEMS["SCT"], "code": "81745001", "display": "Eye"}
_CATEGORY = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                          "code": "imaging", "display": "Imaging"}]}]
_NS = uuid.UUID("4f1b8d52-5a0e-4b8e-9c55-0b2f6f0a7d31")  # Fovea's namespace for uuid5 bundle identities


def coding(code: Any) -> dict[str, str]:
    """A DICOM coded concept (highdicom ``CodedConcept`` or pydicom ``Code``) as a FHIR ``Coding``."""
    return {"system": SYSTEMS[code.scheme_designator], "code": str(code.value), "display": str(code.meaning)}


def _concept(*codings: Any, text: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"coding": [c if isinstance(c, dict) else coding(c) for c in codings]}
    if text:
        out["text"] = text
    return out


def _quantity(value: float) -> dict[str, Any]:
    return {"value": round(float(value), 6), "unit": "1", "system": SYSTEMS["UCUM"], "code": "1"}


def fhir_report(findings: Findings, source: pydicom.Dataset | None = None) -> dict[str, Any]:
    """The FHIR R4 ``Bundle`` of ``findings`` (module docstring); JSON-serialisable as it is."""
    anchor = str(source.SOPInstanceUID) if source is not None else f"request:{findings.request_id}"
    models_key = "|".join(sorted(f"{m.name}:{m.version}:{m.sha256}" for m in findings.models))

    def urn(role: str) -> str:
        return f"urn:uuid:{uuid.uuid5(_NS, f'{anchor}/{findings.image.frame}/{models_key}/{role}')}"

    # Without a source the results study of analysis.dicom_out (the SR and SC) is the imaging study.
    study_uid = str(source.StudyInstanceUID) if source is not None else result_uid("study", findings)
    study_ref = {"type": "ImagingStudy",
                 "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}}
    patient_id = str(source.get("PatientID", "") or "") if source is not None else ""
    subject = {"type": "Patient", "identifier": {"value": patient_id}} if patient_id else None
    statement = ai_statement(findings)
    lat = findings.image.laterality
    body_site = _concept(_EYE, text={"R": "right eye", "L": "left eye"}.get(lat or "", "eye, side unknown"))
    issued = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")

    devices = {m.name: urn(f"device:{m.name}") for m in findings.models}
    entries: list[dict[str, Any]] = [{"fullUrl": devices[m.name], "resource": _device(m)}
                                     for m in findings.models]
    observations: list[str] = []

    def observe(role: str, model: ModelRef | None, code: dict[str, Any], **fields: Any) -> None:
        obs: dict[str, Any] = {"resourceType": "Observation", "status": "preliminary", "category": _CATEGORY,
                               "code": code, "issued": issued, "bodySite": body_site,
                               "note": [{"text": statement}]}
        if subject:
            obs["subject"] = subject
        obs["derivedFrom"] = [study_ref]
        if model is not None:
            obs["device"] = {"reference": devices[model.name]}
        obs.update(fields)
        url = urn(role)
        entries.append({"fullUrl": url, "resource": obs})
        observations.append(url)

    grader = model_for(findings.models, "dr-grading") or findings.models[0]
    detector = model_for(findings.models, "lesion-detection")
    q = findings.quality
    observe("quality", None, _concept(codes.DCM.ImageQuality),
            valueCodeableConcept=_concept(codes.DCM.GoodImageQuality if q.gradable
                                          else codes.DCM.UnusableQualityRendersImageUnusable),
            method={"text": q.method},
            component=[{"code": _concept(QUALITY_SCORE), "valueQuantity": _quantity(q.score)},
                       *({"code": _concept(QUALITY_PROBLEM),
                          "valueCodeableConcept": _concept(QUALITY_REASON_CODES[r])}
                         for r in q.reasons if r in QUALITY_REASON_CODES)])
    grade = findings.dr_grade.grade
    grade_concept = None
    if q.gradable:  # the ICDR scale grades gradable photographs only
        la_code, la_display = LOINC_GRADE_ANSWERS[grade]
        la = {"system": SYSTEMS["LN"], "code": la_code, "display": la_display}
        grade_concept = _concept(*([GRADE_CODES[grade], la] if GRADE_CODES[grade].scheme_designator != "LN"
                                   else [la]), text=f"ICDR grade {grade}: {findings.dr_grade.label}")
        observe("grade", grader, _concept(ICDR_SEVERITY), valueCodeableConcept=grade_concept)
    ref = findings.referable_dr
    if ref is not None:
        value = {True: codes.SCT.Yes, False: codes.SCT.No, None: codes.SCT.Undetermined}[ref.value]
        extra = {"note": [{"text": statement}, {"text": ref.reason}]} if ref.reason else {}
        observe("referable", grader, _concept(REFERABLE_DR), valueCodeableConcept=_concept(value),
                component=[{"code": _concept(P_REFERABLE), "valueQuantity": _quantity(ref.probability)},
                           {"code": _concept(OPERATING_POINT),
                            "valueQuantity": _quantity(ref.operating_point)}],
                **extra)
    if findings.lesions is not None and detector is not None:
        found = {les.type for les in findings.lesions}
        observe("lesions", detector, _concept(LESION_DETECTION), component=[
            {"code": _concept(code),
             "valueCodeableConcept": _concept(codes.SCT.Present if kind in found else codes.SCT.Absent)}
            for kind, code in LESION_CODES.items()])
        for n, les in enumerate(findings.lesions, start=1):
            observe(f"lesion-{n}", detector, _concept(LESION_CODES[les.type]),
                    valueCodeableConcept=_concept(codes.SCT.Present),
                    component=[{"code": _concept(LESION_SCORE), "valueQuantity": _quantity(les.score)},
                               {"code": _concept(LESION_BOX),
                                "valueString": ", ".join(f"{v:g}" for v in les.box)}])

    summary = (f"ICDR grade {grade} ({findings.dr_grade.label})" if q.gradable
               else "Ungradable photograph (" + ", ".join(q.reasons) + ")")
    if ref is not None and ref.value is not None:
        summary += "; referable DR: " + ("yes" if ref.value else "no")
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport", "status": "preliminary",
        "code": _concept(REPORT_CODE, REPORT_PRIVATE, text="AI diabetic retinopathy screening"),
        "issued": issued, "result": [{"reference": u} for u in observations],
        "conclusion": f"{summary}. {statement}. {findings.disclaimer}",
    }
    if subject:
        report["subject"] = subject
    report["imagingStudy"] = [study_ref]
    if grade_concept is not None:
        report["conclusionCode"] = [grade_concept]
    entries.insert(0, {"fullUrl": urn("report"), "resource": report})
    return {"resourceType": "Bundle", "type": "collection", "timestamp": issued, "entry": entries}


def _device(model: ModelRef) -> dict[str, Any]:
    """A model as a FHIR ``Device``: its name and version from the card, its ONNX file's sha256."""
    return {"resourceType": "Device", "manufacturer": "Fovea",
            "deviceName": [{"name": model.name, "type": "model-name"}],
            "version": [{"value": model.version}],
            "note": [{"text": f"ONNX sha256 {model.sha256}; execution provider {model.provider}"}]}
