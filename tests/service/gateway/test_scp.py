"""The SCP with pynetdicom's own SCU: C-ECHO; fundus accepted and queued before Success; other SOP classes
refused at association; unusable instances refused with a status naming why."""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, OphthalmicPhotography8BitImageStorage
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from service.gateway.queue import DurableQueue, item_key
from service.gateway.scp import ScpConfig, build_ae


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gateway(queue: DurableQueue) -> Iterator[tuple[int, list[int]]]:
    """A running SCP on a free loopback port; yields (port, wake-up calls)."""
    woken: list[int] = []
    ae, handlers = build_ae(queue, ScpConfig(ae_title="FOVEA"), on_queued=lambda: woken.append(1))
    port = _free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    yield port, woken
    server.shutdown()


def _scu(*contexts: tuple[str, list[str]]) -> AE:
    ae = AE(ae_title="SCU")
    for sop, syntaxes in contexts:
        ae.add_requested_context(sop, syntaxes)
    return ae


def test_echo(gateway: tuple[int, list[int]]) -> None:
    assoc = _scu((Verification, [ExplicitVRLittleEndian])).associate("127.0.0.1", gateway[0], ae_title="FOVEA")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_wrong_called_ae_title_is_rejected(gateway: tuple[int, list[int]]) -> None:
    assoc = _scu((Verification, [ExplicitVRLittleEndian])).associate("127.0.0.1", gateway[0], ae_title="OTHER")
    assert assoc.is_rejected


def test_calling_ae_titles_can_be_restricted(queue: DurableQueue) -> None:
    ae, handlers = build_ae(queue, ScpConfig(ae_title="FOVEA", allowed_calling=("PACS",)))
    port = _free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    try:
        assert _scu((Verification, [ExplicitVRLittleEndian])).associate(
            "127.0.0.1", port, ae_title="FOVEA").is_rejected  # calling AE "SCU" is not allowed
        scu = AE(ae_title="PACS")
        scu.add_requested_context(Verification, [ExplicitVRLittleEndian])
        assoc = scu.associate("127.0.0.1", port, ae_title="FOVEA")
        assert assoc.is_established
        assoc.release()
    finally:
        server.shutdown()


def test_fundus_jpeg_is_queued_before_success(gateway: tuple[int, list[int]], queue: DurableQueue,
                                              op_file: Path) -> None:
    ds = pydicom.dcmread(op_file)
    assoc = _scu((OphthalmicPhotography8BitImageStorage, [JPEGBaseline8Bit])).associate(
        "127.0.0.1", gateway[0], ae_title="FOVEA")
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0x0000
    item = queue.load(item_key(ds.SOPInstanceUID))
    assert item.sop_class_uid == OphthalmicPhotography8BitImageStorage
    stored = pydicom.dcmread(io.BytesIO(queue.instance(item)))
    assert stored.SOPInstanceUID == ds.SOPInstanceUID and stored.PixelData == ds.PixelData
    assert gateway[1] == [1]


def test_ct_is_refused_at_association(gateway: tuple[int, list[int]], queue: DurableQueue) -> None:
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assoc = _scu((CTImageStorage, [ExplicitVRLittleEndian, ct.file_meta.TransferSyntaxUID])).associate(
        "127.0.0.1", gateway[0], ae_title="FOVEA")
    # The association may be accepted for nothing or rejected; either way no context carries CT.
    if assoc.is_established:
        assert [c for c in assoc.accepted_contexts if c.abstract_syntax == CTImageStorage] == []
        with pytest.raises(ValueError):
            assoc.send_c_store(ct)
        assoc.release()
    assert queue.counts()["pending"] == 0


@pytest.mark.parametrize("damage, status, words", [
    ("no_pixels", 0xA900, "unsupported_dicom: The DICOM file contains no Pixel Data"),
    ("tiny", 0xA900, "image_too_small: "),
    ("truncated", 0xC000, "unreadable_image: "),
])
def test_unusable_instance_gets_a_failure_status_naming_why(gateway: tuple[int, list[int]], queue: DurableQueue,
                                                            op_file: Path, damage: str, status: int,
                                                            words: str) -> None:
    ds = pydicom.dcmread(op_file)
    if damage == "no_pixels":
        del ds.PixelData
    elif damage == "truncated":  # the JPEG codestream cut in half
        from pydicom.encaps import encapsulate, generate_frames
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        ds.PixelData = encapsulate([frame[: len(frame) // 2]])
    else:  # a 16x16 photograph: no fundus camera's output
        import numpy as np

        from datasets.synthetic.dicom import write_op_dicom
        write_op_dicom(np.zeros((16, 16, 3), np.uint8), op_file.with_name("tiny.dcm"), laterality="L",
                       patient_id="X")
        ds = pydicom.dcmread(op_file.with_name("tiny.dcm"))
    assoc = _scu((OphthalmicPhotography8BitImageStorage, [JPEGBaseline8Bit])).associate(
        "127.0.0.1", gateway[0], ae_title="FOVEA")
    answer = assoc.send_c_store(ds)
    assoc.release()
    assert answer.Status == status
    assert words.lower() in answer.ErrorComment.lower() and len(answer.ErrorComment) <= 64
    assert queue.counts()["pending"] == 0


def test_no_success_unless_queued_durably(tmp_path: Path, op_file: Path) -> None:
    class FullDisk:
        def write(self, path: Path, data: bytes, purpose: bytes = b"") -> None:
            raise OSError(28, "No space left on device")

        def read(self, path: Path, purpose: bytes = b"") -> bytes:
            raise AssertionError

    with DurableQueue(tmp_path / "q", FullDisk()) as q:
        ae, handlers = build_ae(q)
        port = _free_port()
        server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
        try:
            assoc = _scu((OphthalmicPhotography8BitImageStorage, [JPEGBaseline8Bit])).associate(
                "127.0.0.1", port, ae_title="FOVEA")
            answer = assoc.send_c_store(pydicom.dcmread(op_file))
            assoc.release()
        finally:
            server.shutdown()
        assert answer.Status == 0xA700 and "queue could not be written" in answer.ErrorComment
        assert q.counts()["pending"] == 0
