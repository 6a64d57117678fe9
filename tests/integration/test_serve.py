"""The real service: `bentoml serve` in a subprocess on a free loopback port, real files posted over HTTP.

This is what a new user does after `make serve` (the `server` fixture, tests/integration/conftest.py): it
exercises the model-store import of the embedded default, model verification, BentoML's multipart handling
and the error shape end to end.
"""

from __future__ import annotations

import base64
import math
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.integration


def _post(url: str, name: str, data: bytes, ctype: str) -> httpx.Response:
    return httpx.post(f"{url}/analyze", files={"image": (name, data, ctype)}, timeout=60)


def _check_findings(r: httpx.Response, size: tuple[int, int]) -> dict:
    assert r.status_code == 200, r.text[:500]
    body = r.json()
    assert 0 <= body["dr_grade"]["grade"] <= 4
    assert len(body["dr_grade"]["probabilities"]) == 5
    assert sum(body["dr_grade"]["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    assert (body["image"]["width"], body["image"]["height"]) == size
    overlay = cv2.imdecode(np.frombuffer(base64.b64decode(body["saliency"]["overlay_png"]), np.uint8), cv2.IMREAD_COLOR)
    scale = body["saliency"]["scale"]  # a large photograph is drawn at reduced resolution, stated by scale
    assert (overlay.shape[1], overlay.shape[0]) == (math.ceil(size[0] / scale), math.ceil(size[1] / scale))
    assert body["models"][0]["name"] == "dr-grader" and len(body["models"][0]["sha256"]) == 64
    assert body["models"][0]["provider"] == "CPUExecutionProvider"
    assert body["disclaimer"].startswith("Research use, not for clinical use")  # the real-data default grader
    return body


def test_real_fundus_jpeg(server: str, retina_path: Path) -> None:
    body = _check_findings(_post(server, "retina.jpg", retina_path.read_bytes(), "image/jpeg"), (1411, 1411))
    assert body["image"]["source"] == "jpeg"


def test_png(server: str, retina_png: Path) -> None:
    _check_findings(_post(server, "retina.png", retina_png.read_bytes(), "image/png"), (700, 700))


def test_jpeg_baseline_dicom(server: str, jpeg_dicom: Path) -> None:
    import pydicom

    ds = pydicom.dcmread(jpeg_dicom, stop_before_pixels=True)
    body = _check_findings(_post(server, "x.dcm", jpeg_dicom.read_bytes(), "application/dicom"),
                           (int(ds.Columns), int(ds.Rows)))
    assert body["image"]["source"] == "dicom"


def test_type_is_sniffed_from_bytes_not_name(server: str, retina_path: Path) -> None:
    r = _post(server, "scan.dcm", retina_path.read_bytes(), "application/octet-stream")
    assert r.status_code == 200 and r.json()["image"]["source"] == "jpeg"


@pytest.mark.parametrize(("data", "status", "code"), [
    (b"%PDF-1.4 not an image", 415, "unsupported_media_type"),
    (b"", 415, "unsupported_media_type"),
])
def test_bad_files_get_json_4xx(server: str, data: bytes, status: int, code: str) -> None:
    r = _post(server, "x.bin", data, "application/octet-stream")
    assert r.status_code == status and r.json()["error"]["code"] == code
    assert r.json()["error"]["message"]


def test_truncated_jpeg_and_dicom_without_pixels(server: str, retina_path: Path, pydicom_files: Path) -> None:
    data = retina_path.read_bytes()
    r = _post(server, "cut.jpg", data[: len(data) // 2], "image/jpeg")
    assert r.status_code == 400 and r.json()["error"]["code"] == "unreadable_image"
    sr = pydicom_files / "rtplan.dcm"
    r = _post(server, "plan.dcm", sr.read_bytes(), "application/dicom")
    assert r.status_code == 422 and r.json()["error"]["code"] == "unsupported_dicom"


def test_missing_field_is_a_400_with_our_shape(server: str) -> None:
    r = httpx.post(f"{server}/analyze", files={"photo": ("a.jpg", b"123", "image/jpeg")}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "missing_field"
    r = httpx.post(f"{server}/analyze", json={"image": "nope"}, timeout=30)
    assert 400 <= r.status_code < 500 and "error" in r.json()


def test_ophthalmic_photography_dicom_with_laterality(server: str, tmp_path: Path) -> None:
    from datasets.synthetic.writer import generate

    generate(tmp_path, count=2, seed=11, size=256, dicom=True, progress=False)
    for name, side in (("00000_left", "L"), ("00000_right", "R")):
        r = _post(server, f"{name}.dcm", (tmp_path / f"{name}.dcm").read_bytes(), "application/dicom")
        body = _check_findings(r, (256, 256))
        assert body["image"]["source"] == "dicom" and body["image"]["laterality"] == side
        assert body["image"]["study_instance_uid"]


def test_info_answers_get_and_post_alike(server: str) -> None:
    got = httpx.get(f"{server}/info", timeout=30)
    posted = httpx.post(f"{server}/info", json={}, timeout=30)
    assert got.status_code == 200 and got.json() == posted.json()
    assert [m["name"] for m in got.json()["models"]][0] == "dr-grader"
    assert httpx.head(f"{server}/info", timeout=30).status_code == 200


def test_the_readme_example_is_what_the_service_answers(server: str) -> None:
    """``python -m service.readme_example --check`` against the running service: same shape, same models, same
    screening answer for retina.jpg as the README shows."""
    from service.readme_example import main

    assert main(["--url", server, "--check"]) == 0
