"""service.result_store: receive/claim/finish states, idempotency, two stores on one folder, purge, sealing."""

from __future__ import annotations

import time
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from service.at_rest import SealError, Sealer
from service.result_store import InstanceQuery, ResultStore, dicom_bytes, is_uid, main, metadata_json

KEY = Sealer(bytes(range(32)))
OP = "1.2.840.10008.5.1.4.1.1.77.1.5.1"
SR = "1.2.840.10008.5.1.4.1.1.88.33"


def _instance(sop_class: str = OP, modality: str = "OP", study: str = "1.2.3", uid: str | None = None) -> Dataset:
    ds = Dataset()
    ds.PatientName, ds.PatientID = "DOE^JANE", "PID-42"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, uid or generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 7, 1
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = sop_class, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


@pytest.fixture()
def store(tmp_path: Path) -> ResultStore:
    s = ResultStore(tmp_path, KEY, max_pending=2)
    yield s
    s.close()


def test_uid_syntax() -> None:
    assert is_uid("1.2.840.10008.5.1.4.1.1.7") and is_uid("0") and is_uid("2.25.1234")
    for bad in ("", "1..2", "1.02", "../etc/passwd", "1.2.", "a.b", "1" * 65, "1.2/3"):
        assert not is_uid(bad), bad


def test_receive_claim_finish(store: ResultStore) -> None:
    ds = _instance()
    data = dicom_bytes(ds)
    assert store.receive(data, ds) == "queued"
    assert store.receive(data, ds) == "duplicate"
    assert store.analysis(ds.SOPInstanceUID).state == "pending"
    uid, sha = store.claim()
    assert uid == ds.SOPInstanceUID and store.claim() is None
    assert store.received(uid) == data
    assert store.receive(data, ds) == "duplicate"  # running
    assert store.finish(uid, sha) and store.analysis(uid).state == "done"
    with pytest.raises(FileNotFoundError):
        store.received(uid)  # the photograph is not kept
    assert store.receive(data, ds) == "duplicate"  # done


def test_new_bytes_while_running_are_analysed_again(store: ResultStore) -> None:
    ds = _instance()
    store.receive(dicom_bytes(ds), ds)
    uid, sha = store.claim()
    ds.SeriesDescription = "corrected"
    assert store.receive(dicom_bytes(ds), ds) == "queued"
    assert not store.finish(uid, sha)  # the old analysis does not close the new one
    assert store.analysis(uid).state == "pending" and store.received(uid) == dicom_bytes(ds)


def test_failed_analysis_is_retried_on_resend(store: ResultStore) -> None:
    ds = _instance()
    store.receive(dicom_bytes(ds), ds)
    uid, sha = store.claim()
    store.finish(uid, sha, error=("unreadable_image", "corrupt"))
    a = store.analysis(uid)
    assert (a.state, a.error_code, a.attempts) == ("failed", "unreadable_image", 1)
    assert store.receive(dicom_bytes(ds), ds) == "queued"


def test_bounded_queue(store: ResultStore) -> None:
    for _ in range(2):
        ds = _instance()
        assert store.receive(dicom_bytes(ds), ds) == "queued"
    ds = _instance()
    assert store.receive(dicom_bytes(ds), ds) == "busy" and store.analysis(ds.SOPInstanceUID) is None


def test_two_stores_on_one_folder_never_claim_twice(tmp_path: Path) -> None:
    a, b = ResultStore(tmp_path, KEY, max_pending=10), ResultStore(tmp_path, KEY, max_pending=10)
    for _ in range(5):
        ds = _instance()
        a.receive(dicom_bytes(ds), ds)
    claimed = []
    while (c := (a.claim() if len(claimed) % 2 else b.claim())) is not None:
        claimed.append(c[0])
    assert len(claimed) == len(set(claimed)) == 5
    a.close(), b.close()


def test_stale_running_analyses_are_requeued(store: ResultStore) -> None:
    ds = _instance()
    store.receive(dicom_bytes(ds), ds)
    store.claim()
    assert store.requeue_stale(3600) == 0
    time.sleep(0.02)
    assert store.requeue_stale(0.01) == 1 and store.claim()[0] == ds.SOPInstanceUID


