"""bench.competent_http: the competent stack's HTTP server answers like /analyze (a grade and two base64 PNGs),
refuses a request without a photograph, and is stopped with its process group."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path

import httpx
import pytest

pytest.importorskip("pytorch_grad_cam", reason="grad-cam (dev extra) is not installed")

from bench.competent_http import ServedCompetent, build_stack, create_app  # noqa: E402
from bench.onnx_torch import WeightMappingError  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def test_the_app_answers_a_grade_and_two_pngs(tiny_export: Path, retina_png: Path) -> None:
    stack = build_stack(tiny_export / "tiny-grader.card.json", threads=1)
    transport = httpx.ASGITransport(app=create_app(stack))

    async def exchange() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=transport, base_url="http://competent.test") as client:
            return [await client.get("/readyz"),
                    await client.post("/analyze", files={"image": ("retina.png", retina_png.read_bytes())}),
                    await client.post("/analyze", data={"other": "x"}),
                    await client.post("/analyze", files={"image": ("x.jpg", b"not an image")})]

    ready, r, missing, broken = asyncio.run(exchange())
    assert ready.status_code == 200 and r.status_code == 200
    body = r.json()
    assert 0 <= body["dr_grade"]["grade"] <= 4 and len(body["dr_grade"]["probabilities"]) == 5
    for key in ("heatmap_png", "overlay_png"):
        assert base64.b64decode(body["saliency"][key]).startswith(PNG)
    assert set(body["timing_ms"]) == {"decode", "transforms", "forward", "gradcam", "overlay", "encode"}
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "no_image"
    assert broken.status_code == 400


def test_a_card_whose_weights_do_not_map_is_refused(tiny_export: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.onnx_torch as onnx_torch

    # Nothing agrees within a negative tolerance: the server must refuse to start on such weights.
    monkeypatch.setattr(onnx_torch.check_same_weights, "__defaults__", (-1.0, 1))
    with pytest.raises(WeightMappingError):
        build_stack(tiny_export / "tiny-grader.card.json", threads=1)


def test_the_served_server_answers_and_is_stopped(tiny_export: Path, retina_png: Path) -> None:
    with ServedCompetent(tiny_export / "tiny-grader.card.json", threads=1) as server:
        assert server.proc is not None and server.ready_seconds > 0
        r = httpx.post(f"{server.url}/analyze", files={"image": ("retina.png", retina_png.read_bytes())}, timeout=120)
        assert r.status_code == 200 and "dr_grade" in r.json()
        pid = server.proc.pid
    assert server.proc.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # the whole group is gone
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{server.url}/readyz", timeout=2)


def test_a_server_that_cannot_start_says_why(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="exited"):
        with ServedCompetent(tmp_path / "missing.card.json", threads=1):
            pass


def test_the_server_keeps_torchs_openmp_defaults_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    import subprocess

    seen: list[dict[str, str]] = []

    class Exited:
        def __init__(self, *args: object, env: dict[str, str], **kwargs: object) -> None:
            seen.append(env)
            self.returncode = 1

        def poll(self) -> int:
            return 1

    monkeypatch.setattr(subprocess, "Popen", Exited)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    with pytest.raises(RuntimeError, match="exited"):
        ServedCompetent(tmp_path / "x.card.json").__enter__()
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    with pytest.raises(RuntimeError, match="exited"):
        ServedCompetent(tmp_path / "x.card.json").__enter__()
    assert [e.get("OMP_WAIT_POLICY") for e in seen] == [None, "PASSIVE"]
