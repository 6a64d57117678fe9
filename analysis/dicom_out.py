"""Results as DICOM: a Comprehensive SR (TID 1500 Measurement Report) and a Secondary Capture of the overlay.

Contract
--------
:func:`build_results` turns one :class:`analysis.findings.Findings` (one image, one frame) into
:class:`DicomResults`: ``sr`` and ``sc``, two ``pydicom.Dataset`` ready for ``save_as(...,
enforce_file_format=True)``, C-STORE or STOW-RS. It does not decode the source pixels (a header-only
``source`` is enough) and decodes the overlay PNG once (OpenCV).

- **Study**: with a ``source`` (the analysed DICOM header), both instances join its study: the Patient and
  General Study modules are copied (PatientName/ID/BirthDate/Sex, StudyInstanceUID, StudyDate/Time,
  AccessionNumber, StudyID, ReferringPhysicianName), so a PACS files the results beside the photograph.
  Without one (a JPEG/PNG upload) they form a new study whose patient module is empty and whose
  StudyDescription says so.
- **Series and UIDs**: each result has its own new series (SR: series number :data:`SR_SERIES_NUMBER`, SC:
  :data:`SC_SERIES_NUMBER`). Their Series and SOP Instance UIDs are derived deterministically
  (:func:`pydicom.uid.generate_uid` with ``entropy_srcs``) from the source SOP Instance UID, the analysed
  frame and every model's name, version and sha256: analysing the same instance with the same models again
  gives the same result UIDs (the DICOMweb store and the DIMSE gateway rely on this for idempotency); a new
  model version gives new ones, so old and new results never overwrite each other. Without a source the
  request id takes the SOP Instance UID's place (a new study per request).
- **Frame of reference**: fundus photographs carry none (OP images usually have no Frame of Reference module)
  and both outputs use image-relative 2-D coordinates, so neither has one: the SR is a Comprehensive SR
  (1.2.840.10008.5.1.4.1.1.88.33, 2-D SCOORD), not a Comprehensive 3D SR.

SR content tree (PS3.16 TID 1500 "Measurement Report", built with highdicom)
--------------------------------------------------------------------------
- Title (DCM 126000 "Imaging Measurement Report"), language, procedure reported (SCT 363679005 "Imaging
  procedure", CID 100).
- Observation context: device observer (TID 1004: UID, name "Fovea", manufacturer, model name = the grader,
  serial number when given).
- Image Library (TID 1600) entry for the source photograph (none for a JPEG/PNG upload: TID 1602 describes
  acquired images by modality, CID 29, which the SC is not).
- Imaging Measurements (DCM 126010), one group per concern, each with its TID 4019 Algorithm Identification
  (name and version from the model card; the classic quality measures are named by their method and the
  service's version) and the source image reference (TID 1501 "Source" / TID 1410 region):

  1. *Image quality* (TID 1501): DCM 111101 "Image Quality" = DCM 122741 "Good image quality" (gradable) or
     DCM 111235 "Unusable - Quality renders image unusable" (ungradable, CID 3114); one private "Image quality
     problem" per reason; the score as a NUM (UCUM "1").
  2. *DR grading* (TID 1501, algorithm = the grader): finding site SCT 5665001 "Retina" with laterality
     (SCT 24028007 "Right" / 7771000 "Left", CID 244); private "ICDR diabetic retinopathy severity level" =
     the grade's code (table below) — omitted for an ungradable photograph, whose ICDR grade is not defined;
     private "Referable diabetic retinopathy" = SCT 373066001 "Yes" / 373067005 "No" / 373068000
     "Undetermined" (ungradable) (CID 230); the probability of referable DR and the operating point as NUMs.
  3. *Lesion detection summary* (TID 1501, algorithm = the detector; only when a detector ran): per lesion
     type, present (SCT 52101004) or absent (SCT 272519000) (CID 240) — "assessed, nothing found" is said.
  4. *One group per lesion* (TID 1410 Planar ROI): finding category SCT 52988006 "Lesion", finding type = the
     lesion's code, finding site Retina + laterality, the detector score as a NUM, and the box as a closed
     SCOORD POLYLINE (five points) in pixel coordinates of the referenced image: image-relative, (column,
     row), 0.0\\0.0 the top-left corner of the top-left pixel, Columns\\Rows the bottom-right corner of the
     last (PS3.3 C.10.5.1.2, C.18.6) — the Findings' ``box`` edges as they are. The region references the
     source SOP Instance (and frame); without a source it references the SC, the boxes divided by the overlay
     scale.
- Qualitative Evaluations (UMLS C0034375, TID 1500 row 12) with a TEXT "Comment" (DCM 121106): the AI-output
  statement and the model card's intended use.

Codes and where each comes from
-------------------------------
======================================  ==================  ==============================================
concept                                 code                source
======================================  ==================  ==============================================
ICDR 0 No apparent retinopathy          LN LA18643-9        LOINC answer list LL2117-1 (the ICDR names), as
                                                            used by eCQM CMS131 value set 2.16.840.1.113883.
                                                            3.464.1003.1266; SNOMED CT has no verified
                                                            "no diabetic retinopathy" concept we could cite
ICDR 1 Mild NPDR                        SCT 312903003       SNOMED CT via VSAC (eCQM value set 2.16.840.1.
ICDR 2 Moderate NPDR                    SCT 312904009       113883.3.526.3.1283 "Level of Severity of
ICDR 3 Severe NPDR                      SCT 312905005       Retinopathy Findings", and the VSAC diabetes
ICDR 4 Proliferative DR                 SCT 59276001        expansion for the display names)
microaneurysm                           SCT 25412000        "Diabetic retinal microaneurysm (disorder)", VSAC
retinal haemorrhage, hard exudate,      99FOVEA HEM/HEX/    private: SNOMED CT's nearest concepts are
cotton wool spot                        CWS                 narrower (dot / flame haemorrhage) or broader
                                                            ("Retinal exudates", hard and soft) than the
                                                            detector's classes, or could not be verified
DICOM concepts (Image Quality, Comment,  DCM, SCT (CIDs      PS3.16 via pydicom's ``codes`` (built from the
Yes/No, Present/Absent, Retina, Lesion,  3114, 230, 240,    standard's tables); UMLS C0034375 from TID 1500
laterality, Imaging procedure)           244, 100)
ICDR severity (name), referable DR,     99FOVEA             private: no standard concept names these
scores, operating point, quality                            (LOINC 71490-7/71491-5 are "by Ophthalmoscopy",
problems                                                    not photography; 105914-6's answers assert a
                                                            macular-oedema status the models do not assess)
======================================  ==================  ==============================================

The private scheme is declared in the SR's Coding Scheme Identification Sequence (PS3.3 C.12.1.1.4):
designator :data:`PRIVATE_SCHEME` ("99" prefix, PS3.3 8.2), UID :data:`PRIVATE_SCHEME_UID` (a UUID-derived
OID, PS3.5 B.2, generated once for Fovea).

Secondary Capture
-----------------
SC Image (1.2.840.10008.5.1.4.1.1.7) of the overlay PNG (photograph + saliency heatmap + lesion boxes + the
burned-in caption, at ``saliency.scale`` original pixels per pixel): RGB, 8 bit, Explicit VR Little Endian,
``BurnedInAnnotation`` YES, ``ImageType`` DERIVED\\SECONDARY, Source Image Sequence -> the source (purpose DCM
121322 "Source image for image processing operation"), SeriesDescription and ImageComments stating it is AI
output (from models trained on synthetic data, not for diagnosis, when the model card says so).
"""

