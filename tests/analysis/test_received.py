"""analysis.received (the one path of a received DICOM instance) and the parsed instance it hands to decode:
read once under the limits, analyse the parse, audit the read and the analysis, results per frame."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset

import analysis.dicom_frames as dicom_frames
from analysis.decode import DecodeLimits, DicomInstance, decode, read_dicom_instance
from analysis.errors import FoveaError, PayloadTooLarge, UnreadableImage
from analysis.findings import Findings
from analysis.received import InstancePath, frame_findings


def _dicom(frames: int = 1, *, transfer_syntax: str = uid.ExplicitVRLittleEndian) -> bytes:
    rng = np.random.default_rng(frames)
    pixels = rng.integers(0, 255, (frames, 48, 64, 3), dtype=np.uint8)
    sop_class = uid.MultiFrameTrueColorSecondaryCaptureImageStorage if frames > 1 else \
        uid.OphthalmicPhotography8BitImageStorage
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = uid.generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid.generate_uid(), uid.generate_uid()
    ds.Modality = "OP"
    ds.set_pixel_data(pixels if frames > 1 else pixels[0], "RGB", 8, generate_instance_uid=False)
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _findings(grade: int, frame: int = 0, frames: int = 1, sop: str | None = None) -> Findings:
    return Findings.model_validate({
        "request_id": "r", "disclaimer": "synthetic", "timing_ms": {}, "models": [],
        "image": {"source": "dicom", "width": 64, "height": 48, "frame": frame, "frames": frames,
                  "sop_instance_uid": sop},
        "quality": {"gradable": True, "score": 0.9, "method": "test"},
        "dr_grade": {"grade": grade, "label": "x", "probabilities": [0.2] * 5},
        "saliency": {"target_grade": max(grade, 1), "heatmap_png": "", "overlay_png": ""},
    })


@dataclass
class Record:
    request_id: str
    input_sha256: str
    outcome: str | None = None
    committed: bool = False

    def answered(self, result: Findings) -> None:
        self.outcome = f"grade {result.dr_grade.grade}"

    def refused(self, exc: FoveaError) -> None:
        self.outcome = exc.code


@dataclass
class Audit:
    """A scope that keeps its records in a list (the service's is service.audit.AuditLog.record)."""

    records: list[Record] = field(default_factory=list)

    @contextmanager
    def __call__(self, request_id: str, input_sha256: str) -> Iterator[Record]:
        rec = Record(request_id, input_sha256)
        self.records.append(rec)
        try:
            yield rec
        except BaseException:
            rec.outcome = "internal_error"
            raise
        finally:
            rec.committed = True


def test_a_parsed_instance_is_decoded_without_parsing_again(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _dicom()
    instance = read_dicom_instance(data)
    expected = decode(data)[0].rgb
    monkeypatch.setattr(dicom_frames, "read_dataset_limited", lambda *a, **k: pytest.fail("parsed again"))
    [image] = decode(instance)
    assert np.array_equal(image.rgb, expected) and image.sop_instance_uid == instance.dataset.SOPInstanceUID


def test_a_parsed_instance_is_parsed_again_under_tighter_limits() -> None:
    data = _dicom(transfer_syntax=uid.DeflatedExplicitVRLittleEndian)
    instance = read_dicom_instance(data)  # the default limits: read and checked
    with pytest.raises(PayloadTooLarge, match="inflates"):
        decode(instance, limits=DecodeLimits(max_inflated_bytes=1000))
    with pytest.raises(PayloadTooLarge):  # and the checks that need no parse are made under the new limits
        decode(instance, limits=DecodeLimits(max_bytes=len(data) - 1))


def test_frame_findings_are_frame_0_then_the_additional_frames() -> None:
    first = _findings(1).model_copy(update={"additional_frames": [_findings(2, 1, 3), _findings(3, 2, 3)]})
    frames = frame_findings(first)
    assert [f.dr_grade.grade for f in frames] == [1, 2, 3]
    assert all(f.additional_frames == [] for f in frames)


def _path(analyser, audit: Audit | None = None, limits: DecodeLimits = DecodeLimits()) -> InstancePath:
    return InstancePath(analyser=analyser, limits=limits, audit=audit,
                        build=lambda f, src: [(g.image.frame, str(src.SOPInstanceUID)) for g in frame_findings(f)])


def test_the_path_reads_once_analyses_the_parse_builds_per_frame_and_delivers() -> None:
    data = _dicom(frames=2)
    seen: list[DicomInstance] = []

    def analyser(instance: DicomInstance, *, request_id: str) -> Findings:
        seen.append(instance)
        sop = str(instance.dataset.SOPInstanceUID)
        return _findings(2, 0, 2, sop).model_copy(update={"additional_frames": [_findings(3, 1, 2, sop)]})

    audit, delivered = Audit(), []
    analysed = _path(analyser, audit).run(data, delivered.append, request_id="req-1")
    sop = str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID)
    assert [i.data for i in seen] == [data] and seen[0] is analysed.instance
    assert delivered == [[(0, sop), (1, sop)]]
    [rec] = audit.records
    assert (rec.request_id, rec.outcome, rec.committed) == ("req-1", "grade 2", True)
    assert rec.input_sha256 == analysed.instance.sha256


def test_refusals_at_the_read_and_at_the_analysis_are_audited() -> None:
    data = _dicom()
    audit = Audit()

    def never(instance: DicomInstance, *, request_id: str) -> Findings:
        raise AssertionError("an over-limit instance reached the analysis")

    with pytest.raises(PayloadTooLarge):
        _path(never, audit, DecodeLimits(max_bytes=len(data) - 1)).analyse(data)

    def refuses(instance: DicomInstance, *, request_id: str) -> Findings:
        raise UnreadableImage("The pixel data could not be decoded.")

    with pytest.raises(UnreadableImage):
        _path(refuses, audit).analyse(data)

    def crashes(instance: DicomInstance, *, request_id: str) -> Findings:
        raise RuntimeError("model failed")

    with pytest.raises(RuntimeError):
        _path(crashes, audit).analyse(data)
    assert [(r.outcome, r.committed) for r in audit.records] == [
        ("payload_too_large", True), ("unreadable_image", True), ("internal_error", True)]


def test_without_an_audit_scope_the_path_still_reads_under_the_limits() -> None:
    data = _dicom(transfer_syntax=uid.DeflatedExplicitVRLittleEndian)

    def never(instance: DicomInstance, *, request_id: str) -> Findings:
        raise AssertionError("an over-limit instance reached the analysis")

    with pytest.raises(PayloadTooLarge, match="inflates"):
        _path(never, limits=DecodeLimits(max_inflated_bytes=1000)).analyse(data)


def test_a_delivery_that_fails_is_not_audited_as_answered() -> None:
    data = _dicom()

    def analyser(instance: DicomInstance, *, request_id: str) -> Findings:
        return _findings(1, 0, 1, str(instance.dataset.SOPInstanceUID))

    def store_full(results: object) -> None:
        raise OSError("disk full")

    audit = Audit()
    with pytest.raises(OSError):
        _path(analyser, audit).run(data, store_full)
    [rec] = audit.records
    assert (rec.outcome, rec.committed) == ("internal_error", True)
