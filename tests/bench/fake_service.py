"""A fake Fovea for the load-client tests: an httpx mock transport that records concurrency and fails every
``fail_every``-th request with ``fail_status``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx


@dataclass
class FakeService:
    fail_every: int
    fail_status: int
    inflight: int = 0
    peak: int = 0
    n: int = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.inflight += 1
        self.peak = max(self.peak, self.inflight)
        await asyncio.sleep(0.01)
        self.inflight -= 1
        self.n += 1
        if self.n % self.fail_every == 0:
            return httpx.Response(self.fail_status, json={"error": {"code": "x", "message": "y"}})
        return httpx.Response(200, json={"dr_grade": {"grade": 0}})

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)
