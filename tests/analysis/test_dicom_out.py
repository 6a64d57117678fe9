"""analysis.dicom_out: SR (TID 1500) and SC built from the real Analyzer's findings, written as Part-10 files,
read back with pydicom/highdicom, and checked by dcmtk's dsrdump and dicom3tools' dciodvfy."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import cv2
import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from analysis.dicom_out import (
    AI_STATEMENT_RESEARCH, AI_STATEMENT_SYNTHETIC, GRADE_CODES, ICDR_SEVERITY, LESION_CODES, LESION_SCORE, PRIVATE_SCHEME,
    PRIVATE_SCHEME_UID, QUALITY_PROBLEM, QUALITY_REASON_CODES, QUALITY_SCORE, REFERABLE_DR, SC_SERIES_NUMBER,
    SR_SERIES_NUMBER, DicomResults, build_results,
)
from analysis.findings import Findings
from analysis.pipeline import Analyzer
pytest.register_assert_rewrite("tests.analysis.results_cases")
from tests.analysis.results_cases import header

#: The shared fixtures (analyzer, lesion_analyzer, op_dicom, dark_dicom, jpeg_upload, fundus).
pytest_plugins = ("tests.analysis.results_cases",)


def _write(results: DicomResults, tmp: Path) -> tuple[Path, Path]:
    sr, sc = tmp / "sr.dcm", tmp / "sc.dcm"
    results.sr.save_as(sr, enforce_file_format=True)
    results.sc.save_as(sc, enforce_file_format=True)
    return sr, sc


def _report(path: Path) -> hd.sr.MeasurementReport:
    sr = hd.sr.srread(path)
    return hd.sr.MeasurementReport.from_sequence([sr])


def _group(report: hd.sr.MeasurementReport, identifier: str) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    (g,) = [g for g in report.get_image_measurement_groups()
            if g.tracking_identifier == identifier]
    return g


def _value(group, name) -> hd.sr.CodedConcept | None:  # type: ignore[no-untyped-def]
    items = group.get_qualitative_evaluations(name=name)
    assert len(items) <= 1
    return items[0].value if items else None


def _num(group, name) -> float:  # type: ignore[no-untyped-def]
    (m,) = group.get_measurements(name=name)
    return float(m.value)


# --- round trips -------------------------------------------------------------------------------------------

def test_dicom_source_with_lesions_round_trip(lesion_analyzer: Analyzer, op_dicom: bytes,
                                              tmp_path: Path) -> None:
    f = lesion_analyzer.analyze(op_dicom)
    assert f.lesions and {les.type for les in f.lesions} == {"haemorrhage", "microaneurysm"}
    source = header(op_dicom)
    # A header without pixel data is enough: build_results never decodes the photograph.
    results = build_results(f, source, device_serial="SN-1")
    sr_path, sc_path = _write(results, tmp_path)
    sr, sc = pydicom.dcmread(sr_path), pydicom.dcmread(sc_path)

    # Same study and patient as the photograph, own series.
    for ds in (sr, sc):
        for kw in ("StudyInstanceUID", "PatientID", "PatientName", "StudyDate", "AccessionNumber"):
            assert ds[kw].value == source[kw].value, kw
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert sr.SeriesInstanceUID != sc.SeriesInstanceUID
    assert (sr.SeriesNumber, sc.SeriesNumber) == (SR_SERIES_NUMBER, SC_SERIES_NUMBER)
    assert sr.SOPClassUID == pydicom.uid.ComprehensiveSRStorage
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == PRIVATE_SCHEME
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeUID == PRIVATE_SCHEME_UID
    assert AI_STATEMENT_SYNTHETIC in sr.SeriesDescription or "synthetic" in sr.SeriesDescription
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID

    report = _report(sr_path)
    (observer,) = report.get_observer_contexts(observer_type=codes.DCM.Device)
    quality = _group(report, "Image quality")
    assert _value(quality, codes.DCM.ImageQuality) == codes.DCM.GoodImageQuality
    assert _num(quality, QUALITY_SCORE) == pytest.approx(f.quality.score, abs=1e-6)
    grading = _group(report, "Diabetic retinopathy grading")
    assert _value(grading, ICDR_SEVERITY) == GRADE_CODES[f.dr_grade.grade]
    assert f.referable_dr is not None
    assert _value(grading, REFERABLE_DR) == (codes.SCT.Yes if f.referable_dr.value else codes.SCT.No)
    assert grading.finding_sites[0].laterality == codes.SCT.Right
    detection = _group(report, "Lesion detection")
    assert _value(detection, LESION_CODES["haemorrhage"]) == codes.SCT.Present
    assert _value(detection, LESION_CODES["hard_exudate"]) == codes.SCT.Absent

    rois = report.get_planar_roi_measurement_groups(referenced_sop_instance_uid=source.SOPInstanceUID)
    assert len(rois) == len(f.lesions)
    for les in f.lesions:
        (g,) = [g for g in rois if g.finding_type == LESION_CODES[les.type]]
        assert g.finding_category == codes.SCT.Lesion
        assert g.reference_type == codes.DCM.ImageRegion
        assert g.roi.ValueType == "SCOORD" and g.roi.GraphicType == "POLYLINE"
        points = g.roi.value
        x0, y0, x1, y1 = les.box
        np.testing.assert_allclose(points, [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], atol=1e-3)
        selected_from = g.roi.ContentSequence[0].ReferencedSOPSequence[0]
        assert selected_from.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert _num(g, LESION_SCORE) == pytest.approx(les.score, abs=1e-4)
    # The statement that this is AI output from synthetic-data models travels inside the SR.
    texts = [str(getattr(item, "TextValue", "")) for item in sr.ContentSequence[-1].ContentSequence]
    assert any("synthetic" in t for t in texts)
    assert observer.observer_identifying_attributes is not None

    # The SC: the overlay, RGB, burned-in caption, referencing the source.
    png = np.frombuffer(base64.b64decode(f.saliency.overlay_png), np.uint8)
    overlay = cv2.cvtColor(cv2.imdecode(png, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert sc.PhotometricInterpretation == "RGB" and sc.BurnedInAnnotation == "YES"
    np.testing.assert_array_equal(sc.pixel_array, overlay)
    assert "synthetic data, not for diagnosis" in sc.SeriesDescription
    assert AI_STATEMENT_SYNTHETIC in sc.ImageComments
    ref = sc.SourceImageSequence[0]
    assert ref.ReferencedSOPClassUID == source.SOPClassUID
    assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sc.Laterality == "R"


def test_result_uids_are_deterministic(analyzer: Analyzer, op_dicom: bytes) -> None:
    source = header(op_dicom)
    a = build_results(analyzer.analyze(op_dicom), source)
    b = build_results(analyzer.analyze(op_dicom), source)  # a second analysis: new request id, same instance
    def uids(r: DicomResults) -> tuple[str, ...]:
        return r.sr.SeriesInstanceUID, r.sr.SOPInstanceUID, r.sc.SeriesInstanceUID, r.sc.SOPInstanceUID

    assert uids(a) == uids(b) and len(set(uids(a))) == 4
    f = analyzer.analyze(op_dicom)
    bumped = [m.model_copy(update={"version": m.version + "-new"}) for m in f.models]
    newer = f.model_copy(update={"models": bumped})
    assert not set(uids(build_results(newer, source))) & set(uids(a))


def test_ungradable_source(analyzer: Analyzer, dark_dicom: bytes, tmp_path: Path) -> None:
    f = analyzer.analyze(dark_dicom)
    assert not f.quality.gradable and f.referable_dr is not None and f.referable_dr.value is None
    sr_path, _ = _write(build_results(f, header(dark_dicom)), tmp_path)
    report = _report(sr_path)
    quality = _group(report, "Image quality")
    assert _value(quality, codes.DCM.ImageQuality) == codes.DCM.UnusableQualityRendersImageUnusable
    problems = {e.value for e in quality.get_qualitative_evaluations(name=QUALITY_PROBLEM)}
    assert problems == {QUALITY_REASON_CODES[r] for r in f.quality.reasons} and problems
    grading = _group(report, "Diabetic retinopathy grading")
    assert _value(grading, ICDR_SEVERITY) is None  # no ICDR grade for an ungradable photograph
    assert _value(grading, REFERABLE_DR) == codes.SCT.Undetermined
    assert grading.finding_sites[0].laterality == codes.SCT.Left
    groups = report.get_image_measurement_groups()
    assert not [g for g in groups if g.tracking_identifier == "Lesion detection"]


def test_jpeg_upload_makes_a_new_study_and_regions_on_the_sc(lesion_analyzer: Analyzer, jpeg_upload: bytes,
                                                            tmp_path: Path) -> None:
    jpeg = jpeg_upload
    f = lesion_analyzer.analyze(jpeg)
    assert f.image.source == "jpeg" and f.lesions
    results = build_results(f)
    sr_path, sc_path = _write(results, tmp_path)
    sr, sc = pydicom.dcmread(sr_path), pydicom.dcmread(sc_path)
    assert sr.StudyInstanceUID == sc.StudyInstanceUID
    assert sr.PatientID == "" and sc.PatientID == "" and str(sc.PatientName) == ""
    assert "no patient identity" in sc.StudyDescription
    assert "SourceImageSequence" not in sc
    report = _report(sr_path)
    rois = report.get_planar_roi_measurement_groups(referenced_sop_instance_uid=sc.SOPInstanceUID)
    assert len(rois) == len(f.lesions)
    s = f.saliency.scale
    (hem,) = [g for g in rois if g.finding_type == LESION_CODES["haemorrhage"]]
    box = next(les.box for les in f.lesions if les.type == "haemorrhage")
    np.testing.assert_allclose(hem.roi.value[0], [box[0] / s, box[1] / s], atol=1e-3)
    # A second request for the same JPEG is another study: there is no instance UID to be idempotent on.
    assert build_results(lesion_analyzer.analyze(jpeg)).sc.StudyInstanceUID != sc.StudyInstanceUID


def test_mismatched_source_is_refused(analyzer: Analyzer, op_dicom: bytes, dark_dicom: bytes) -> None:
    f = analyzer.analyze(op_dicom)
    with pytest.raises(ValueError, match="not the instance"):
        build_results(f, header(dark_dicom))
    bare = header(op_dicom)
    del bare.StudyInstanceUID
    with pytest.raises(ValueError, match="lacks"):
        build_results(f, bare)


def test_device_observer_is_the_installation_not_the_image(analyzer: Analyzer, op_dicom: bytes,
                                                           dark_dicom: bytes) -> None:
    def device_uid(data: bytes, serial: str) -> str:
        sr = build_results(analyzer.analyze(data), header(data), device_serial=serial).sr
        report = hd.sr.MeasurementReport.from_sequence([sr])
        (ctx,) = report.get_observer_contexts(observer_type=codes.DCM.Device)
        return ctx.observer_identifying_attributes.uid

    assert device_uid(op_dicom, "A") == device_uid(dark_dicom, "A") != device_uid(op_dicom, "B")


# --- the standard tools -------------------------------------------------------------------------------------

def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install dcmtk dicom3tools)")
    return path


@pytest.fixture(scope="module")
def written(lesion_analyzer: Analyzer, analyzer: Analyzer, op_dicom: bytes, dark_dicom: bytes,
            jpeg_upload: bytes, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """SR and SC files of the three cases: DICOM with lesions, ungradable DICOM, JPEG upload."""
    jpeg = jpeg_upload
    cases: list[tuple[Findings, pydicom.Dataset | None]] = [
        (lesion_analyzer.analyze(op_dicom), header(op_dicom)),
        (analyzer.analyze(dark_dicom), header(dark_dicom)),
        (lesion_analyzer.analyze(jpeg), None),
    ]
    paths: list[Path] = []
    for n, (f, source) in enumerate(cases):
        paths.extend(_write(build_results(f, source), tmp_path_factory.mktemp(f"case{n}")))
    return paths


def test_dsrdump_parses_the_sr(written: list[Path], tmp_path: Path) -> None:
    dsrdump = _tool("dsrdump")  # strict by default: fails on invalid content items and constraint violations
    for sr in written[::2]:
        run = subprocess.run([dsrdump, str(sr)], capture_output=True, text=True, timeout=60, check=False)
        assert run.returncode == 0, run.stderr
        assert not [line for line in run.stderr.splitlines() if line[:2] in ("E:", "W:", "F:")], run.stderr
        assert "Imaging Measurement Report" in run.stdout and '"Image quality score"' in run.stdout
    # The first case has lesions: their regions are SCOORD items selected from the source image.
    first = subprocess.run([dsrdump, str(written[0])], capture_output=True, text=True, timeout=60,
                           check=False).stdout
    assert first.count('SCOORD:(,,"Image Region")=(POLYLINE') == 2
    assert "Diabetic retinal microaneurysm" in first
    # Negative control: the same check rejects an SR with a broken content item.
    bad = pydicom.dcmread(written[0])
    bad.ContentSequence[0].ValueType = "BOGUS"
    bad.save_as(tmp_path / "bad.dcm")
    run = subprocess.run([dsrdump, str(tmp_path / "bad.dcm")], capture_output=True, timeout=60, check=False)
    assert run.returncode != 0


def _dciodvfy_errors(dciodvfy: str, path: Path) -> list[str]:
    run = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60, check=False)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith(("Error", "Abort"))]


def test_dciodvfy_finds_no_errors(written: list[Path], tmp_path: Path) -> None:
    dciodvfy = _tool("dciodvfy")
    for path in written:
        assert not (errors := _dciodvfy_errors(dciodvfy, path)), f"{path.parent.name}/{path.name}: {errors}"
    # Negative control: a Secondary Capture without its (type 1) Conversion Type is reported.
    bad = pydicom.dcmread(written[1])
    del bad.ConversionType
    bad.save_as(tmp_path / "bad.dcm")
    assert any("ConversionType" in e for e in _dciodvfy_errors(dciodvfy, tmp_path / "bad.dcm"))


def test_multi_frame_source_references_the_analysed_frame(analyzer: Analyzer, pydicom_files: Path) -> None:
    data = (pydicom_files / "SC_rgb_rle_2frame.dcm").read_bytes()
    f = analyzer.analyze(data)
    second = f.additional_frames[0]
    source = header(data)
    results = build_results(second, source)
    assert results.sc.SourceImageSequence[0].ReferencedFrameNumber == 2
    report = hd.sr.MeasurementReport.from_sequence([results.sr])
    (grading,) = [g for g in report.get_image_measurement_groups()
                  if g.tracking_identifier == "Diabetic retinopathy grading"]
    (item,) = [i for i in grading[0].ContentSequence if i.ValueType == "IMAGE"]
    assert item.ReferencedSOPSequence[0].ReferencedFrameNumber == 2
    # Each frame's results are their own instances.
    assert build_results(f, source).sr.SOPInstanceUID != results.sr.SOPInstanceUID


def test_research_grader_states_research_use_and_data_terms(research_analyzer: Analyzer, op_dicom: bytes,
                                                            tmp_path: Path) -> None:
    """A grader trained on published real data: the SR's statement and both series descriptions say research
    use, not for clinical use (not the synthetic warning), and the SR and the SC carry the card's full
    statement with the data's terms."""
    from tests.conftest import TINY_RESEARCH_TERMS

    f = research_analyzer.analyze(op_dicom)
    assert TINY_RESEARCH_TERMS in f.disclaimer
    sr_path, sc_path = _write(build_results(f, header(op_dicom)), tmp_path)
    sr, sc = pydicom.dcmread(sr_path), pydicom.dcmread(sc_path)
    for ds in (sr, sc):
        assert "research use only" in ds.SeriesDescription and "synthetic" not in ds.SeriesDescription.lower()
    assert AI_STATEMENT_RESEARCH in sc.ImageComments and TINY_RESEARCH_TERMS in sc.ImageComments
    texts = [item.TextValue for item in sr.ContentSequence if "ContentSequence" in item
             for item in item.ContentSequence if getattr(item, "ValueType", "") == "TEXT"]
    (statement,) = [t for t in texts if t.startswith(AI_STATEMENT_RESEARCH)]
    assert f.disclaimer in statement and "synthetic" not in statement.lower()