def test_results_are_replaced_not_duplicated_and_queryable(store: ResultStore) -> None:
    sr = _instance(SR, "SR")
    store.put_result(sr, source_sop_instance_uid="1.9")
    sr.ContentDescription = "again"
    store.put_result(sr, source_sop_instance_uid="1.9")
    sc = _instance("1.2.840.10008.5.1.4.1.1.7", "OT", study="1.2.4")
    store.put_result(sc, source_sop_instance_uid="1.9")
    assert len(store.find(InstanceQuery())) == 2
    assert [r.modality for r in store.find(InstanceQuery(modality=["SR"]))] == ["SR"]
    assert store.find(InstanceQuery(study_instance_uid=["1.2.4"]))[0].sop_instance_uid == sc.SOPInstanceUID
    assert store.find(InstanceQuery(study_instance_uid=[])) == []
    assert store.instance(sr.SOPInstanceUID).ContentDescription == "again"
    assert store.metadata(sr.SOPInstanceUID)["00100010"]["Value"][0]["Alphabetic"] == "DOE^JANE"
    assert {r.modality for r in store.results_of("1.9")} == {"SR", "OT"}
    with pytest.raises(KeyError):
        store.instance_bytes("1.2.3.4")


def test_nothing_identifying_in_clear_and_other_keys_cannot_read(store: ResultStore, tmp_path: Path) -> None:
    ds = _instance()
    store.receive(dicom_bytes(ds), ds)
    store.put_result(_instance(SR, "SR"), source_sop_instance_uid=ds.SOPInstanceUID)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert b"DOE^JANE" not in path.read_bytes() and b"PID-42" not in path.read_bytes(), path.name
    other = ResultStore(tmp_path, Sealer(bytes(32)))
    with pytest.raises(SealError):
        other.received(ds.SOPInstanceUID)
    other.close()


def test_metadata_leaves_out_pixel_data() -> None:
    ds = _instance("1.2.840.10008.5.1.4.1.1.7", "OT")
    ds.Rows = ds.Columns = 2
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = b"\0" * 12
    meta = metadata_json(ds)
    assert "7FE00010" not in meta and meta["00280010"]["Value"] == [2]
    assert pydicom.dcmread(BytesIO(dicom_bytes(ds))).PixelData == b"\0" * 12


def test_purge_by_age(store: ResultStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    ds = _instance()
    store.receive(dicom_bytes(ds), ds)
    uid, sha = store.claim()
    store.finish(uid, sha)
    store.put_result(_instance(SR, "SR"), source_sop_instance_uid=uid)
    assert store.purge(3600) == 0 and len(store.find(InstanceQuery())) == 1
    assert store.purge(3600, now=time.time() + 7200) == 1
    assert store.find(InstanceQuery()) == [] and store.analysis(uid) is None
    assert list((tmp_path / "results").iterdir()) == []
    # The command line does the same on the configured data folder.
    monkeypatch.setenv("FOVEA_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("FOVEA_STORAGE_KEY", raising=False)
    assert main(["purge", "--older-than-days", "30"]) == 0
    assert "deleted 0 result instances" in capsys.readouterr().out


def test_results_belong_to_the_sending_site(store: ResultStore) -> None:
    ds = _instance()
    data = dicom_bytes(ds)
    assert store.receive(data, ds, site="a") == "queued"
    uid, sha = store.claim()
    store.put_result(_instance(SR, "SR"), source_sop_instance_uid=uid)
    store.finish(uid, sha)
    assert len(store.find(InstanceQuery(), site="a")) == 1 and store.find(InstanceQuery(), site="b") == []
    assert store.analysis(uid, site="b") is None and store.analysis(uid, site="a").state == "done"
    assert store.receive(data, ds, site="a") == "duplicate"
    assert store.receive(data, ds, site="b") == "queued"  # the same instance from another site is its own
