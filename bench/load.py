"""Bounded asyncio load client for the running service: N concurrent clients, M requests, latency percentiles.

    python -m bench.load --url http://127.0.0.1:3000 --clients 4 --requests 40 [--image photo.jpg]
    python -m bench.load --serve --workers 1 2 --clients 4 --requests 40      # starts the service itself

With ``--serve`` the service is started on a free loopback port for each worker count in turn (``bentoml
serve``, ``FOVEA_WORKERS``/``FOVEA_INFERENCE`` from the flags), warmed up, loaded, and stopped; one Markdown
row per configuration is printed at the end. Every response is checked (HTTP 200 and a ``dr_grade``): errors
are counted, never timed as successes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class LoadResult:
    """What one load run measured (latencies in ms)."""

    clients: int
    requests: int
    errors: int
    seconds: float
    latencies: tuple[float, ...]

    @property
    def throughput(self) -> float:
        return (self.requests - self.errors) / self.seconds

    def percentile(self, q: float) -> float:
        lat = sorted(self.latencies)
        return lat[min(len(lat) - 1, int(round(q / 100 * (len(lat) - 1))))] if lat else float("nan")


async def run_load(url: str, image: bytes, name: str, *, clients: int, requests: int,
                   progress: bool = True, transport: httpx.AsyncBaseTransport | None = None) -> LoadResult:
    """Send ``requests`` POST /analyze with at most ``clients`` in flight; measure each round trip
    (``transport``: for tests)."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    latencies: list[float] = []
    errors = 0
    bar = tqdm(total=requests, desc=f"{clients} clients", unit="req", disable=not progress, leave=False)

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal errors
        while True:
            try:
                queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            t0 = time.perf_counter()
            try:
                r = await http.post(f"{url}/analyze", files={"image": (name, image)})
                ok = r.status_code == 200 and "dr_grade" in r.json()
            except (httpx.HTTPError, ValueError):
                ok = False
            if ok:
                latencies.append(1000 * (time.perf_counter() - t0))
            else:
                errors += 1
            bar.update()

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=300, limits=limits, transport=transport) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        seconds = time.perf_counter() - t0
    bar.close()
    return LoadResult(clients=clients, requests=requests, errors=errors, seconds=seconds, latencies=tuple(latencies))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServedFovea:
    """``bentoml serve`` in a subprocess on a free loopback port (context manager); ready when entered.
    ``env``: extra environment for the service (e.g. ``FOVEA_GRADER_TAG``)."""

    def __init__(self, *, workers: int, inference: str, home: Path, env: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true",
                    "FOVEA_WORKERS": str(workers), "FOVEA_INFERENCE": inference, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_seconds = float("nan")

    def __enter__(self) -> ServedFovea:
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", "service.service:Fovea", "--host", "127.0.0.1",
             "--port", str(self.port)], cwd=REPO, env=self.env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        self.ready_seconds = wait_ready(self.proc, self.url, t0=t0, timeout=180.0, what="the service",
                                        on_timeout=self.__exit__)
        return self

    def __exit__(self, *_: object) -> None:
        stop_group(self.proc)


def wait_ready(proc: subprocess.Popen[bytes], url: str, *, t0: float, timeout: float, what: str,
               on_timeout: Callable[[], None], log: IO[bytes] | None = None) -> float:
    """Poll ``url``/readyz until it answers 200; return the seconds since ``t0``. ``RuntimeError`` (with the
    tail of ``log`` when given) when ``proc`` exits first, or after ``timeout`` s (``on_timeout`` runs first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = ""
            if log is not None:
                log.seek(0)
                err = ": " + log.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready{err}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    on_timeout()
    raise RuntimeError(f"{what} was not ready within {timeout:.0f} s")


def stop_group(proc: subprocess.Popen[bytes] | None) -> None:
    """Stop ``proc``'s process group if it still runs: SIGTERM, then SIGKILL after 30 s."""
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _default_image() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data" / "retina.jpg"


def _row(label: str, r: LoadResult) -> str:
    return (f"| {label} | {r.clients} | {r.requests} | {r.errors} | {r.throughput:.2f} | {r.percentile(50):.0f} | "
            f"{r.percentile(90):.0f} | {r.percentile(99):.0f} | {statistics.fmean(r.latencies) if r.latencies else 0:.0f} |")


HEADER = ("| configuration | clients | requests | errors | req/s | p50 ms | p90 ms | p99 ms | mean ms |\n"
          "|---|---|---|---|---|---|---|---|---|")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n")[0])
    p.add_argument("--url", help="a running service (default: start one with --serve)")
    p.add_argument("--serve", action="store_true", help="start the service for each --workers value")
    p.add_argument("--workers", type=int, nargs="+", default=[1], help="FOVEA_WORKERS values with --serve")
    p.add_argument("--inference", choices=["local", "service"], default="local")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--requests", type=int, default=40)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--image", type=Path, default=None, help="photograph to send (default: scikit-image's retina)")
    args = p.parse_args(argv)
    if not args.url and not args.serve:
        p.error("give --url of a running service, or --serve")
    if args.clients < 1 or args.requests < 1:
        p.error("--clients and --requests must be positive")
    image_path = args.image or _default_image()
    try:
        image = image_path.read_bytes()
    except OSError as exc:
        p.error(f"cannot read {image_path}: {exc.strerror}")
    rows = []
    try:
        if args.url:
            asyncio.run(run_load(args.url, image, image_path.name, clients=1, requests=args.warmup, progress=False))
            r = asyncio.run(run_load(args.url, image, image_path.name, clients=args.clients, requests=args.requests))
            rows.append(_row(args.url, r))
        else:
            with tempfile.TemporaryDirectory(prefix="fovea-load-") as home:
                for workers in args.workers:
                    with ServedFovea(workers=workers, inference=args.inference, home=Path(home)) as svc:
                        asyncio.run(run_load(svc.url, image, image_path.name, clients=workers, requests=args.warmup
                                             * workers, progress=False))
                        r = asyncio.run(run_load(svc.url, image, image_path.name, clients=args.clients,
                                                 requests=args.requests))
                        rows.append(_row(f"{workers} worker(s), {args.inference} inference, ready in "
                                         f"{svc.ready_seconds:.1f} s", r))
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{image_path.name}, {len(image)} bytes; {os.cpu_count()} CPU cores")
    print(HEADER)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
