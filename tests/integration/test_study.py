"""Studies, background jobs, the Python client and the batchable inference service, over real HTTP."""

from __future__ import annotations

import time
from pathlib import Path

import bentoml
import httpx
import pytest

from tests.integration.conftest import running_service

pytestmark = pytest.mark.integration


def _study_files(retina_path: Path) -> list[tuple[str, tuple[str, bytes, str]]]:
    data = retina_path.read_bytes()
    return [("images", ("right.jpg", data, "image/jpeg")), ("images", ("left.jpg", data, "image/jpeg"))]


def _check_study(body: dict) -> None:
    assert [len(body["images"]), [e["laterality"] for e in body["eyes"]]] == [2, ["R", "L"]]
    assert body["images"][0]["image"]["laterality_source"] == "form"
    assert body["patient"]["referable"] in (True, False, None) and body["patient"]["reason"]
    assert body["disclaimer"].startswith("Research use, not for clinical use")  # the real-data default grader


def test_study_per_eye_and_patient(server: str, retina_path: Path) -> None:
    r = httpx.post(f"{server}/analyze_study", files=_study_files(retina_path), data={"laterality": "R,L"},
                   timeout=120)
    assert r.status_code == 200, r.text[:500]
    body = r.json()
    _check_study(body)
    # Both eyes gradable: the default grader's fellow-eye rule grades each eye with the other's photograph (here
    # the same photograph, so the combined expected grade is the photograph's, cut at the rule's cut-points).
    import numpy as np

    from models.card import ModelCard
    from models.grading import expected_grade
    from models.store import DEFAULT_DIR

    rule = ModelCard.load(DEFAULT_DIR / "dr-grader.card.json").fellow_eye
    assert rule is not None and all(f["quality"]["gradable"] for f in body["images"])
    for eye, photo in zip(body["eyes"], body["images"], strict=True):
        assert eye["fellow_eye_weight"] == rule.weight and eye["photograph_grade"] == photo["dr_grade"]["grade"]
        expected = expected_grade(np.asarray(photo["dr_grade"]["probabilities"]))
        assert eye["dr_grade"] == int(np.digitize(expected, rule.cutpoints))
        assert eye["referable"] == photo["referable_dr"]["value"]  # the referral stays the photograph's


def test_study_with_a_bad_image_names_it(server: str, retina_path: Path) -> None:
    files = [("images", ("a.jpg", retina_path.read_bytes(), "image/jpeg")), ("images", ("b.txt", b"hello", "text/plain"))]
    r = httpx.post(f"{server}/analyze_study", files=files, timeout=120)
    assert r.status_code == 415 and r.json()["error"]["message"].startswith("image 2 of 2")


def test_study_job_survives_the_client_going_away(server: str, retina_path: Path) -> None:
    with httpx.Client(timeout=60) as client:  # submit, then this client is gone
        r = client.post(f"{server}/jobs/analyze_study/submit", files=_study_files(retina_path),
                        data={"laterality": "R,L"})
    assert r.status_code == 200, r.text[:500]
    task_id = r.json()["task_id"]
    deadline = time.monotonic() + 120
    while True:
        status = httpx.get(f"{server}/jobs/analyze_study/status", params={"task_id": task_id}, timeout=10).json()
        if status["status"] not in ("pending", "in_progress") or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert status["status"] == "completed", status
    result = httpx.get(f"{server}/jobs/analyze_study/get", params={"task_id": task_id}, timeout=60)
    assert result.status_code == 200
    _check_study(result.json())


def test_python_client_as_in_the_readme(server: str, retina_path: Path) -> None:
    with bentoml.SyncHTTPClient(server) as client:
        findings = client.analyze(image=retina_path, laterality="R")
    assert findings["image"]["laterality"] == "R" and findings["quality"]["gradable"] is True
    assert findings["dr_grade"]["label"] and findings["referable_dr"]["value"] in (True, False)


def test_batchable_inference_service_gives_the_same_answer(server: str, retina_path: Path,
                                                           tmp_path_factory: pytest.TempPathFactory) -> None:
    files = {"image": ("retina.jpg", retina_path.read_bytes(), "image/jpeg")}
    local = httpx.post(f"{server}/analyze", files=files, timeout=120).json()
    with running_service(tmp_path_factory.mktemp("batched"), {"FOVEA_INFERENCE": "service"}) as url:
        info = httpx.post(f"{url}/info", json={}, timeout=30).json()
        assert info["models"][0]["inference"] == "service"
        with httpx.Client(timeout=120) as c:
            answers = [c.post(f"{url}/analyze", files=files).json() for _ in range(2)]
    for a in answers:
        assert a["dr_grade"]["grade"] == local["dr_grade"]["grade"]
        assert a["dr_grade"]["probabilities"] == pytest.approx(local["dr_grade"]["probabilities"], abs=1e-5)
        assert a["models"][0]["provider"] == "CPUExecutionProvider"


def test_an_installed_detector_adds_lesions(tiny_detector_run: tuple[Path, Path], retina_path: Path,
                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    import os
    import subprocess
    import sys

    _, det_dir = tiny_detector_run
    work = tmp_path_factory.mktemp("with-detector")
    env = {**os.environ, "BENTOML_HOME": str(work / "bentoml_home"), "BENTOML_DO_NOT_TRACK": "true"}
    r = subprocess.run([sys.executable, "-m", "training", "register", "--card", str(det_dir / "tiny-detector.card.json")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    with running_service(work, {"FOVEA_DETECTOR_TAG": "tiny-detector:latest"}) as url:
        info = httpx.post(f"{url}/info", json={}, timeout=30).json()
        body = httpx.post(f"{url}/analyze", files={"image": ("r.jpg", retina_path.read_bytes(), "image/jpeg")},
                          timeout=120).json()
    by_task = {m["task"]: m["name"] for m in info["models"]}
    assert by_task["dr-grading"] == "dr-grader" and by_task["lesion-detection"] == "tiny-detector"
    assert isinstance(body["lesions"], list)
    assert {m["task"]: m["name"] for m in body["models"]} == by_task  # every loaded model is named in the result
    for les in body["lesions"]:
        x0, y0, x1, y1 = les["box"]
        assert 0 <= x0 <= x1 <= 1411 and 0 <= y0 <= y1 <= 1411 and 0 <= les["score"] <= 1
