"""service.dicomweb: STOW-RS, QIDO-RS, WADO-RS and the analysis state, on Starlette's TestClient with a real
Analyzer (the embedded default grader), the real result builder and a real sealed store in a temp folder."""

from __future__ import annotations

import contextlib
import time
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from service.at_rest import Sealer
from analysis.decode import DecodeLimits
from service.dicomweb import create_app
from service.multipart import MultipartLimits, encode_related, parse_media_type
from analysis.pipeline import Analyzer
from service.result_store import ResultStore

REPO = Path(__file__).resolve().parents[2]
STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=XyZ'
OP_8BIT = "1.2.840.10008.5.1.4.1.1.77.1.5.1"
CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture(scope="module")
def analyzer(fundus_files: list[Path]) -> Analyzer:
    a = Analyzer.load(REPO / "models" / "default" / "dr-grader.card.json")
    # One analysis and result build in this (the main) thread first, so the libraries' lazy imports do not
    # first happen in a worker thread: CPython 3.11.7's ast.parse is not thread-safe (cpython issue 106905,
    # fixed in 3.11.8), and an import can parse source.
    from analysis.dicom_out import build_results

    data = fundus_files[0].read_bytes()
    build_results(a.analyze(data), pydicom.dcmread(BytesIO(data)))
    return a


def _client(analyzer: Analyzer, store: ResultStore, **kw) -> TestClient:
    app = create_app(analyzer.analyze, store, start_worker=False,
                     decode_limits=DecodeLimits(), **kw)
    # Mounted as the service mounts it, so URLs in responses carry /dicomweb.
    return TestClient(Starlette(routes=[Mount("/dicomweb", app)]))


def _web(client: TestClient):
    return client.app.routes[0].app.state.dicomweb


def _stow(client: TestClient, parts: list[bytes], url: str = "/dicomweb/studies", **headers):
    body = encode_related([("application/dicom", p) for p in parts], "XyZ")
    return client.post(url, content=body, headers={"content-type": STOW_TYPE, **headers})


def _seq(body: dict, tag: str) -> list[dict]:
    return body.get(tag, {}).get("Value", [])


def _val(item: dict, tag: str):
    v = item.get(tag, {}).get("Value")
    return v[0] if v else None


def test_stow_queues_then_results_are_searchable_and_retrievable(analyzer, store, fundus_files) -> None:
    client = _client(analyzer, store)
    src = [pydicom.dcmread(p) for p in fundus_files]
    r = _stow(client, [p.read_bytes() for p in fundus_files])
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom+json"
    body = r.json()
    refs = _seq(body, "00081199")
    assert [_val(i, "00081155") for i in refs] == [str(d.SOPInstanceUID) for d in src]
    assert all(_val(i, "00081150") == OP_8BIT for i in refs)
    assert "00081198" not in body  # no FailedSOPSequence
    # Retrieve URL: the study the results will join.
    assert _val(body, "00081190") == f"http://testserver/dicomweb/studies/{src[0].StudyInstanceUID}"

    uid = str(src[0].SOPInstanceUID)
    pending = client.get(f"/dicomweb/analyses/{uid}")
    assert pending.status_code == 202 and pending.json()["state"] == "pending"
    assert _web(client).worker.drain() == 2
    done = client.get(f"/dicomweb/analyses/{uid}")
    assert done.status_code == 200 and done.json()["state"] == "done"
    results = done.json()["results"]
    assert sorted(r["modality"] for r in results) == ["OT", "SR"]

    # QIDO: the study holds the results of both photographs (SR + SC each), in the source's study.
    studies = client.get("/dicomweb/studies").json()
    assert len(studies) == 1 and _val(studies[0], "0020000D") == str(src[0].StudyInstanceUID)
    assert _val(studies[0], "00201208") == 4 and studies[0]["00080061"]["Value"] == ["OT", "SR"]
    assert studies[0]["00100010"]["Value"][0]["Alphabetic"] == "SYNTHETIC^FUNDUS"
    study = str(src[0].StudyInstanceUID)
    srs = client.get(f"/dicomweb/studies/{study}/instances", params={"Modality": "SR"}).json()
    assert len(srs) == 2 and {_val(i, "00080060") for i in srs} == {"SR"}
    series = client.get(f"/dicomweb/studies/{study}/series").json()
    assert all(_val(s, "00201209") >= 1 for s in series)

    # WADO-RS: the SR as multipart/related application/dicom, and its metadata.
    url = _val(srs[0], "00081190")
    assert url.startswith("http://testserver/dicomweb/studies/")
    r = client.get(url)
    media, params = parse_media_type(r.headers["content-type"])
    assert r.status_code == 200 and media == "multipart/related" and params["type"] == "application/dicom"
    sr = _single_part(r.content, params["boundary"])
    assert sr.Modality == "SR" and sr.StudyInstanceUID == src[0].StudyInstanceUID
    assert str(sr.PatientName) == "SYNTHETIC^FUNDUS"
    meta = client.get(url + "/metadata").json()
    assert _val(meta[0], "00080018") == str(sr.SOPInstanceUID)


