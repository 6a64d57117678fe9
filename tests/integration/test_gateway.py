"""The DIMSE gateway against real components on loopback: dcmtk's echoscu/storescu, and a real Orthanc that
C-STOREs a fundus photograph to the gateway and receives the SR + SC back (DIMSE, and STOW-RS through the
orthanc-dicomweb plugin), analysed by the real Fovea service."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from datasets.synthetic.dicom import PATIENT_NAME
from datasets.synthetic.writer import generate
from tests.integration.conftest import REPO, free_port, stop_process_group

pytestmark = pytest.mark.integration

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
STORAGE_KEY = base64.b64encode(os.urandom(32)).decode()


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Debian packages dcmtk / orthanc; see .ci/run)")


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not listening on {port} in {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


@contextmanager
def running_gateway(workdir: Path, *, port: int, service_url: str, destination: str | None = None,
                    stow: str | None = None, sources: tuple[Path, ...] = ()) -> Iterator[Path]:
    """``python -m service.gateway`` on ``port``; yields its queue folder. On exit checks that the gateway
    stopped cleanly and logged no traceback, no patient name and none of the UIDs of ``sources`` (it logs
    queue keys: digests)."""
    queue = workdir / "queue"
    log = workdir / "gateway.log"
    cmd = [sys.executable, "-m", "service.gateway", "--port", str(port), "--service-url", service_url,
           "--queue", str(queue), "--retry-base", "0.5", "--retry-max", "2"]
    cmd += ["--stow", stow] if stow else ["--destination", destination or f"NOWHERE@127.0.0.1:{free_port()}"]
    env = {**os.environ, "FOVEA_STORAGE_KEY": STORAGE_KEY, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        _wait_port(port, proc, log, "gateway")
        yield queue
    finally:
        stop_process_group(proc)
        text = log.read_text(errors="replace")
        assert proc.returncode == 0, text[-3000:]
        assert "Traceback" not in text, text[-3000:]
        secrets = [PATIENT_NAME]
        for source in sources:
            ds = pydicom.dcmread(source, stop_before_pixels=True)
            secrets += [ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID]
        for secret in secrets:
            assert secret not in text, f"identifier {secret!r} in the gateway log"


def queue_status(queue: Path) -> dict[str, int]:
    out = subprocess.run([sys.executable, "-m", "service.gateway", "status", "--queue", str(queue), "--json"],
                         cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)["counts"]


@pytest.fixture(scope="module")
def fundus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Synthetic fundus photographs as OP 8-bit JPEG-baseline files (two patients, four eyes)."""
    out = tmp_path_factory.mktemp("fundus")
    generate(out, count=4, seed=11, size=512, progress=False, dicom=True)
    return sorted(out.glob("*.dcm"))


# ------------------------------------------------------------------------------------------------- dcmtk


@pytest.fixture(scope="module")
def dcmtk_gateway(tmp_path_factory: pytest.TempPathFactory, fundus: list[Path]) -> Iterator[tuple[int, Path]]:
    """A gateway whose service is not running (nothing is analysed): what is queued stays pending."""
    need("echoscu", "storescu")
    port = free_port()
    with running_gateway(tmp_path_factory.mktemp("gw"), port=port,
                         service_url=f"http://127.0.0.1:{free_port()}", sources=(fundus[0],)) as queue:
        yield port, queue


def test_echoscu(dcmtk_gateway: tuple[int, Path]) -> None:
    port, _ = dcmtk_gateway
    run = subprocess.run(["echoscu", "-aec", "FOVEA", "127.0.0.1", str(port)], capture_output=True, timeout=30)
    assert run.returncode == 0, run.stderr