from __future__ import annotations

import base64
import importlib.metadata
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from models.card import statement_kind
from analysis.findings import Findings, LesionFinding, ModelRef, model_for

#: The private coding scheme of Fovea's own concepts (declared in every SR).
PRIVATE_SCHEME = "99FOVEA"
PRIVATE_SCHEME_UID = "2.25.145924320050632522397734969310487631069"
PRIVATE_SCHEME_NAME = "Fovea AI diabetic-retinopathy screening concepts"
SR_SERIES_NUMBER = 9001
SC_SERIES_NUMBER = 9002
#: Stated wherever a result is shown, chosen by the model card's intended use (:func:`ai_statement`): trained
#: on synthetic data; a research model trained on real data; or a card that states neither.
AI_STATEMENT_SYNTHETIC = "AI output - trained on synthetic data, not for diagnosis"
AI_STATEMENT_RESEARCH = "AI output - research use only, not for clinical use"
AI_STATEMENT_REAL = "AI output - to be confirmed by a qualified reader"
_UID_SALT = "fovea-dicom-results-v1"


def _private(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value, PRIVATE_SCHEME, meaning)


# --- concept names and values (module docstring: codes and sources) ---------------------------------------
ICDR_SEVERITY = _private("ICDR", "ICDR diabetic retinopathy severity level")
REFERABLE_DR = _private("REFDR", "Referable diabetic retinopathy (moderate NPDR or worse)")
P_REFERABLE = _private("PREFDR", "Probability of referable diabetic retinopathy")
OPERATING_POINT = _private("OPPT", "Referable diabetic retinopathy operating point")
QUALITY_SCORE = _private("QSCORE", "Image quality score")
QUALITY_PROBLEM = _private("QPROB", "Image quality problem")
LESION_SCORE = _private("LSCORE", "Lesion detection score")
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")

