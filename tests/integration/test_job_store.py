"""Background jobs leave no patient data in clear on disk: the real service (``bentoml serve``)
with per-site keys, a job submitted with synthetic DICOMs carrying PHI markers, then every file the service
wrote -- ``BENTOML_HOME`` (BentoML's task store ``task_result.db`` and its WAL), ``FOVEA_DATA_DIR``, the audit
database, the temporary folder (``TMPDIR``: BentoML's per-request upload files), the log -- is searched for
the markers, in clear and base64 (BentoML's own store keeps bodies base64). The job's result is still
retrievable, by its site only; ``/retry`` still works from the sealed copy; the purge command empties the
store.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.auth import KeyEntry, KeyStore, Site, hash_key, new_key, save_keys
from tests.integration.conftest import REPO, running_service
from tests.integration.test_access_audit import MARKERS, _marked_dicoms

pytestmark = pytest.mark.integration


def needles(values: list[bytes]) -> list[bytes]:
    """Each value as is, lower-cased, and in its three base64 alignments (the stable middle of
    ``b64encode(b"\\0" * k + value)``, k = 0, 1, 2), so an embedded base64 copy at any offset is found."""
    out: list[bytes] = []
    for value in values:
        out += [value, value.lower()]
        for k in range(3):
            enc = base64.b64encode(b"\0" * k + value)
            out.append(enc[(4 * k + 2) // 3 + (1 if k else 0): -4])
    return out


def find(haystack: bytes, patterns: list[bytes]) -> list[bytes]:
    low = haystack.lower()
    return [p for p in patterns if p in haystack or (p == p.lower() and p in low)]


def _wait(client: httpx.Client, task: str, auth: dict[str, str], timeout_s: float = 90) -> str:
    """Poll a job's status until it ends (or ``timeout_s``); its last status."""
    deadline, status = time.monotonic() + timeout_s, ""
    while status not in ("completed", "failed") and time.monotonic() < deadline:
        time.sleep(0.3)
        answer = client.get("/jobs/analyze_study/status", params={"task_id": task}, headers=auth)
        status = answer.json()["status"]
    return status


def _grades(study: dict) -> list[int]:
    return [image["dr_grade"]["grade"] for image in study["images"]]


def test_needles_find_a_base64_copy_at_every_offset() -> None:
    secret = b"ZQPHIMARKER-ID-40417"
    for pad in range(6):
        blob = json.dumps({"content": base64.b64encode(b"x" * pad + secret + b"tail").decode()}).encode()
        assert find(blob, needles([secret])), pad
    assert not find(base64.b64encode(b"nothing to see here, really"), needles([secret]))


def test_job_uploads_and_results_are_sealed_at_rest(tmp_path: Path) -> None:
    work = tmp_path / "svc"
    (work / "tmp").mkdir(parents=True)
    key, key_id = new_key()
    other, other_id = new_key()
    keys_file = work / "keys.yaml"
    save_keys(keys_file, KeyStore({
        "clinic-a": Site("clinic-a", frozenset({"analyze"}), (KeyEntry(hash_key(key), key_id),)),
        "clinic-b": Site("clinic-b", frozenset({"analyze"}), (KeyEntry(hash_key(other), other_id),))}))
    (tmp_path / "in").mkdir()
    files = _marked_dicoms(tmp_path / "in")  # outside ``work``: only what the service wrote is scanned
    env = {"FOVEA_API_KEYS_FILE": str(keys_file), "FOVEA_AUDIT_PATH": str(work / "audit.sqlite"),
           "FOVEA_DATA_DIR": str(work / "data"), "TMPDIR": str(work / "tmp"), "FOVEA_WORKERS": "1"}
    auth = {"Authorization": f"Bearer {key}"}
    with running_service(work, env) as url, httpx.Client(base_url=url, timeout=60) as client:
        r = client.post("/jobs/analyze_study/submit", headers=auth,
                        files=[("images", ("r.dcm", files["R"], "application/dicom")),
                               ("images", ("l.dcm", files["L"], "application/dicom"))])
        assert r.status_code == 200, r.text[:300]
        task = r.json()["task_id"]
        assert _wait(client, task, auth) == "completed"
        result = client.get("/jobs/analyze_study/get", params={"task_id": task}, headers=auth)
        assert result.status_code == 200, result.text[:300]
        body = result.json()
        assert len(body["images"]) == 2 and body["patient"]["referable"] in (True, False, None)
        foreign = client.get("/jobs/analyze_study/get", params={"task_id": task},
                             headers={"Authorization": f"Bearer {other}"})
        assert foreign.status_code == 404  # per-site isolation (service/audit_http.py) still holds

        # What BentoML stored: one row, both columns sealed (service/task_store.py), the file private.
        db = work / "bentoml_home" / "task_result.db"
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT task_id, input, result FROM result").fetchall()
        conn.close()
        assert [row[0] for row in rows] == [task]
        assert rows[0][1][:4] == b"FVA1" and rows[0][2][:4] == b"FVA1"
        assert all(p.stat().st_mode & 0o077 == 0 for p in db.parent.glob("task_result.db*"))

        # Every file the service wrote: no marker, no API key, no UID of the findings; in clear or base64.
        time.sleep(1.0)
        uids = [img["image"]["sop_instance_uid"].encode() for img in body["images"]]
        secrets_ = [v.encode() for v in MARKERS.values()] + [key.encode()]
        scanned: list[Path] = []
        for path in sorted(p for p in work.rglob("*") if p.is_file()):
            data = path.read_bytes()
            scanned.append(path)
            assert not find(data, needles(secrets_)), f"PHI or the API key in {path.relative_to(work)}"
            if path.name.startswith("task_result.db"):
                assert not find(data, needles(uids)), f"the findings in clear in {path.name}"
        names = {p.name for p in scanned}
        assert {"task_result.db", "audit.sqlite", "serve.log"} <= names, names

        # /retry runs again from the sealed copy of the upload (credentials were not kept, nor needed).
        retried = client.post("/jobs/analyze_study/retry", params={"task_id": task}, headers=auth)
        assert retried.status_code == 200, retried.text[:300]
        again = retried.json()["task_id"]
        assert _wait(client, again, auth) == "completed"
        second = client.get("/jobs/analyze_study/get", params={"task_id": again}, headers=auth).json()
        assert _grades(second) == _grades(body)

        # Retention: the purge command empties the store; the jobs are gone for their site too.
        command = [sys.executable, "-m", "service.task_store", "purge", "--older-than-hours", "0",
                   "--db", str(db)]
        purge = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60,
                               env={**os.environ, "BENTOML_HOME": str(work / "bentoml_home")})
        assert purge.returncode == 0 and json.loads(purge.stdout)["purged"] == 2, purge.stderr
        gone = client.get("/jobs/analyze_study/status", params={"task_id": task}, headers=auth)
        assert gone.status_code == 404