def test_storescu_fundus_is_accepted_and_queued(dcmtk_gateway: tuple[int, Path], fundus: list[Path]) -> None:
    port, queue = dcmtk_gateway
    # -xy: propose JPEG baseline (storescu proposes only uncompressed syntaxes by default).
    run = subprocess.run(["storescu", "-xy", "-aec", "FOVEA", "127.0.0.1", str(port), str(fundus[0])],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    counts = queue_status(queue)
    assert counts["pending"] == 1 and counts["pending_analyse"] == 1  # the service is down: it waits
    # Sealed at rest: the patient name is nowhere in clear in the queue.
    for path in queue.rglob("*"):
        if path.is_file():
            assert PATIENT_NAME.encode() not in path.read_bytes()


def test_storescu_ct_is_refused(dcmtk_gateway: tuple[int, Path]) -> None:
    port, queue = dcmtk_gateway
    before = queue_status(queue)["pending"]
    ct = get_testdata_file("CT_small.dcm")
    run = subprocess.run(["storescu", "-aec", "FOVEA", "127.0.0.1", str(port), str(ct)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "No presentation context" in run.stderr  # refused at association, before any pixel was sent
    assert queue_status(queue)["pending"] == before


# ----------------------------------------------------------------------------------------------- Orthanc


class Orthanc:
    """A real Orthanc with its own storage, loopback REST and DICOM ports, the gateway as modality
    ``fovea``; the DICOMweb plugin at ``/dicom-web/`` when installed."""

    def __init__(self, workdir: Path, gateway_port: int) -> None:
        self.http_port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        config = {
            "Name": "fovea-test", "StorageDirectory": str(workdir / "storage"),
            "IndexDirectory": str(workdir / "index"), "HttpPort": self.http_port, "DicomPort": self.dicom_port,
            "DicomAet": "ORTHANC", "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomModalities": {"fovea": ["FOVEA", "127.0.0.1", gateway_port]},
            "Plugins": [str(DICOMWEB_PLUGIN)] if DICOMWEB_PLUGIN.exists() else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "StableAge": 1, "SaveJobs": False,
            # Orthanc 1.10 cannot bind its DICOM port to loopback only: accept C-STORE/C-ECHO only from the
            # registered modality (the gateway's AE title) at its registered address.
            "DicomAlwaysAllowStore": False, "DicomAlwaysAllowEcho": False, "DicomCheckModalityHost": True,
        }
        self.config = workdir / "orthanc.json"
        self.config.write_text(json.dumps(config))
        self.log = workdir / "orthanc.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Orthanc:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(["Orthanc", str(self.config)], stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        _wait_port(self.http_port, self.proc, self.log, "Orthanc")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        stop_process_group(self.proc)

    def get(self, path: str) -> httpx.Response:
        r = httpx.get(self.url + path, timeout=30)
        r.raise_for_status()
        return r

    def post(self, path: str, content: bytes | str) -> httpx.Response:
        r = httpx.post(self.url + path, content=content, timeout=60)
        r.raise_for_status()
        return r

    def instances_of_study(self, study_id: str, count: int, timeout_s: float = 45) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while True:
            instances = self.get(f"/studies/{study_id}/instances").json()
            if len(instances) >= count or time.monotonic() > deadline:
                return instances
            time.sleep(0.5)

    def dataset(self, instance_id: str) -> Dataset:
        return pydicom.dcmread(io.BytesIO(self.get(f"/instances/{instance_id}/file").content))


def _walk(ds: Dataset) -> Iterator[Dataset]:
    yield ds
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _walk(item)


def _referenced(ds: Dataset) -> set[str]:
    return {str(item.ReferencedSOPInstanceUID) for item in _walk(ds) if "ReferencedSOPInstanceUID" in item}


def _codes(ds: Dataset) -> set[tuple[str, str]]:
    return {(str(c.CodingSchemeDesignator), str(c.CodeValue)) for item in _walk(ds)
            for c in item.get("ConceptCodeSequence", [])}


@pytest.fixture(scope="module")
def orthanc_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Orthanc, int]]:
    need("Orthanc")
    gateway_port = free_port()
    with Orthanc(tmp_path_factory.mktemp("orthanc"), gateway_port) as orthanc:
        yield orthanc, gateway_port


def _round_trip(orthanc: Orthanc, source_file: Path, server: str) -> tuple[Dataset, list[Dataset]]:
    """Upload ``source_file`` to Orthanc, have Orthanc C-STORE it to the gateway, wait for the two results in
    its study; returns the source and the results."""
    uploaded = orthanc.post("/instances", source_file.read_bytes()).json()
    before = {i["ID"] for i in orthanc.get(f"/studies/{uploaded['ParentStudy']}/instances").json()}
    orthanc.post("/modalities/fovea/store", uploaded["ID"])  # Orthanc -> gateway (C-STORE SCU)
    instances = orthanc.instances_of_study(uploaded["ParentStudy"], len(before) + 2)
    new = [orthanc.dataset(i["ID"]) for i in instances if i["ID"] not in before]
    return pydicom.dcmread(source_file), new


def _check_results(source: Dataset, results: list[Dataset], server: str, source_file: Path) -> None:
    from analysis.dicom_out import GRADE_CODES

    by_class = {str(ds.SOPClassUID): ds for ds in results}
    assert set(by_class) == {COMPREHENSIVE_SR, SECONDARY_CAPTURE}, [ds.SOPClassUID for ds in results]
    sr, sc = by_class[COMPREHENSIVE_SR], by_class[SECONDARY_CAPTURE]
    for ds in (sr, sc):  # same study and patient, own series
        assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.PatientID
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        assert source.SOPInstanceUID in _referenced(ds)
    # The SR holds the findings the service gives for this photograph.
    findings = httpx.post(f"{server}/analyze", files={"image": source_file.read_bytes()}, timeout=120).json()
    codes = _codes(sr)
    if findings["quality"]["gradable"]:
        grade = GRADE_CODES[findings["dr_grade"]["grade"]]
        assert (grade.scheme_designator, grade.value) in codes
    referable = {True: "373066001", False: "373067005", None: "373068000"}[findings["referable_dr"]["value"]]
    assert ("SCT", referable) in codes


def test_orthanc_round_trip_dimse(orthanc_setup: tuple[Orthanc, int], server: str, fundus: list[Path],
                                  tmp_path: Path) -> None:
    orthanc, gateway_port = orthanc_setup
    start = time.monotonic()
    with running_gateway(tmp_path, port=gateway_port, service_url=server,
                         destination=f"ORTHANC@127.0.0.1:{orthanc.dicom_port}", sources=(fundus[0],)) as queue:
        source, results = _round_trip(orthanc, fundus[0], server)
        assert len(results) == 2, f"results not received; queue: {queue_status(queue)}"
        counts = queue_status(queue)
    _check_results(source, results, server, fundus[0])
    assert counts["done"] == 1 and counts["pending"] == counts["dead"] == 0
    assert not [p for p in (queue / "done").rglob("*.sealed")]  # delivered: the identifiable copy is gone
    assert time.monotonic() - start < 60


def test_orthanc_round_trip_stow(orthanc_setup: tuple[Orthanc, int], server: str, fundus: list[Path],
                                 tmp_path: Path) -> None:
    orthanc, gateway_port = orthanc_setup
    if not DICOMWEB_PLUGIN.exists():
        pytest.skip("needs the Debian package orthanc-dicomweb")
    with running_gateway(tmp_path, port=gateway_port, service_url=server,
                         stow=f"{orthanc.url}/dicom-web", sources=(fundus[-1],)) as queue:
        source, results = _round_trip(orthanc, fundus[-1], server)
        assert len(results) == 2, f"results not received; queue: {queue_status(queue)}"
    _check_results(source, results, server, fundus[-1])


def test_orthanc_instance_survives_service_outage_and_gateway_restart(
        orthanc_setup: tuple[Orthanc, int], server: str, fundus: list[Path], tmp_path: Path) -> None:
    """Acknowledged while the service is down, the instance waits in the queue; a new gateway process on the
    same queue delivers it once the service answers."""
    orthanc, gateway_port = orthanc_setup
    source_file = fundus[1]
    destination = f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"
    uploaded = orthanc.post("/instances", source_file.read_bytes()).json()
    before = {i["ID"] for i in orthanc.get(f"/studies/{uploaded['ParentStudy']}/instances").json()}
    with running_gateway(tmp_path, port=gateway_port, service_url=f"http://127.0.0.1:{free_port()}",
                         destination=destination, sources=(source_file,)) as queue:
        orthanc.post("/modalities/fovea/store", uploaded["ID"])  # Success although nothing can be analysed
        assert queue_status(queue)["pending_analyse"] == 1
    with running_gateway(tmp_path, port=gateway_port, service_url=server, destination=destination,
                         sources=(source_file,)) as resumed:
        instances = orthanc.instances_of_study(uploaded["ParentStudy"], len(before) + 2)
        counts = queue_status(resumed)
    new = [orthanc.dataset(i["ID"]) for i in instances if i["ID"] not in before]
    _check_results(pydicom.dcmread(source_file), new, server, source_file)
    assert counts["done"] == 1 and counts["pending"] == 0
