"""Load and soak test: N concurrent clients for a fixed time against the running service; errors, latency
percentiles and the RSS of the service's process tree at the start and the end (growth must stay < 10 %).

    python -m bench.soak --serve --clients 8 --seconds 300            # starts the service itself (bench.load)
    python -m bench.soak --url http://127.0.0.1:3000 --pid PID ...    # a running service; PID for the RSS

Every response is checked as in :mod:`bench.load` (HTTP 200 with a ``dr_grade``); errors are counted, never
timed as successes. RSS is the sum over the service process and all its children (BentoML's arbiter, the
API workers), sampled after a warm-up, every ``--sample`` seconds, and at the end. Prints Markdown; exits 1
when any request failed or RSS grew by 10 % or more.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from bench.load import LoadResult, ServedFovea, _default_image, run_load

RSS_GROWTH_LIMIT = 0.10


def tree_rss(pid: int) -> int:
    """Resident set size in bytes of ``pid`` and all its descendants (processes that vanish are skipped)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


@dataclass
class SoakResult:
    """One soak run: the load measured and the RSS samples ``(seconds since start, bytes)``."""

    load: LoadResult
    rss: list[tuple[float, int]] = field(default_factory=list)

    @property
    def rss_growth(self) -> float:
        if len(self.rss) < 2 or self.rss[0][1] == 0:
            return float("nan")
        return self.rss[-1][1] / self.rss[0][1] - 1

    @property
    def ok(self) -> bool:
        return self.load.errors == 0 and self.rss_growth < RSS_GROWTH_LIMIT


async def run_soak(url: str, image: bytes, name: str, *, clients: int, seconds: float,
                   rss: Callable[[], int] | None = None, sample_s: float = 10.0,
                   transport: httpx.AsyncBaseTransport | None = None) -> SoakResult:
    """``clients`` concurrent clients send POST /analyze back to back for ``seconds``; RSS sampled by ``rss``."""
    latencies: list[float] = []
    errors = 0
    count = 0
    samples: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    deadline = t0 + seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal errors, count
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                r = await http.post(f"{url}/analyze", files={"image": (name, image)})
                ok = r.status_code == 200 and "dr_grade" in r.json()
            except (httpx.HTTPError, ValueError):
                ok = False
            count += 1
            if ok:
                latencies.append(1000 * (time.perf_counter() - start))
            else:
                errors += 1

    async def sampler() -> None:
        while rss is not None:
            samples.append((time.perf_counter() - t0, await asyncio.to_thread(rss)))
            if time.perf_counter() >= deadline:
                return
            await asyncio.sleep(min(sample_s, max(0.0, deadline - time.perf_counter())))

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=300, limits=limits, transport=transport) as http:
        await asyncio.gather(sampler(), *(client(http) for _ in range(clients)))
    if rss is not None:
        samples.append((time.perf_counter() - t0, rss()))
    load = LoadResult(clients=clients, requests=count, errors=errors, seconds=time.perf_counter() - t0,
                      latencies=tuple(latencies))
    return SoakResult(load=load, rss=samples)


def report(r: SoakResult, *, label: str, image: str) -> str:
    mib = 1024 * 1024
    lat = r.load
    lines = [
        f"Soak: {label}; {lat.clients} clients for {lat.seconds:.0f} s; image {image}; {os.cpu_count()} CPU cores.",
        "",
        "| requests | errors | req/s | p50 ms | p90 ms | p99 ms | mean ms | RSS start MiB | RSS end MiB | "
        "RSS max MiB | RSS growth |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {lat.requests} | {lat.errors} | {lat.throughput:.2f} | {lat.percentile(50):.0f} | "
        f"{lat.percentile(90):.0f} | {lat.percentile(99):.0f} | "
        f"{statistics.fmean(lat.latencies) if lat.latencies else float('nan'):.0f} | "
        + (f"{r.rss[0][1] / mib:.0f} | {r.rss[-1][1] / mib:.0f} | {max(b for _, b in r.rss) / mib:.0f} | "
           f"{100 * r.rss_growth:+.1f} % |" if r.rss else "- | - | - | - |"),
        "",
        f"Verdict: {'PASS' if r.ok else 'FAIL'} (no errors, RSS growth < {100 * RSS_GROWTH_LIMIT:.0f} %).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--url", help="a running service (with --pid for its RSS)")
    p.add_argument("--pid", type=int, help="process id of the running service (RSS of its tree)")
    p.add_argument("--serve", action="store_true", help="start the service (bentoml serve) for the run")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=300)
    p.add_argument("--warmup", type=int, default=4, help="requests before the first RSS sample")
    p.add_argument("--sample", type=float, default=10.0, help="seconds between RSS samples")
    p.add_argument("--image", type=Path, default=None)
    args = p.parse_args(argv)
    if not args.url and not args.serve:
        p.error("give --url (and --pid) of a running service, or --serve")
    if args.clients < 1 or args.seconds <= 0:
        p.error("--clients and --seconds must be positive")
    image_path = args.image or _default_image()
    image = image_path.read_bytes()

    def soak(url: str, pid: int | None, label: str) -> SoakResult:
        asyncio.run(run_load(url, image, image_path.name, clients=1, requests=args.warmup, progress=False))
        rss = (lambda: tree_rss(pid)) if pid else None
        result = asyncio.run(run_soak(url, image, image_path.name, clients=args.clients, seconds=args.seconds,
                                      rss=rss, sample_s=args.sample))
        print(report(result, label=label, image=f"{image_path.name} ({len(image)} bytes)"))
        return result

    try:
        if args.url:
            result = soak(args.url, args.pid, args.url)
        else:
            with tempfile.TemporaryDirectory(prefix="fovea-soak-") as home, \
                    ServedFovea(workers=args.workers, inference="local", home=Path(home)) as svc:
                assert svc.proc is not None
                result = soak(svc.url, svc.proc.pid, f"bentoml serve, {args.workers} worker(s), local inference")
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