#: ICDR grade -> value of the severity evaluation.
GRADE_CODES: tuple[hd.sr.CodedConcept, ...] = (
    hd.sr.CodedConcept("LA18643-9", "LN", "No apparent retinopathy"),
    hd.sr.CodedConcept("312903003", "SCT", "Mild nonproliferative retinopathy due to diabetes mellitus"),
    hd.sr.CodedConcept("312904009", "SCT", "Moderate nonproliferative retinopathy due to diabetes mellitus"),
    hd.sr.CodedConcept("312905005", "SCT", "Severe nonproliferative retinopathy due to diabetes mellitus"),
    hd.sr.CodedConcept("59276001", "SCT", "Proliferative retinopathy due to diabetes mellitus"),
)
LESION_CODES: dict[str, hd.sr.CodedConcept] = {
    "microaneurysm": hd.sr.CodedConcept("25412000", "SCT", "Diabetic retinal microaneurysm"),
    "haemorrhage": _private("HEM", "Retinal haemorrhage (dot, blot or flame)"),
    "hard_exudate": _private("HEX", "Retinal hard exudate"),
    "cotton_wool_spot": _private("CWS", "Cotton wool spot"),
}
QUALITY_REASON_CODES: dict[str, hd.sr.CodedConcept] = {
    "field": _private("QFIELD", "Inadequate field of view"),
    "underexposed": _private("QUNDER", "Underexposed"),
    "overexposed": _private("QOVER", "Overexposed"),
    "blur": _private("QBLUR", "Blurred"),
    "haze": _private("QHAZE", "Hazy"),
    "uneven": _private("QUNEVEN", "Uneven illumination"),
}
_NO_UNITS = codes.UCUM.NoUnits


@dataclass(frozen=True)
class DicomResults:
    """The two DICOM results of one analysed image (module docstring)."""

    sr: pydicom.Dataset  # Comprehensive SR, TID 1500 Measurement Report, same Study, new Series
    sc: pydicom.Dataset  # Secondary Capture of the overlay, same Study, own Series


def ai_statement(findings: Findings) -> str:
    """The AI-output statement that fits the model card's intended use, ``findings.disclaimer`` (as the
    overlay's caption does, :func:`models.card.statement_kind`)."""
    kind = statement_kind(findings.disclaimer)
    return (AI_STATEMENT_SYNTHETIC if kind == "synthetic" else AI_STATEMENT_RESEARCH if kind == "research"
            else AI_STATEMENT_REAL)


def result_uid(role: str, findings: Findings, source: Dataset | None = None) -> str:
    """The deterministic UID of result ``role`` ("sr-series", "sr-instance", "sc-series", "sc-instance",
    "study", "quality", "grading", "lesions", "lesion-<n>") for ``findings`` (module docstring: same instance
    + same models -> same UIDs)."""
    anchor = str(source.SOPInstanceUID) if source is not None else f"request:{findings.request_id}"
    models = sorted(f"{m.name}:{m.version}:{m.sha256}" for m in findings.models)
    return generate_uid(entropy_srcs=[_UID_SALT, role, anchor, str(findings.image.frame), *models])


def build_results(findings: Findings, source: pydicom.Dataset | None = None, *,
                  manufacturer: str = "Fovea", device_serial: str | None = None) -> DicomResults:
    """Build the SR and the SC for one analysed image (module docstring for content and UIDs).

    ``source`` is the analysed DICOM dataset (its header is enough) or ``None`` for a JPEG/PNG upload. Raises
    ``ValueError`` when ``source`` is not the instance ``findings`` describes (another SOP Instance UID) or
    lacks its UIDs, or when the overlay PNG cannot be decoded.
    """
    if source is not None:
        if "SOPInstanceUID" not in source or "StudyInstanceUID" not in source or "SOPClassUID" not in source:
            raise ValueError("the source dataset lacks its SOP Class, SOP Instance or Study Instance UID")
        if findings.image.sop_instance_uid not in (None, str(source.SOPInstanceUID)):
            raise ValueError("the source dataset is not the instance these findings describe")
    study = _study_reference(findings, source)
    sc = _secondary_capture(findings, source, study, manufacturer=manufacturer)
    sr = _structured_report(findings, source, study, sc, manufacturer=manufacturer,
                            device_serial=device_serial)
    return DicomResults(sr=sr, sc=sc)


