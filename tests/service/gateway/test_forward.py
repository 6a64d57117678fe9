"""Senders: AET@host:port parsing, C-STORE to a real pynetdicom Storage SCP (success and failure statuses),
STOW-RS request shape and failure handling."""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage, generate_uid
from pynetdicom import AE, evt

from service.gateway.forward import Destination, DimseSender, ForwardFailed, StowSender, to_part10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _instance(sop_class: str) -> bytes:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "SR" if sop_class == ComprehensiveSRStorage else "OT"
    return to_part10(ds)


def test_destination_parse() -> None:
    assert Destination.parse("ORTHANC@127.0.0.1:4242") == Destination("ORTHANC", "127.0.0.1", 4242)
    assert str(Destination.parse("PACS@[::1]:104")) == "PACS@::1:104"
    for bad in ("ORTHANC", "ORTHANC@host", "@h:1", "A\\B@h:1", "X" * 17 + "@h:1", "A@h:0", "A@h:x"):
        with pytest.raises(ValueError):
            Destination.parse(bad)


def test_to_part10_round_trips() -> None:
    blob = _instance(ComprehensiveSRStorage)
    assert blob[128:132] == b"DICM"
    ds = pydicom.dcmread(io.BytesIO(blob))
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


@pytest.fixture
def store_scp() -> Iterator[tuple[int, list[Dataset], list[int]]]:
    """A Storage SCP for SR and SC; answers with the statuses in the returned list (default Success)."""
    received: list[Dataset] = []
    statuses: list[int] = []

    def handle(event: evt.Event) -> int:
        received.append(event.dataset)
        return statuses.pop(0) if statuses else 0x0000

    ae = AE(ae_title="PACS")
    ae.require_called_aet = True
    ae.add_supported_context(ComprehensiveSRStorage)
    ae.add_supported_context(SecondaryCaptureImageStorage)
    port = _free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle)])
    yield port, received, statuses
    server.shutdown()


def test_dimse_sender_stores_every_result(store_scp: tuple[int, list[Dataset], list[int]]) -> None:
    port, received, _ = store_scp
    results = [_instance(ComprehensiveSRStorage), _instance(SecondaryCaptureImageStorage)]
    DimseSender(Destination("PACS", "127.0.0.1", port)).send(results)
    assert [d.SOPInstanceUID for d in received] == [pydicom.dcmread(io.BytesIO(b)).SOPInstanceUID
                                                    for b in results]


def test_dimse_sender_reports_failure_status(store_scp: tuple[int, list[Dataset], list[int]]) -> None:
    port, _, statuses = store_scp
    statuses.append(0xA700)
    with pytest.raises(ForwardFailed, match="status 0xA700"):
        DimseSender(Destination("PACS", "127.0.0.1", port)).send([_instance(ComprehensiveSRStorage)])


def test_dimse_sender_reports_rejection_and_refusal(store_scp: tuple[int, list[Dataset], list[int]]) -> None:
    port, _, _ = store_scp
    with pytest.raises(ForwardFailed, match="rejected"):  # wrong called AE title
        DimseSender(Destination("NOTPACS", "127.0.0.1", port)).send([_instance(ComprehensiveSRStorage)])
    with pytest.raises(ForwardFailed, match="could not be established"):  # nobody listening
        DimseSender(Destination("PACS", "127.0.0.1", _free_port()), timeout_s=2).send(
            [_instance(ComprehensiveSRStorage)])


def test_stow_sender_posts_multipart_related() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    blobs = [_instance(ComprehensiveSRStorage), _instance(SecondaryCaptureImageStorage)]
    StowSender("http://pacs.test/dicom-web", transport=httpx.MockTransport(handler)).send(blobs)
    [req] = seen
    assert req.url.path == "/dicom-web/studies"
    ctype = req.headers["content-type"]
    assert ctype.startswith('multipart/related; type="application/dicom"; boundary=')
    boundary = ctype.split("boundary=")[1].encode()
    parts = req.content.split(b"--" + boundary)
    assert len(parts) == 4 and parts[-1] == b"--\r\n"
    assert all(blob in req.content for blob in blobs)


def test_stow_sender_failure_hides_credentials() -> None:
    sender = StowSender("http://user:secret@pacs.test/dw",
                        transport=httpx.MockTransport(lambda r: httpx.Response(409)))
    with pytest.raises(ForwardFailed) as info:
        sender.send([_instance(ComprehensiveSRStorage)])
    assert "HTTP 409" in str(info.value) and "secret" not in str(info.value)
