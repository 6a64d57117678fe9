"""The one path of a received DICOM instance through both doors, with a real Analyzer (the embedded default
grader): a DICOMweb background analysis is audited with its models and outcome, a stored instance is read
under the decode limits (and parsed once there), and DICOMweb and the gateway give the same results per frame
of a multi-frame instance."""

from __future__ import annotations

import hashlib
import json
import os
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, MultiFrameTrueColorSecondaryCaptureImageStorage
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from analysis.decode import DecodeLimits
from analysis.errors import UnreadableImage
from analysis.findings import Findings
from analysis.pipeline import Analyzer
from service.at_rest import Sealer
from service.audit import AuditLog
from service.dicomweb import create_app
from service.dicomweb_worker import AUDIT_ENDPOINT
from service.gateway.queue import DurableQueue
from service.gateway.worker import Worker, default_builder
from service.multipart import encode_related
from service.result_store import ResultStore

REPO = Path(__file__).resolve().parents[2]
STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=XyZ'
SITE = {"x-test-site": "clinic-a"}


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer.load(REPO / "models" / "default" / "dr-grader.card.json")


@pytest.fixture()
def audit(tmp_path: Path) -> AuditLog:
    return AuditLog(f"sqlite:///{tmp_path / 'audit.sqlite'}")


def _client(analyze, store: ResultStore, audit: AuditLog | None, decode_limits: DecodeLimits = DecodeLimits()
            ) -> TestClient:
    app = create_app(analyze, store, audit=audit, start_worker=False, decode_limits=decode_limits,
                     site=lambda request: request.headers.get("x-test-site"))
    return TestClient(Starlette(routes=[Mount("/dicomweb", app)]))


def _stow(client: TestClient, parts: list[bytes]):
    body = encode_related([("application/dicom", p) for p in parts], "XyZ")
    return client.post("/dicomweb/studies", content=body, headers={"content-type": STOW_TYPE, **SITE})


def _drain(client: TestClient) -> int:
    return client.app.routes[0].app.state.dicomweb.worker.drain()


def _state(client: TestClient, data: bytes) -> dict:
    sop = pydicom.dcmread(BytesIO(data), stop_before_pixels=True).SOPInstanceUID
    return client.get(f"/dicomweb/analyses/{sop}", headers=SITE).json()


def test_a_dicomweb_analysis_is_audited_with_its_models_and_outcome(analyzer, store, audit, fundus_files) -> None:
    client = _client(analyzer.analyze, store, audit)
    data = fundus_files[0].read_bytes()
    assert _stow(client, [data]).status_code == 200
    assert _drain(client) == 1 and _state(client, data)["state"] == "done"
    [row] = audit.rows()
    card = analyzer.grader_card
    source = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
    assert (row["endpoint"], row["site"], row["status"]) == (AUDIT_ENDPOINT, "clinic-a", 200)
    assert json.loads(row["models"]) == [{"name": card.name, "version": card.version, "sha256": card.sha256}]
    assert json.loads(row["input_sha256"]) == [hashlib.sha256(data).hexdigest()]
    outcome = json.loads(row["outcome"])
    assert set(outcome) == {"gradable", "quality_score", "grade", "referable", "frames"} and outcome["frames"] == 1
    assert json.loads(row["source_uids"]) == [audit.hash_uid(str(source.StudyInstanceUID)),
                                              audit.hash_uid(str(source.SOPInstanceUID))]
    assert b"SYNTHETIC" not in json.dumps(row).encode() and b"P-TEST-1" not in json.dumps(row).encode()
    assert audit.verify().ok


def test_a_refused_dicomweb_analysis_is_audited(store, audit, fundus_files) -> None:
    def refuses(instance, *, request_id: str) -> Findings:
        raise UnreadableImage("The JPEG pixel data could not be decoded.")

    client = _client(refuses, store, audit)
    data = fundus_files[0].read_bytes()
    assert _stow(client, [data]).status_code == 200
    _drain(client)
    assert _state(client, data)["error"]["code"] == "unreadable_image"
    [row] = audit.rows()
    assert (row["endpoint"], row["site"], row["status"]) == (AUDIT_ENDPOINT, "clinic-a", 400)
    assert json.loads(row["outcome"]) == {"error": "unreadable_image"}
    assert json.loads(row["input_sha256"]) == [hashlib.sha256(data).hexdigest()]


