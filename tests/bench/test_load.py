"""bench.load: bounded concurrency, errors counted (never timed as successes), percentiles."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from bench.load import LoadResult, main, run_load


def test_errors_are_counted_and_concurrency_is_bounded() -> None:
    state = {"inflight": 0, "peak": 0, "n": 0}

    async def handler(request: httpx.Request) -> httpx.Response:
        state["inflight"] += 1
        state["peak"] = max(state["peak"], state["inflight"])
        await asyncio.sleep(0.01)
        state["inflight"] -= 1
        state["n"] += 1
        if state["n"] % 4 == 0:
            return httpx.Response(400, json={"error": {"code": "x", "message": "y"}})
        return httpx.Response(200, json={"dr_grade": {"grade": 0}})

    r = asyncio.run(run_load("http://fovea.test", b"img", "a.jpg", clients=3, requests=12, progress=False,
                             transport=httpx.MockTransport(handler)))
    assert r.requests == 12 and r.errors == 3 and len(r.latencies) == 9
    assert state["peak"] == 3
    assert r.throughput > 0


def test_percentiles() -> None:
    r = LoadResult(clients=1, requests=100, errors=0, seconds=1.0, latencies=tuple(float(i) for i in range(1, 101)))
    assert r.percentile(50) in (50.0, 51.0) and r.percentile(99) == 99.0 and r.percentile(100) == 100.0


def test_cli_needs_a_target(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2 and "--url" in capsys.readouterr().err
