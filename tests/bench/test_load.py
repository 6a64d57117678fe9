"""bench.load: bounded concurrency, errors counted (never timed as successes), percentiles."""

from __future__ import annotations

import asyncio

import pytest

from bench.load import LoadResult, main, run_load
from tests.bench.fake_service import FakeService


def test_errors_are_counted_and_concurrency_is_bounded() -> None:
    fake = FakeService(fail_every=4, fail_status=400)
    r = asyncio.run(run_load("http://fovea.test", b"img", "a.jpg", clients=3, requests=12, progress=False,
                             transport=fake.transport()))
    assert r.requests == 12 and r.errors == 3 and len(r.latencies) == 9
    assert fake.peak == 3
    assert r.throughput > 0


def test_percentiles() -> None:
    r = LoadResult(clients=1, requests=100, errors=0, seconds=1.0, latencies=tuple(float(i) for i in range(1, 101)))
    assert r.percentile(50) in (50.0, 51.0) and r.percentile(99) == 99.0 and r.percentile(100) == 100.0


def test_cli_needs_a_target(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2 and "--url" in capsys.readouterr().err
