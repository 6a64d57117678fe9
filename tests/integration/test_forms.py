"""Malformed forms against the real service: whatever shape a multipart form takes, the answer is never a 5xx,
always the JSON error shape, and a refused field is named in the message (service/request_guard.py, item 5)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.request_guard import FORMS

pytestmark = pytest.mark.integration

ENDPOINTS = ("/analyze", "/analyze_study", "/jobs/analyze_study/submit", "/jobs/analyze_study/retry",
             "/jobs/analyze_study/status", "/info")
#: The routes that read a form body (the others refuse on their query first).
READS_FORM = ("/analyze", "/analyze_study", "/jobs/analyze_study/submit", "/info")
NAMES = ("image", "images", "laterality", "photo", "extra", "IMAGE", "")
#: A photograph too small to analyse: the service refuses it quickly (422) once the form is right.
TINY_JPEG = cv2.imencode(".jpg", np.full((48, 48, 3), 90, np.uint8))[1].tobytes()
BOUNDARY = "fovea-test-boundary"


@dataclass(frozen=True)
class Part:
    name: str
    filename: str | None
    content: bytes


parts = st.builds(Part, st.sampled_from(NAMES), st.sampled_from([None, "a.jpg", "x"]),
                  st.sampled_from([TINY_JPEG, b"R", b"R,L", b"left", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01", b""])
                  | st.binary(max_size=48))


def body(form: list[Part], framing: str) -> tuple[bytes, str]:
    """The request body and its Content-Type for ``form`` framed as ``framing``."""
    chunks = []
    for p in form:
        disposition = f'form-data; name="{p.name}"' + (f'; filename="{p.filename}"' if p.filename else "")
        ctype = b"Content-Type: application/octet-stream\r\n" if p.filename else b""
        chunks.append(f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n".encode() + ctype + b"\r\n"
                      + p.content + b"\r\n")
    close = b"" if framing == "unclosed" else f"--{BOUNDARY}--\r\n".encode()
    data = b"".join(chunks) + close
    ctype = {"ok": f"multipart/form-data; boundary={BOUNDARY}", "unclosed": f"multipart/form-data; boundary={BOUNDARY}",
             "no boundary": "multipart/form-data", "other boundary": "multipart/form-data; boundary=another-one",
             }[framing]
    return data, ctype


def _is_text(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def offenders(endpoint: str, form: list[Part]) -> set[str]:
    """The field names the service must refuse in ``form`` sent to ``endpoint`` (see FORMS)."""
    spec = FORMS.get(endpoint)
    seen: dict[str, int] = {}
    bad = set()
    for p in form:
        seen[p.name] = seen.get(p.name, 0) + 1
        if spec is None or (p.name != spec.file and p.name not in spec.texts):
            bad.add(p.name)
        elif seen[p.name] > 1 and not (p.name == spec.file and spec.many):
            bad.add(p.name)
        elif p.name in spec.texts and (p.filename or not _is_text(p.content)):
            bad.add(p.name)
        elif p.name == spec.file and not p.filename:
            bad.add(p.name)
    return bad


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(endpoint=st.sampled_from(ENDPOINTS), form=st.lists(parts, max_size=4),
       framing=st.sampled_from(["ok", "ok", "ok", "unclosed", "no boundary", "other boundary"]))
def test_no_form_shape_gets_a_5xx(server: str, endpoint: str, form: list[Part], framing: str) -> None:
    data, ctype = body(form, framing)
    r = httpx.post(f"{server}{endpoint}", content=data, headers={"Content-Type": ctype}, timeout=60)
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        error = r.json()["error"]
        assert set(error) == {"code", "message"} and error["message"], error
    bad = offenders(endpoint, form)
    # The job-control routes answer from their query (task_id) without reading a form: their 400 names that.
    if framing == "ok" and bad and endpoint in READS_FORM:
        assert r.status_code == 400, (r.status_code, r.text[:300])
        shown = {f"'{n}'" if n else "(a part without a name)" for n in bad}
        assert any(s in r.json()["error"]["message"] for s in shown), (bad, r.text[:300])


@pytest.mark.parametrize(("endpoint", "files", "named"), [
    ("/analyze", [("photo", TINY_JPEG)], "photo"),
    ("/analyze", [("image", TINY_JPEG), ("extra", TINY_JPEG)], "extra"),
    ("/analyze_study", [("image", TINY_JPEG), ("image", TINY_JPEG)], "image"),
    ("/analyze", [("image", TINY_JPEG), ("image", TINY_JPEG)], "image"),
    ("/analyze", [("laterality", TINY_JPEG), ("image", TINY_JPEG)], "laterality"),
    ("/info", [("x", TINY_JPEG)], "x"),
])
def test_the_slips_a_person_makes_with_curl(server: str, endpoint: str, files: list[tuple[str, bytes]],
                                             named: str) -> None:
    """``curl -F photo=@a.jpg /analyze`` and its kin: each a 400 naming the field."""
    r = httpx.post(f"{server}{endpoint}", files=[(name, ("a.jpg", data, "image/jpeg")) for name, data in files],
                   timeout=60)
    assert r.status_code == 400 and f"'{named}'" in r.json()["error"]["message"], r.text[:300]


def test_binary_text_value_is_refused_without_echoing_it(server: str) -> None:
    r = httpx.post(f"{server}/analyze", files={"image": ("a.jpg", TINY_JPEG, "image/jpeg")},
                   data={"laterality": "\udcff".encode("utf-8", "surrogateescape").decode("latin-1")}, timeout=60)
    assert r.status_code == 400 and "laterality" in r.json()["error"]["message"]
