"""bench.soak: time-bounded concurrent load, errors counted, RSS of a process tree, the 10 % verdict."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

from bench.load import LoadResult
from bench.soak import SoakResult, main, report, run_soak, tree_rss
from tests.bench.fake_service import FakeService


def test_soak_runs_for_its_time_with_bounded_concurrency_and_counts_errors() -> None:
    fake = FakeService(fail_every=5, fail_status=500)
    rss_values = iter(range(100, 10_000, 1))
    r = asyncio.run(run_soak("http://fovea.test", b"img", "a.jpg", clients=3, seconds=0.5,
                             rss=lambda: next(rss_values), sample_s=0.1, transport=fake.transport()))
    assert 0.5 <= r.load.seconds < 1.5
    assert fake.peak == 3 and r.load.requests == fake.n >= 20
    assert r.load.errors == fake.n // 5 and len(r.load.latencies) == r.load.requests - r.load.errors
    assert len(r.rss) >= 4 and not r.ok  # errors make it fail
    text = report(r, label="mock", image="a.jpg")
    assert "| errors |" in text and "FAIL" in text


def test_rss_growth_verdict() -> None:
    load = LoadResult(clients=1, requests=10, errors=0, seconds=1.0, latencies=(1.0,) * 10)
    assert SoakResult(load=load, rss=[(0, 1000), (1, 1099)]).ok
    assert not SoakResult(load=load, rss=[(0, 1000), (1, 1100)]).ok
    assert "PASS" in report(SoakResult(load=load, rss=[(0, 1000), (1, 1000)]), label="x", image="y")


def test_tree_rss_sums_children() -> None:
    me = tree_rss(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "import time; b = b'x' * (64 << 20); time.sleep(30)"])
    try:
        for _ in range(100):  # the child touches 64 MiB of pages
            if tree_rss(os.getpid()) > me + (48 << 20):
                break
            time.sleep(0.1)
        assert tree_rss(os.getpid()) > me + (48 << 20)
    finally:
        child.kill()
        child.wait()
    assert tree_rss(2**22 + 12345) == 0  # no such process


def test_cli_needs_a_target(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2 and "--url" in capsys.readouterr().err