# --- study / patient ---------------------------------------------------------------------------------------

_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                  "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName")
_PATIENT_STUDY_EXTRA = ("IssuerOfPatientID", "OtherPatientIDsSequence", "PatientAge", "PatientSize",
                        "PatientWeight", "StudyDescription", "PatientIdentityRemoved",
                        "DeidentificationMethod", "IssuerOfAccessionNumberSequence")


def _study_reference(findings: Findings, source: Dataset | None) -> Dataset:
    """The Patient and General Study attributes both results carry: the source's (type 2 ones empty when it
    lacks them), or a new study with an empty patient module."""
    ref = Dataset()
    if source is None:
        for kw in _PATIENT_STUDY:
            setattr(ref, kw, "")
        ref.StudyInstanceUID = result_uid("study", findings)
        ref.StudyDescription = "Fovea analysis of a JPEG/PNG upload - no patient identity"
        ref.SpecificCharacterSet = "ISO_IR 100"
        return ref
    for kw in _PATIENT_STUDY:
        setattr(ref, kw, source.get(kw, "") or "")
    ref.StudyInstanceUID = str(source.StudyInstanceUID)
    for kw in _PATIENT_STUDY_EXTRA:
        if kw in source:
            ref[kw] = source[kw]
    ref.SpecificCharacterSet = source.get("SpecificCharacterSet", "ISO_IR 100")
    return ref


def _copy_study(ds: Dataset, study: Dataset) -> None:
    for elem in study:
        ds[elem.tag] = elem


# --- Secondary Capture -------------------------------------------------------------------------------------

def _overlay_rgb(findings: Findings) -> np.ndarray:
    """Decode the overlay PNG once (OpenCV) to ``(H, W, 3)`` uint8 RGB."""
    buf = np.frombuffer(base64.b64decode(findings.saliency.overlay_png), np.uint8)
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("the overlay PNG of these findings cannot be decoded")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _secondary_capture(findings: Findings, source: Dataset | None, study: Dataset, *, manufacturer: str
                       ) -> Dataset:
    rgb = _overlay_rgb(findings)
    statement = ai_statement(findings)
    lat = findings.image.laterality
    sc = hd.sc.SCImage(
        pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
        study_instance_uid=str(study.StudyInstanceUID),
        series_instance_uid=result_uid("sc-series", findings, source), series_number=SC_SERIES_NUMBER,
        sop_instance_uid=result_uid("sc-instance", findings, source), instance_number=1,
        manufacturer=manufacturer,
        # highdicom requires an orientation for the PATIENT coordinate system; a fundus photograph has no
        # patient-axis orientation we could state, so it is replaced by the empty (type 2) value below.
        patient_orientation=("L", "F"), laterality=lat,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    _copy_study(sc, study)
    sc.PatientOrientation = ""
    sc.Laterality = lat or ""  # type 2C, required for a paired organ: empty when the eye is unknown
    sc.BurnedInAnnotation = "YES"  # the caption (and the legend) are in the pixels
    sc.ConversionType = "WSD"  # rendered by software (workstation), not digitised (PS3.3 C.8.6.1)
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.SeriesDescription = f"AI overlay - {statement.removeprefix('AI output - ')}"[:64]
    sc.ImageComments = (f"{statement}. Saliency heatmap and lesion boxes of {_model_names(findings.models)} "
                        f"over the photograph, {findings.saliency.scale:g} original pixels per pixel. "
                        f"{findings.disclaimer}")
    sc.DerivationDescription = "Photograph blended with the model's class activation map, lesion boxes drawn"
    sc.ManufacturerModelName = findings.models[0].name
    sc.SoftwareVersions = [f"{m.name} {m.version}" for m in findings.models]
    if source is not None:
        sc.SourceImageSequence = [_image_ref(source, findings, purpose=True)]
    return sc


def _image_ref(source: Dataset, findings: Findings, *, purpose: bool = False) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if int(source.get("NumberOfFrames", 1) or 1) > 1:
        item.ReferencedFrameNumber = findings.image.frame + 1
    if purpose:
        code = codes.DCM.SourceImageForImageProcessingOperation
        item.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept(code.value, code.scheme_designator,
                                                                  code.meaning)]
    return item