def _single_part(body: bytes, boundary: str) -> pydicom.Dataset:
    from service.multipart import MultipartLimits, RelatedReader

    reader = RelatedReader(boundary, MultipartLimits(max_parts=10, max_part_bytes=1 << 26,
                                                     max_total_bytes=1 << 27))
    reader.feed(body)
    (part,) = reader.close()
    assert part.media_type == "application/dicom" and "transfer-syntax" in part.params
    return pydicom.dcmread(BytesIO(part.data))


def test_resending_is_idempotent(analyzer, store, fundus_files) -> None:
    client = _client(analyzer, store)
    data = fundus_files[0].read_bytes()
    assert _stow(client, [data]).status_code == 200
    _web(client).worker.drain()
    first = sorted(r["sop_instance_uid"] for r in client.get(
        f"/dicomweb/analyses/{pydicom.dcmread(fundus_files[0]).SOPInstanceUID}").json()["results"])
    # Same bytes again, twice in one request and once more: nothing new is queued, no result is duplicated.
    assert _stow(client, [data, data]).status_code == 200
    assert _web(client).worker.drain() == 0
    assert len(client.get("/dicomweb/instances").json()) == 2
    # Changed bytes with the same SOP Instance UID are analysed again; the results replace the old ones.
    ds = pydicom.dcmread(BytesIO(data))
    ds.SeriesDescription = "resent"
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    assert _stow(client, [buf.getvalue()]).status_code == 200
    assert _web(client).worker.drain() == 1
    instances = client.get("/dicomweb/instances").json()
    assert sorted(_val(i, "00080018") for i in instances) == first


