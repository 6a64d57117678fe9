"""Shared fixtures of the gateway tests: a real sealer, a queue folder, a synthetic fundus OP file."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from datasets.synthetic.writer import generate
from service.at_rest import Sealer
from service.gateway.queue import DurableQueue


@pytest.fixture
def sealer() -> Sealer:
    return Sealer(os.urandom(32))


@pytest.fixture
def queue(tmp_path: Path, sealer: Sealer) -> Iterator[DurableQueue]:
    with DurableQueue(tmp_path / "queue", sealer) as q:
        yield q


@pytest.fixture(scope="session")
def op_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic fundus photograph as an Ophthalmic Photography 8 Bit JPEG-baseline Part 10 file."""
    out = tmp_path_factory.mktemp("op")
    generate(out, count=1, seed=3, size=128, progress=False, dicom=True)
    return next(out.glob("*.dcm"))