def _model_names(models: Sequence[ModelRef]) -> str:
    return ", ".join(f"{m.name} {m.version}" for m in models)


# --- Structured Report -------------------------------------------------------------------------------------

def _algorithm(model: ModelRef) -> hd.sr.AlgorithmIdentification:
    """TID 4019 for one model: name and version from its card."""
    # No "Algorithm Manufacturer": validators built on earlier editions of TID 4019 flag it, and the device
    # observer context already names the manufacturer.
    return hd.sr.AlgorithmIdentification(name=model.name, version=model.version)


def _quality_algorithm(findings: Findings) -> hd.sr.AlgorithmIdentification:
    method = findings.quality.method
    model = model_for(findings.models, "image-quality")
    if model is not None and method.startswith(f"{model.name}:{model.version}"):
        return _algorithm(model)
    try:  # the classic measures are part of the service: its version identifies them
        version = importlib.metadata.version("fovea")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        version = "unknown"
    return hd.sr.AlgorithmIdentification(name=method[:64], version=version)


def _finding_sites(findings: Findings) -> list[hd.sr.FindingSite]:
    lat = {"R": codes.SCT.Right, "L": codes.SCT.Left}.get(findings.image.laterality or "")
    return [hd.sr.FindingSite(anatomic_location=codes.SCT.Retina, laterality=lat)]


def _num(name: hd.sr.CodedConcept, value: float) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=float(value), unit=_NO_UNITS)