def test_bad_parts_are_failed_sop_entries_not_errors(analyzer, store, fundus_files, tmp_path) -> None:
    client = _client(analyzer, store)
    good = fundus_files[0].read_bytes()
    ct = pydicom.dcmread(fundus_files[1])
    ct.SOPClassUID = ct.file_meta.MediaStorageSOPClassUID = CT
    ct.SOPInstanceUID = ct.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    buf = BytesIO()
    ct.save_as(buf, enforce_file_format=True)
    r = _stow(client, [b"this is not DICOM at all", good, buf.getvalue(), good[: len(good) // 2]])
    assert r.status_code == 202  # some stored, some failed
    body = r.json()
    failed = _seq(body, "00081198")
    assert [_val(i, "00081197") for i in failed] == [0xC000, 0x0122, 0xC000]
    assert _val(failed[0], "00081155") is None  # unreadable: no UIDs to report
    assert _val(failed[1], "00081155") == "1.2.3.4.5" and _val(failed[1], "00081150") == CT
    stored = [_val(i, "00081155") for i in _seq(body, "00081199")]
    assert stored == [str(pydicom.dcmread(fundus_files[0]).SOPInstanceUID)]
    assert "part 1:" in r.headers["warning"] and "part 3:" in r.headers["warning"]
    assert "SYNTHETIC" not in r.headers["warning"]  # messages describe files, never patients

    # Nothing stored at all: 409 Conflict.
    r = _stow(client, [b"garbage"])
    assert r.status_code == 409 and _val(_seq(r.json(), "00081198")[0], "00081197") == 0xC000


def test_study_in_the_url_must_match(analyzer, store, fundus_files) -> None:
    client = _client(analyzer, store)
    study = str(pydicom.dcmread(fundus_files[0]).StudyInstanceUID)
    ok = _stow(client, [fundus_files[0].read_bytes()], url=f"/dicomweb/studies/{study}")
    assert ok.status_code == 200 and _val(ok.json(), "00081190") == f"http://testserver/dicomweb/studies/{study}"
    wrong = _stow(client, [fundus_files[0].read_bytes()], url="/dicomweb/studies/1.2.3")
    assert wrong.status_code == 409 and _val(_seq(wrong.json(), "00081198")[0], "00081197") == 0xA900


def test_request_errors(analyzer, store, fundus_files) -> None:
    client = _client(analyzer, store, limits=MultipartLimits(max_parts=2, max_part_bytes=1 << 20,
                                                             max_total_bytes=2 << 20))
    data = fundus_files[0].read_bytes()
    # 415: not multipart/related of application/dicom.
    r = client.post("/dicomweb/studies", content=data, headers={"content-type": "application/dicom"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    r = client.post("/dicomweb/studies", content=b"{}",
                    headers={"content-type": 'multipart/related; type="application/dicom+json"; boundary=XyZ'})
    assert r.status_code == 415
    # 400: no boundary, a truncated body, no parts.
    r = client.post("/dicomweb/studies", content=data,
                    headers={"content-type": 'multipart/related; type="application/dicom"'})
    assert r.status_code == 400
    body = encode_related([("application/dicom", data)], "XyZ")
    r = client.post("/dicomweb/studies", content=body[:-10], headers={"content-type": STOW_TYPE})
    assert r.status_code == 400 and "truncated" in r.json()["error"]["message"]
    r = client.post("/dicomweb/studies", content=b"--XyZ--\r\n", headers={"content-type": STOW_TYPE})
    assert r.status_code == 400
    # 413: too many parts, a part too large (the limits come from the settings in the service).
    assert _stow(client, [data] * 3).status_code == 413
    assert _stow(client, [data + b"\0" * (1 << 20)]).status_code == 413
    # 406: an Accept the response cannot satisfy.
    assert _stow(client, [data], accept="application/dicom+xml").status_code == 406
    # Nothing was stored by any of these.
    assert store.pending_count() == 0


def test_queue_is_bounded(analyzer, store, fundus_files) -> None:
    client = _client(analyzer, store, limits=MultipartLimits(max_parts=8, max_part_bytes=1 << 22,
                                                             max_total_bytes=1 << 25))
    base = pydicom.dcmread(fundus_files[0])
    parts = []
    for n in range(6):
        base.SOPInstanceUID = base.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.10.999.{n + 1}"
        buf = BytesIO()
        base.save_as(buf, enforce_file_format=True)
        parts.append(buf.getvalue())
    r = _stow(client, parts)
    assert r.status_code == 202  # max_pending=4: the fifth and sixth are refused, out of resources
    assert [_val(i, "00081197") for i in _seq(r.json(), "00081198")] == [0xA700, 0xA700]
    assert store.pending_count() == 4


def test_qido_filters_and_paging(analyzer, store, fundus_files) -> None:
    client = _client(analyzer, store)
    assert _stow(client, [p.read_bytes() for p in fundus_files]).status_code == 200
    _web(client).worker.drain()
    study = str(pydicom.dcmread(fundus_files[0]).StudyInstanceUID)
    every = client.get("/dicomweb/instances").json()
    assert len(every) == 4
    assert len(client.get("/dicomweb/instances", params={"Modality": "OT"}).json()) == 2
    assert len(client.get("/dicomweb/instances", params={"00080060": "SR"}).json()) == 2
    assert client.get("/dicomweb/instances", params={"Modality": "CT"}).json() == []
    assert client.get("/dicomweb/studies", params={"StudyInstanceUID": "1.2.3"}).json() == []
    assert len(client.get("/dicomweb/studies", params={"StudyInstanceUID": f"1.2.3,{study}"}).json()) == 1
    one = _val(every[2], "00080018")
    hit = client.get(f"/dicomweb/studies/{study}/instances", params={"SOPInstanceUID": one}).json()
    assert [_val(i, "00080018") for i in hit] == [one]
    page = client.get("/dicomweb/instances", params={"limit": 3, "offset": 0})
    assert len(page.json()) == 3 and "additional results" in page.headers["warning"]
    rest = client.get("/dicomweb/instances", params={"limit": 3, "offset": 3}).json()
    assert [_val(i, "00080018") for i in page.json() + rest] == [_val(i, "00080018") for i in every]
    r = client.get("/dicomweb/instances", params={"PatientName": "SYNTHETIC*"})
    assert r.status_code == 200 and "PatientName" in r.headers["warning"]
    assert "SYNTHETIC" not in r.headers["warning"]  # key names only, never values
    assert client.get("/dicomweb/instances", params={"limit": "-1"}).status_code == 400
    assert client.get("/dicomweb/instances", params={"SOPInstanceUID": "1.2.x"}).status_code == 400
    assert client.get("/dicomweb/studies", headers={"accept": "application/dicom+xml"}).status_code == 406


def test_wado_errors(analyzer, store) -> None:
    client = _client(analyzer, store)
    assert client.get("/dicomweb/studies/1.2.3/series/4.5/instances/6.7").status_code == 404
    assert client.get("/dicomweb/studies/1.2.3/metadata").status_code == 404
    assert client.get("/dicomweb/studies/abc/series/4.5/instances/6.7").status_code == 400
    assert client.get("/dicomweb/analyses/1.2.3").status_code == 404


def test_wado_accept_negotiation(analyzer, store, fundus_files) -> None:
    client = _client(analyzer, store)
    assert _stow(client, [fundus_files[0].read_bytes()]).status_code == 200
    _web(client).worker.drain()
    (sr,) = client.get("/dicomweb/instances", params={"Modality": "SR"}).json()
    url = _val(sr, "00081190")
    plain = client.get(url)
    ts = _single_part(plain.content, parse_media_type(plain.headers["content-type"])[1]["boundary"]
                      ).file_meta.TransferSyntaxUID
    ok = client.get(url, headers={"accept": f'multipart/related; type="application/dicom"; transfer-syntax={ts}'})
    assert ok.status_code == 200
    star = client.get(url, headers={"accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert star.status_code == 200
    other = client.get(url, headers={"accept": 'multipart/related; type="application/dicom"; '
                                               'transfer-syntax=1.2.840.10008.1.2.4.201'})
    assert other.status_code == 406
    assert client.get(url, headers={"accept": "image/jpeg"}).status_code == 406


def test_failed_analysis_is_reported(store, fundus_files) -> None:
    def broken(instance, *, request_id: str):
        from analysis.errors import UnreadableImage

        raise UnreadableImage("The JPEG pixel data could not be decoded.")

    client = TestClient(Starlette(routes=[Mount("/dicomweb", create_app(broken, store, start_worker=False))]))
    assert _stow(client, [fundus_files[0].read_bytes()]).status_code == 200
    _web(client).worker.drain()
    uid = str(pydicom.dcmread(fundus_files[0]).SOPInstanceUID)
    r = client.get(f"/dicomweb/analyses/{uid}")
    assert r.status_code == 200 and r.json()["state"] == "failed"
    assert r.json()["error"] == {"code": "unreadable_image",
                                 "message": "The JPEG pixel data could not be decoded."}
    assert client.get("/dicomweb/instances").json() == []


def test_worker_thread_runs_after_the_response(analyzer, tmp_path, fundus_files) -> None:
    """The lifespan starts the worker: the analysis finishes on its own, the client only polls."""
    store = ResultStore(tmp_path / "dw", Sealer(bytes(32)))
    app = create_app(analyzer.analyze, lambda: store)

    @contextlib.asynccontextmanager
    async def lifespan(outer: Starlette):  # BentoML enters a mounted Starlette app's lifespan the same way
        async with app.router.lifespan_context(app):
            yield

    with TestClient(Starlette(routes=[Mount("/dicomweb", app)], lifespan=lifespan)) as client:
        worker = _web(client).worker
        assert worker._threads  # started by the lifespan, before any request
        assert _stow(client, [fundus_files[0].read_bytes()]).status_code == 200
        uid = str(pydicom.dcmread(fundus_files[0]).SOPInstanceUID)
        deadline = time.monotonic() + 60
        while (r := client.get(f"/dicomweb/analyses/{uid}")).status_code == 202 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert r.status_code == 200 and r.json()["state"] == "done", r.json()
    assert not worker._threads  # ... and stopped by it
    store.close()


def test_everything_on_disk_is_sealed(analyzer, store, fundus_files) -> None:
    client = _client(analyzer, store)
    assert _stow(client, [fundus_files[0].read_bytes()]).status_code == 200
    received = list((store.root / "received").iterdir())
    assert len(received) == 1 and received[0].read_bytes().startswith(b"FVA1")
    _web(client).worker.drain()
    assert list((store.root / "received").iterdir()) == []  # the photograph is not kept once analysed
    files = [p for p in store.root.rglob("*") if p.is_file()]
    assert len([p for p in files if p.suffix == ".fva"]) == 2
    for path in files:  # results, index and WAL: no patient data in clear anywhere
        data = path.read_bytes()
        assert b"SYNTHETIC" not in data and b"P-TEST-1" not in data, path.name


def test_multi_frame_instance_gets_results_per_frame(analyzer, store, multi_frame_dicom) -> None:
    """A multi-frame true-colour Secondary Capture of two photographs: one SR + SC per analysed frame."""
    data = multi_frame_dicom()
    ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
    client = _client(analyzer, store)
    assert _stow(client, [data]).status_code == 200
    assert _web(client).worker.drain() == 1
    state = client.get(f"/dicomweb/analyses/{ds.SOPInstanceUID}").json()
    assert state["state"] == "done", state
    assert sorted(r["modality"] for r in state["results"]) == ["OT", "OT", "SR", "SR"]
    assert len({r["sop_instance_uid"] for r in state["results"]}) == 4


def test_a_site_sees_only_its_own_results(analyzer, store, fundus_files) -> None:
    """Results belong to the site (API key) that sent the photograph: another site finds nothing."""
    client = _client(analyzer, store, site=lambda request: request.headers.get("x-test-site"))
    a, b = {"x-test-site": "clinic-a"}, {"x-test-site": "clinic-b"}
    assert _stow(client, [fundus_files[0].read_bytes()], **a).status_code == 200
    _web(client).worker.drain()
    uid = str(pydicom.dcmread(fundus_files[0]).SOPInstanceUID)
    (sr,) = client.get("/dicomweb/instances", params={"Modality": "SR"}, headers=a).json()
    url = _val(sr, "00081190")
    assert client.get(url, headers=a).status_code == 200
    assert client.get("/dicomweb/studies", headers=b).json() == []
    assert client.get("/dicomweb/instances", headers=b).json() == []
    assert client.get(url, headers=b).status_code == 404
    assert client.get(url + "/metadata", headers=b).status_code == 404
    assert client.get(f"/dicomweb/analyses/{uid}", headers=b).status_code == 404
    assert client.get(f"/dicomweb/analyses/{uid}", headers=a).json()["state"] == "done"