def test_a_planted_over_limit_instance_is_refused_not_parsed(store, audit, multi_frame_dicom,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """An instance in the store that the read limits refuse (here: a deflated one inflating past the limit,
    put in the store directly, as a store written under looser limits would hold it) is refused before
    pydicom parses it, and the refusal is audited."""
    data = multi_frame_dicom(DeflatedExplicitVRLittleEndian)
    def never(instance, *, request_id: str) -> Findings:
        raise AssertionError("an over-limit instance reached the analysis")

    client = _client(never, store, audit, DecodeLimits(max_inflated_bytes=100_000))
    assert store.receive(data, pydicom.dcmread(BytesIO(data), stop_before_pixels=True), site="clinic-a") == "queued"
    parsed: list[int] = []
    real = pydicom.dcmread
    monkeypatch.setattr(pydicom, "dcmread", lambda *a, **k: parsed.append(1) or real(*a, **k))
    assert _drain(client) == 1
    monkeypatch.undo()
    assert parsed == []
    state = _state(client, data)
    assert state["state"] == "failed" and state["error"]["code"] == "payload_too_large"
    [row] = audit.rows()
    assert (row["status"], json.loads(row["outcome"])) == (413, {"error": "payload_too_large"})


def test_a_dicomweb_instance_is_parsed_once_at_receipt_and_once_for_the_analysis(
        analyzer, store, fundus_files, monkeypatch: pytest.MonkeyPatch) -> None:
    client = _client(analyzer.analyze, store, None)
    data = fundus_files[0].read_bytes()
    parses: list[str] = []
    real = pydicom.dcmread

    def counting(fp, *args, **kwargs):
        if isinstance(fp, BytesIO) and fp.getvalue() == data:
            parses.append("limited" if kwargs.get("force") is False else "other")
        return real(fp, *args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", counting)
    assert _stow(client, [data]).status_code == 200
    assert parses == ["limited"]
    assert _drain(client) == 1
    assert parses == ["limited", "limited"]
    monkeypatch.undo()
    assert _state(client, data)["state"] == "done"


def test_both_doors_give_the_same_results_per_frame(analyzer, store, multi_frame_dicom, tmp_path) -> None:
    multi_frame = multi_frame_dicom()
    client = _client(analyzer.analyze, store, None)
    assert _stow(client, [multi_frame]).status_code == 200
    assert _drain(client) == 1
    source_uid = str(pydicom.dcmread(BytesIO(multi_frame), stop_before_pixels=True).SOPInstanceUID)
    dicomweb = [store.instance(r.sop_instance_uid) for r in store.results_of(source_uid)]

    sent: list[list[bytes]] = []

    class Capture:
        def send(self, results: list[bytes]) -> None:
            sent.append(results)

    def service(part10: bytes) -> Findings:  # what POST /analyze answers, through its JSON
        return Findings.model_validate_json(analyzer.analyze(part10).model_dump_json())

    with DurableQueue(tmp_path / "queue", Sealer(os.urandom(32))) as queue:
        queue.enqueue(multi_frame, sop_instance_uid=source_uid,
                      sop_class_uid=MultiFrameTrueColorSecondaryCaptureImageStorage)
        assert Worker(queue, analyse=service, build=default_builder(), sender=Capture()).run_once() == 1
    [blobs] = sent
    gateway = [pydicom.dcmread(BytesIO(b)) for b in blobs]

    def per_frame(results: list[pydicom.Dataset]) -> list[tuple[str, str, str]]:
        return sorted((str(r.SOPClassUID), str(r.SOPInstanceUID), str(r.SeriesInstanceUID)) for r in results)

    assert len(gateway) == 4 and per_frame(gateway) == per_frame(dicomweb)
    assert [str(r.Modality) for r in gateway] == ["SR", "OT", "SR", "OT"]  # frame 0, then frame 1
    by_uid = {str(r.SOPInstanceUID): r for r in dicomweb}
    for result in gateway:
        other = by_uid[str(result.SOPInstanceUID)]
        if result.Modality == "SR":
            assert _content(result) == _content(other)
        else:
            assert result.PixelData == other.PixelData


def _content(sr: pydicom.Dataset) -> list[dict]:
    """The SR's content tree (DICOM JSON)."""
    return [item.to_json_dict() for item in sr.ContentSequence]


def test_a_refused_stow_part_is_named_from_its_file_meta_never_parsed(
        store, multi_frame_dicom, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deflated part that inflates past the limit is refused before pydicom parses it, and the Failed SOP
    Sequence names it from its file meta (group 0002) alone."""
    data = multi_frame_dicom(DeflatedExplicitVRLittleEndian)
    sop = str(pydicom.dcmread(BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
    client = _client(lambda instance, *, request_id: pytest.fail("analysed"), store, None,
                     DecodeLimits(max_inflated_bytes=100_000))
    parsed: list[int] = []
    real = pydicom.dcmread
    monkeypatch.setattr(pydicom, "dcmread", lambda *a, **k: parsed.append(1) or real(*a, **k))
    r = _stow(client, [data])
    assert parsed == []
    assert r.status_code == 409
    [failed] = r.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xA700]
    assert failed["00081155"]["Value"] == [sop]
    assert failed["00081150"]["Value"] == [MultiFrameTrueColorSecondaryCaptureImageStorage]