def _structured_report(findings: Findings, source: Dataset | None, study: Dataset, sc: Dataset, *,
                       manufacturer: str, device_serial: str | None) -> Dataset:
    image = source if source is not None else sc  # the image the findings' coordinates refer to
    frames = [findings.image.frame + 1] if int(image.get("NumberOfFrames", 1) or 1) > 1 else None
    group_source = [hd.sr.SourceImageForMeasurementGroup(str(image.SOPClassUID), str(image.SOPInstanceUID),
                                                         frames)]
    grader = model_for(findings.models, "dr-grading") or findings.models[0]
    detector = model_for(findings.models, "lesion-detection")
    sites = _finding_sites(findings)
    groups: list = []
    lesion_groups: list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations] = []

    q = findings.quality
    groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=result_uid("quality", findings, source),
                                                     identifier="Image quality"),
        algorithm_id=_quality_algorithm(findings),
        source_images=group_source,
        measurements=[_num(QUALITY_SCORE, q.score)],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(codes.DCM.ImageQuality, codes.DCM.GoodImageQuality if q.gradable
                                        else codes.DCM.UnusableQualityRendersImageUnusable),
            *(hd.sr.QualitativeEvaluation(QUALITY_PROBLEM, QUALITY_REASON_CODES[r])
              for r in q.reasons if r in QUALITY_REASON_CODES),
        ],
    ))

    evaluations = []
    if q.gradable:  # the ICDR scale grades gradable photographs only
        evaluations.append(hd.sr.QualitativeEvaluation(ICDR_SEVERITY, GRADE_CODES[findings.dr_grade.grade]))
    measurements = []
    ref = findings.referable_dr
    if ref is not None:
        value = {True: codes.SCT.Yes, False: codes.SCT.No, None: codes.SCT.Undetermined}[ref.value]
        evaluations.append(hd.sr.QualitativeEvaluation(REFERABLE_DR, value))
        measurements += [_num(P_REFERABLE, ref.probability), _num(OPERATING_POINT, ref.operating_point)]
    groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=result_uid("grading", findings, source),
                                                     identifier="Diabetic retinopathy grading"),
        algorithm_id=_algorithm(grader), finding_sites=sites, source_images=group_source,
        measurements=measurements or None, qualitative_evaluations=evaluations or None,
    ))

    if findings.lesions is not None and detector is not None:
        found = {les.type for les in findings.lesions}
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=result_uid("lesions", findings, source),
                                                         identifier="Lesion detection"),
            algorithm_id=_algorithm(detector), finding_sites=sites, source_images=group_source,
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(code, codes.SCT.Present if kind in found else codes.SCT.Absent)
                for kind, code in LESION_CODES.items()],
        ))
        scale = 1.0 if source is not None else findings.saliency.scale
        # One region source for all lesions: highdicom checks the SOP class against the standard's IOD tables
        # each time one is made (~5 ms), and every region references the same image.
        region_source = hd.sr.SourceImageForRegion(str(image.SOPClassUID), str(image.SOPInstanceUID), frames)
        algorithm = _algorithm(detector)
        for n, les in enumerate(findings.lesions, start=1):
            lesion_groups.append(
                _lesion_group(les, n, region_source, scale, findings, source, sites, algorithm))

    # The device observer is this installation running these models: its UID does not depend on the image.
    models = sorted(f"{m.name}:{m.version}:{m.sha256}" for m in findings.models)
    device_uid = generate_uid(entropy_srcs=[_UID_SALT, "device", manufacturer, device_serial or "", *models])
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=device_uid, name="Fovea", manufacturer_name=manufacturer,
        model_name=f"{grader.name} {grader.version}"[:64], serial_number=device_serial)
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))
    report = hd.sr.MeasurementReport(
        observation_context=context, procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=groups, title=codes.DCM.ImagingMeasurementReport,
        # TID 1602 describes an acquired image by its modality (CID 29), which a Secondary Capture ("OT") is
        # not: the Image Library lists the source photograph only.
        referenced_images=[source] if source is not None else None)
    # TID 1500 row 12: Qualitative Evaluations with the AI-output statement as text (highdicom has no helper).
    statement = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS, relationship_type="CONTAINS")
    statement.ContentSequence = [hd.sr.TextContentItem(
        name=codes.DCM.Comment, relationship_type="CONTAINS",
        value=f"{ai_statement(findings)}. {findings.disclaimer}"[:10240])]
    report[0].ContentSequence.append(statement)

    sr = hd.sr.ComprehensiveSR(
        evidence=[_evidence(image, study)], content=report[0],
        series_instance_uid=result_uid("sr-series", findings, source),
        series_number=SR_SERIES_NUMBER, sop_instance_uid=result_uid("sr-instance", findings, source),
        instance_number=1, manufacturer=manufacturer, is_complete=True, is_final=False, is_verified=False,
    )
    # The lesion groups join the Imaging Measurements container after construction: highdicom's SR constructor
    # deep-copies, re-parses and searches the whole tree (~1 ms per item), which made a report with many
    # lesions take seconds; they reference the image already in the evidence, so the evidence is unchanged.
    imaging_measurements = codes.DCM.ImagingMeasurements.value
    (measurements_container,) = [item for item in sr.ContentSequence
                                 if item.ConceptNameCodeSequence[0].CodeValue == imaging_measurements]
    for group in lesion_groups:
        measurements_container.ContentSequence.extend(group)
    _copy_study(sr, study)
    sr.SeriesDescription = f"AI DR report - {ai_statement(findings).removeprefix('AI output - ')}"[:64]
    sr.CodingSchemeIdentificationSequence = [_private_scheme()]
    return sr


def _lesion_group(les: LesionFinding, n: int, region_source: hd.sr.SourceImageForRegion, scale: float,
                  findings: Findings, source: Dataset | None, sites: list[hd.sr.FindingSite],
                  algorithm: hd.sr.AlgorithmIdentification
                  ) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410 for one lesion: the box as a closed POLYLINE in the referenced image's pixel coordinates."""
    x0, y0, x1, y1 = (v / scale for v in les.box)
    polyline = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=polyline, source_image=region_source)
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=result_uid(f"lesion-{n}", findings, source),
                                                     identifier=f"Lesion {n}"),
        referenced_region=region, finding_type=LESION_CODES[les.type], finding_category=codes.SCT.Lesion,
        finding_sites=sites, algorithm_id=algorithm, measurements=[_num(LESION_SCORE, les.score)],
    )


def _evidence(image: Dataset, study: Dataset) -> Dataset:
    """The analysed image as SR evidence: its identity plus the study attributes highdicom reads from it (a
    PACS header may lack type 2 ones)."""
    ev = Dataset()
    _copy_study(ev, study)
    for kw in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID"):
        setattr(ev, kw, image[kw].value)
    return ev


def _private_scheme() -> Dataset:
    """The Coding Scheme Identification Sequence item declaring :data:`PRIVATE_SCHEME` (PS3.3 C.12.1.1.4)."""
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeUID = PRIVATE_SCHEME_UID
    item.CodingSchemeName = PRIVATE_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = "Fovea project"
    return item
