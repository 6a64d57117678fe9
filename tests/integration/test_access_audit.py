"""The real service (``bentoml serve``) with per-site keys over TLS, the audit trail and patient data:

- TLS with a self-signed certificate generated here (BentoML's ``--ssl-certfile/--ssl-keyfile``); 401/403/200
  by key; every answer has its audit record, with the key's site.
- PHI markers in PatientName, PatientID, PatientBirthDate, AccessionNumber and InstitutionName of synthetic
  DICOMs (valid ones and broken ones that get a 4xx): none appears in the service log, the audit database or
  any response; the findings echo only the routing UIDs.
- The reader's page (headless Chromium) loads without a key, shows why the service refuses, and sends the key
  the reader pastes.
- SIGKILL of the whole service (two worker processes) under load from several clients: every request that
  received a 200 has its committed audit record, and the chain still verifies.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import ipaddress
import json
import os
import signal
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from service.audit import AuditLog
from service.auth import KeyEntry, KeyStore, Site, hash_key, new_key, save_keys
from tests.integration.conftest import running_service
from tests.integration.test_web import CHROMIUM, browser  # noqa: F401 (the headless Chromium fixture)

pytestmark = pytest.mark.integration

MARKERS = {
    "PatientName": "Zqphimarkerfamily^Zqphimarkergiven",
    "PatientID": "ZQPHIMARKER-ID-40417",
    "PatientBirthDate": "19230417",
    "AccessionNumber": "ZQACC40417",
    "InstitutionName": "Zqphimarker Institution Hospital",
}
#: What must appear nowhere (each name component on its own, too).
NEEDLES = ["zqphimarkerfamily", "zqphimarkergiven", "zqphimarker-id-40417", "19230417", "1923-04-17", "zqacc40417",
           "zqphimarker institution"]


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A throw-away certificate for 127.0.0.1/localhost (the ``cryptography`` package)."""
    x509 = pytest.importorskip("cryptography.x509", reason="cryptography (dev extra) is not installed")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fovea-test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _fundus(seed: int, size: int = 384) -> np.ndarray:
    from datasets.synthetic.fundus import render_fundus

    return render_fundus(np.random.default_rng(seed), grade=2, laterality="R", size=size).image


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The service with three sites' keys (``clinic-a``, ``clinic-b``: analyze; ``ops``: admin only) over
    HTTPS."""
    work = tmp_path_factory.mktemp("secured")
    clinic, clinic_id = new_key()
    other, other_id = new_key()
    ops, ops_id = new_key()
    keys_file = work / "keys.yaml"
    save_keys(keys_file, KeyStore({
        "clinic-a": Site("clinic-a", frozenset({"analyze"}), (KeyEntry(hash_key(clinic), clinic_id),)),
        "clinic-b": Site("clinic-b", frozenset({"analyze"}), (KeyEntry(hash_key(other), other_id),)),
        "ops": Site("ops", frozenset({"admin"}), (KeyEntry(hash_key(ops), ops_id),))}))
    cert, key = _self_signed(work)
    audit = work / "audit.sqlite"
    env = {"FOVEA_API_KEYS_FILE": str(keys_file), "FOVEA_AUDIT_PATH": str(audit), "FOVEA_WORKERS": "1"}
    with running_service(work, env, args=["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)],
                         scheme="https") as url:
        client = httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=str(cert)), timeout=60)
        yield {"url": url, "client": client, "keys": {"clinic-a": clinic, "clinic-b": other, "ops": ops}, "work": work,
               "audit": AuditLog(f"sqlite:///{audit}")}
        client.close()


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_https_and_per_site_keys(secured: dict[str, Any]) -> None:
    client: httpx.Client = secured["client"]
    keys = secured["keys"]
    png = cv2.imencode(".png", cv2.cvtColor(_fundus(1), cv2.COLOR_RGB2BGR))[1].tobytes()
    files = {"image": ("f.png", png, "image/png")}
    assert client.get("/readyz").status_code == 200  # the probe: over TLS, no key
    with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port gets no answer
        httpx.get(secured["url"].replace("https://", "http://") + "/readyz", timeout=5)

    missing = client.post("/analyze", files=files)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
    wrong = client.post("/analyze", files=files, headers=_bearer(keys["clinic-a"] + "x"))
    assert wrong.status_code == 401
    no_role = client.post("/analyze", files=files, headers=_bearer(keys["ops"]))
    assert no_role.status_code == 403 and no_role.json()["error"]["code"] == "forbidden"
    ok = client.post("/analyze", files=files, headers=_bearer(keys["clinic-a"]))
    assert ok.status_code == 200, ok.text[:300]
    assert client.post("/info", json={}, headers={"X-API-Key": keys["clinic-a"]}).status_code == 200
    assert client.get("/info", headers={"X-API-Key": keys["clinic-a"]}).status_code == 200
    assert client.get("/info").status_code == 401  # the GET alias sits behind the same key check

    audit: AuditLog = secured["audit"]
    (row,) = audit.rows(request_id=ok.json()["request_id"])
    assert (row["site"], row["endpoint"], row["status"]) == ("clinic-a", "/analyze", 200)
    assert json.loads(row["input_sha256"]) == [hashlib.sha256(png).hexdigest()]
    assert json.loads(row["models"])[0]["name"] == "dr-grader"
    outcome = json.loads(row["outcome"])
    assert outcome["grade"] == ok.json()["dr_grade"]["grade"]
    assert outcome["referable"] == ok.json()["referable_dr"]["value"]
    refused = {r["request_id"]: (r["site"], r["status"]) for r in audit.rows() if r["status"] in (401, 403)}
    assert refused[missing.headers["x-request-id"]] == (None, 401)
    assert refused[no_role.headers["x-request-id"]] == ("ops", 403)
    assert audit.verify().ok


def test_jobs_are_audited_and_kept_per_site(secured: dict[str, Any]) -> None:
    client: httpx.Client = secured["client"]
    keys = secured["keys"]
    png = cv2.imencode(".png", cv2.cvtColor(_fundus(2), cv2.COLOR_RGB2BGR))[1].tobytes()
    submitted = client.post("/jobs/analyze_study/submit", files=[("images", ("r.png", png, "image/png"))],
                            data={"laterality": "R"}, headers=_bearer(keys["clinic-a"]))
    assert submitted.status_code == 200, submitted.text[:300]
    task = submitted.json()["task_id"]
    deadline, status = time.monotonic() + 60, ""
    while status not in ("completed", "failed") and time.monotonic() < deadline:
        time.sleep(0.3)
        status = client.get(f"/jobs/analyze_study/status?task_id={task}",
                            headers=_bearer(keys["clinic-a"])).json()["status"]
    assert status == "completed"
    result = client.get(f"/jobs/analyze_study/get?task_id={task}", headers=_bearer(keys["clinic-a"]))
    assert result.status_code == 200 and result.json()["patient"]["referable"] in (True, False, None)
    for path in ("status", "get"):  # another site's key: as if the task did not exist
        other = client.get(f"/jobs/analyze_study/{path}?task_id={task}", headers=_bearer(keys["clinic-b"]))
        assert other.status_code == 404
    missing_field = client.post("/analyze", files={"wrong": ("x", b"x")}, headers=_bearer(keys["clinic-b"]))
    assert missing_field.status_code == 400

    audit: AuditLog = secured["audit"]
    assert audit.job_site(task) == "clinic-a"
    rows = audit.rows()
    job = [r for r in rows if r["endpoint"] == "/jobs/analyze_study" and r["status"] == 200]
    assert job and job[-1]["site"] == "clinic-a"
    assert json.loads(job[-1]["outcome"])["images"][0]["grade"] == result.json()["images"][0]["dr_grade"]["grade"]
    by_id = {r["request_id"]: r for r in rows}
    assert (by_id[missing_field.headers["x-request-id"]]["status"], by_id[missing_field.headers["x-request-id"]]
            ["site"]) == (400, "clinic-b")
    assert sum(1 for r in rows if r["site"] == "clinic-b" and r["status"] == 404) == 2
    assert audit.verify().ok


@pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} missing: install Debian's chromium (.ci/run does)")
def test_page_sends_the_pasted_key(browser: Any, secured: dict[str, Any], retina_path: Path) -> None:  # noqa: F811
    context = browser.new_context(base_url=secured["url"], ignore_https_errors=True,  # the test's own certificate
                                  viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    key = secured["keys"]["clinic-b"]
    try:
        page.goto("/")  # open: the page and its assets need no key
        page.wait_for_function("() => document.querySelector('#models-footer').textContent.includes('unavailable')")
        assert "no API key sent" in page.locator("#models-footer").inner_text()

        page.fill("#api-key", "fov_00000000_wrong")
        page.locator("#api-key").press("Tab")  # "change" reloads the model information with the key
        page.set_input_files("#files", [str(retina_path)])
        page.get_by_role("button", name="Analyse").click()
        page.locator("#error").wait_for()
        assert "invalid API key" in page.locator("#error").inner_text()

        page.fill("#api-key", key)
        page.locator("#api-key").press("Tab")
        page.locator("#models-footer strong").first.wait_for()
        page.get_by_role("button", name="Analyse").click()
        page.locator("article.finding").wait_for()

        page.reload()  # the key is kept for this tab (sessionStorage)
        page.locator("#models-footer strong").first.wait_for()
        assert page.locator("#api-key").input_value() == key
    finally:
        context.close()
    rows = secured["audit"].rows()
    assert any(r["endpoint"] == "/analyze" and r["status"] == 200 and r["site"] == "clinic-b" for r in rows)
    assert any(r["endpoint"] == "/analyze" and r["status"] == 401 for r in rows)


def _marked_dicoms(folder: Path) -> dict[str, bytes]:
    """Synthetic OP DICOMs carrying the markers: two valid eyes, and broken variants."""
    import pydicom

    from datasets.synthetic.dicom import write_op_dicom

    out: dict[str, bytes] = {}
    for lat, seed in (("R", 3), ("L", 4)):
        path = folder / f"{lat}.dcm"
        write_op_dicom(_fundus(seed), path, laterality=lat, patient_id=MARKERS["PatientID"], seed=seed)
        ds = pydicom.dcmread(path)
        for name, value in MARKERS.items():
            setattr(ds, name, value)
        ds.save_as(path, enforce_file_format=True)
        out[lat] = path.read_bytes()
    ds = pydicom.dcmread(io.BytesIO(out["R"]))
    del ds.PixelData
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    out["no_pixels"] = buf.getvalue()
    out["truncated"] = out["R"][: len(out["R"]) // 2]
    out["header_only"] = out["R"][:1200]
    return out


def test_no_patient_data_in_logs_audit_or_responses(secured: dict[str, Any], tmp_path: Path) -> None:
    import pydicom

    client: httpx.Client = secured["client"]
    auth = _bearer(secured["keys"]["clinic-a"])
    files = _marked_dicoms(tmp_path)
    bodies: list[str] = []
    # The markers are really in the files, in the spelling searched for below (so a leak would be found).
    assert all(n in files["R"].decode("latin-1").lower() for n in NEEDLES if n != "1923-04-17")

    def post(path: str, parts: list[tuple[str, tuple[str, bytes, str]]], **data: str) -> httpx.Response:
        r = client.post(path, files=parts, data=data, headers=auth)
        bodies.append(r.text + json.dumps(dict(r.headers)))
        return r

    good = post("/analyze", [("image", ("r.dcm", files["R"], "application/dicom"))])
    assert good.status_code == 200, good.text[:300]
    study = post("/analyze_study", [("images", ("r.dcm", files["R"], "application/dicom")),
                                    ("images", ("l.dcm", files["L"], "application/dicom"))])
    assert study.status_code == 200, study.text[:300]
    statuses = {name: post("/analyze", [("image", ("x.dcm", files[name], "application/dicom"))]).status_code
                for name in ("no_pixels", "truncated", "header_only")}
    assert all(400 <= s < 500 for s in statuses.values()), statuses
    bad_form = post("/analyze", [("image", ("r.dcm", files["R"], "application/dicom"))], laterality="sideways")
    assert bad_form.status_code == 400
    mixed = post("/analyze_study", [("images", ("r.dcm", files["R"], "application/dicom")),
                                    ("images", ("t.dcm", files["truncated"], "application/dicom"))])
    assert 400 <= mixed.status_code < 500
    missing_key = client.post("/analyze", files=[("image", ("r.dcm", files["R"], "application/dicom"))])
    bodies.append(missing_key.text)
    assert missing_key.status_code == 401

    # Findings echo the routing UIDs only (for matching results to studies), nothing of the patient.
    ds = pydicom.dcmread(io.BytesIO(files["R"]), stop_before_pixels=True)
    image = good.json()["image"]
    assert image["sop_instance_uid"] == ds.SOPInstanceUID and image["study_instance_uid"] == ds.StudyInstanceUID
    assert set(image) <= {"source", "width", "height", "laterality", "laterality_source", "frame", "frames", "notes",
                          "sop_instance_uid", "study_instance_uid"}

    time.sleep(1.0)  # let the service flush its log
    work: Path = secured["work"]
    haystacks = {"responses": "\n".join(bodies), "service log": (work / "serve.log").read_text(errors="replace")}
    for db_file in sorted(work.glob("audit.sqlite*")):  # the database, its WAL and shared-memory files
        haystacks[db_file.name] = db_file.read_bytes().decode("latin-1")
    assert "audit.sqlite" in haystacks and len(haystacks["service log"]) > 0
    for where, text in haystacks.items():
        found = [n for n in NEEDLES if n in text.lower()]
        assert not found, f"patient data {found} in the {where}"
    # ... and the audit trail did record those requests (the check above looked at real content).
    rows = secured["audit"].rows()
    assert {r["request_id"] for r in rows} >= {good.json()["request_id"], study.json()["request_id"]}
    assert sum(1 for r in rows if 400 <= (r["status"] or 0) < 500) >= 5


def _kill_service(pid: int) -> None:
    """SIGKILL ``bentoml serve`` and its workers at once. Each worker runs in its own session (BentoML's
    process manager calls setsid), so killing the server's process group alone would leave them serving."""
    import psutil

    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    groups = {os.getpgid(p.pid) for p in procs}
    assert len(procs) >= 3, "expected the server and its two workers"
    for group in groups:
        os.killpg(group, signal.SIGKILL)


