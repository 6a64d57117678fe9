"""The competent stack (:mod:`bench.competent`) behind a minimal HTTP server, so that it pays the same HTTP cost
as Fovea's ``/analyze`` in the benchmark.

    python -m bench.competent_http --card models/default/dr-grader.card.json --port 3100

A Starlette app under uvicorn (one process, loopback only): ``POST /analyze`` (multipart form field ``image``)
answers ``{"dr_grade": {"grade", "label", "probabilities"}, "saliency": {"target_grade", "heatmap_png",
"overlay_png"}, "timing_ms"}`` with base64 PNGs, as a small DR app would; ``GET /readyz`` answers 200 once the
model is loaded and checked against ONNX Runtime (the same 1e-3 rule as the benchmark). Requests run in
Starlette's thread pool one at a time (a lock: pytorch-grad-cam keeps its activations on the object, and torch
already uses every core for one image). :class:`ServedCompetent` starts it in a subprocess on a free port and
stops it (the whole process group) on exit.
"""

from __future__ import annotations

import argparse
import base64
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench.load import stop_group, wait_ready

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from bench.competent import CompetentStack

REPO = Path(__file__).resolve().parents[1]
#: As :data:`bench.competent.OMP_ENV` (repeated: importing bench.competent would load torch in the client).
OMP_ENV: dict[str, str] = {}


def build_stack(card_path: Path, *, threads: int | None = None) -> CompetentStack:
    """The competent stack on the ONNX weights of ``card_path`` (verified), checked to give ONNX Runtime's
    logits (:func:`bench.onnx_torch.check_same_weights`) on a random input."""
    import numpy as np

    from bench.competent import CompetentStack
    from bench.onnx_torch import check_same_weights, torch_grader
    from models.store import load_verified

    card, onnx = load_verified(card_path)
    model = torch_grader(onnx, card.architecture, len(card.classes))
    x = np.random.default_rng(0).standard_normal((1, 3, card.input.size, card.input.size)).astype(np.float32)
    check_same_weights(model, onnx, x, views=len(card.test_time_views))
    return CompetentStack(model, card, threads=threads)


def create_app(stack: CompetentStack) -> Starlette:
    """The Starlette app around ``stack`` (module docstring)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    # The analysis runs on the event loop's own thread, blocking it (the benchmark sends one request at a time).
    # Run in a worker thread (Starlette's threadpool, or one dedicated thread) PyTorch was ~1.7x slower here
    # (forward 48 against 20 ms, GradCAM ~180 against ~70 ms for the default grader): its OpenMP team then
    # belongs to a thread that is not the one torch was set up on. The fastest arrangement is the fair baseline.
    lock = threading.Lock()

    def analyse(data: bytes) -> dict[str, object]:
        with lock:
            r = stack.run(data)
        return {
            "dr_grade": {"grade": r.grade, "label": stack.card.classes[r.grade], "probabilities": r.probabilities},
            "saliency": {"target_grade": r.target, "heatmap_png": base64.b64encode(r.heatmap_png).decode("ascii"),
                         "overlay_png": base64.b64encode(r.overlay_png).decode("ascii")},
            "timing_ms": r.timing_ms,
        }

    async def analyze(request: Request) -> JSONResponse:
        form = await request.form()
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            return JSONResponse({"error": {"code": "no_image", "message": "send the photograph as form field "
                                           "'image'"}}, status_code=400)
        data = await upload.read()
        try:
            body = analyse(data)
        except Exception as exc:  # a benchmark server: any failure is a counted error, not a crash
            return JSONResponse({"error": {"code": "failed", "message": type(exc).__name__}}, status_code=400)
        return JSONResponse(body)

    async def readyz(_: Request) -> JSONResponse:
        return JSONResponse({"ready": True})

    return Starlette(routes=[Route("/analyze", analyze, methods=["POST"]), Route("/readyz", readyz)])


class ServedCompetent:
    """``python -m bench.competent_http`` in a subprocess on a free loopback port (context manager); ready when
    entered, stopped (process group: SIGTERM, then SIGKILL) on exit."""

    def __init__(self, card: Path, *, threads: int | None = None, timeout: float = 180.0) -> None:
        from bench.load import _free_port

        self.card, self.threads, self.timeout = card, threads, timeout
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_seconds = float("nan")

    def __enter__(self) -> ServedCompetent:
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "bench.competent_http", "--card", str(self.card), "--port", str(self.port)]
        if self.threads:
            cmd += ["--threads", str(self.threads)]
        self._log = tempfile.TemporaryFile()  # not a pipe: a full pipe would stall the server
        env = {**OMP_ENV, **os.environ}  # the caller's environment wins, as in main()
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=self._log,
                                     start_new_session=True)
        try:
            self.ready_seconds = wait_ready(self.proc, self.url, t0=t0, timeout=self.timeout,
                                            what="the competent server", on_timeout=lambda: None, log=self._log)
        except RuntimeError:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        stop_group(self.proc)
        self._log.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.competent_http", description=__doc__.split("\n")[0])
    p.add_argument("--card", type=Path, default=REPO / "models" / "default" / "dr-grader.card.json")
    p.add_argument("--port", type=int, default=3100)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the machine's cores)")
    args = p.parse_args(argv)
    for k, v in OMP_ENV.items():  # before torch loads (build_stack imports it)
        os.environ.setdefault(k, v)
    import uvicorn

    app = create_app(build_stack(args.card, threads=args.threads))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
