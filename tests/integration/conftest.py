"""The real service for integration tests: ``bentoml serve`` in a subprocess on a free loopback port.

One service is started per test session and shared by every test that asks for ``server`` (start-up costs
seconds; the tests only read from it). :func:`running_service` starts another one where a test needs other
settings.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group ``proc`` leads (started with ``start_new_session``), SIGKILL after 20 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextmanager
def running_service(workdir: Path, env: Mapping[str, str] | None = None, ready_s: float = 120,
                    args: Sequence[str] = (), scheme: str = "http") -> Iterator[str]:
    """Start ``bentoml serve service.service:Fovea`` with its own model store under ``workdir``; yield its base
    URL once ``/readyz`` answers 200; stop its whole process group afterwards. Fails the test if the service
    exits early, is not ready within ``ready_s`` seconds, or logged a traceback. ``args`` go to ``bentoml
    serve`` (e.g. ``--ssl-certfile``; then ``scheme="https"``). The log is ``workdir/serve.log``, the process
    group id ``workdir/serve.pid``."""
    port = free_port()
    full_env = {**os.environ, "BENTOML_HOME": str(workdir / "bentoml_home"), "BENTOML_DO_NOT_TRACK": "true",
                "FOVEA_DEVICE": "cpu", **(env or {})}
    log = workdir / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", "service.service:Fovea", "--host", "127.0.0.1",
             "--port", str(port), *args], cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    (workdir / "serve.pid").write_text(str(proc.pid))  # the process group, for tests that kill it
    url = f"{scheme}://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_s
        while True:
            if proc.poll() is not None:
                pytest.fail(f"service exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                # (the readiness poll does not check a test's self-signed certificate; the tests do)
                if httpx.get(f"{url}/readyz", timeout=2, verify=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"service not ready in {ready_s:.0f} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        stop_process_group(proc)
        text = log.read_text(errors="replace")
        assert "Traceback" not in text, text[-3000:]


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of the real service with the embedded default models, shared by the whole session."""
    with running_service(tmp_path_factory.mktemp("service")) as url:
        yield url