def test_every_answered_request_survives_sigkill(tmp_path: Path) -> None:
    audit_path = tmp_path / "audit.sqlite"
    png = cv2.imencode(".png", cv2.cvtColor(_fundus(5, 320), cv2.COLOR_RGB2BGR))[1].tobytes()
    answered: list[str] = []
    errors: list[str] = []
    interrupted: list[str] = []
    stop = threading.Event()

    def client(url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            while not stop.is_set():
                try:
                    r = c.post("/analyze", files={"image": ("f.png", png, "image/png")})
                except httpx.HTTPError as exc:
                    interrupted.append(type(exc).__name__)  # the service died under us: no answer
                    continue
                if r.status_code == 200:
                    answered.append(r.json()["request_id"])
                else:
                    errors.append(f"{r.status_code} {r.text[:100]}")

    with running_service(tmp_path, {"FOVEA_AUDIT_PATH": str(audit_path), "FOVEA_WORKERS": "2"}) as url:
        threads = [threading.Thread(target=client, args=(url,), daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 90
        while len(answered) < 16 and time.monotonic() < deadline and not errors:
            time.sleep(0.05)
        # Mid-load: requests are in flight in both workers when the service is killed.
        _kill_service(int((tmp_path / "serve.pid").read_text()))
        killed_after = len(answered)
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:3]
    assert killed_after >= 16, f"only {killed_after} answers before the deadline"
    assert interrupted, "no request was in flight when the service was killed"
    log = AuditLog(f"sqlite:///{audit_path}")
    rows = log.rows()
    recorded = {r["request_id"]: r["status"] for r in rows}
    missing = [rid for rid in answered if recorded.get(rid) != 200]
    assert not missing, f"{len(missing)} of {len(answered)} answered requests have no audit record"
    assert {r["site"] for r in rows} == {"local"}  # authentication off (no keys file), loopback
    assert log.verify().ok
    print(f"SIGKILL: {len(answered)} answered, {len(interrupted)} interrupted, {len(rows)} records "
          f"({sum(1 for r in rows if r['request_id'] not in set(answered))} committed whose answer was lost)")
