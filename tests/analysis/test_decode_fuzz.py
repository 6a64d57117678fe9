"""Fixed-seed Hypothesis fuzzing of analysis.decode.decode: for mutated JPEG / PNG / DICOM seeds only
analysis.errors.FoveaError subclasses escape (the longer run is ``python -m bench.fuzz``)."""

from __future__ import annotations

import random
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.fuzz import MUTATORS, seeds
from analysis.decode import DecodeLimits, decode
from analysis.errors import FoveaError

SEEDS = seeds()
POOL = list(SEEDS.values())
# Small limits keep every decode cheap (the fuzzing is of the parsing, not of big images).
LIMITS = DecodeLimits(max_pixels=1_000_000, max_total_pixels=2_000_000, isolated_decode_timeout_s=10)

mutations = st.lists(st.tuples(st.sampled_from(sorted(MUTATORS)), st.integers(0, 2**32 - 1)), min_size=1,
                     max_size=3)


@settings(max_examples=200, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(SEEDS)), steps=mutations, target=st.sampled_from([None, 32]))
def test_only_fovea_errors_escape_decode(kind: str, steps: list[tuple[str, int]], target: int | None) -> None:
    data = SEEDS[kind]
    for name, seed in steps:
        rng = random.Random(seed)
        data = MUTATORS[name](rng, data, rng.choice(POOL))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            images = decode(data, limits=LIMITS, target=target)
        except FoveaError:
            return
    assert images and all(im.rgb.ndim == 3 and im.rgb.shape[2] == 3 for im in images)


@pytest.mark.parametrize("name", sorted(MUTATORS))
def test_each_mutator_changes_its_input(name: str) -> None:
    rng = random.Random(5)
    changed = sum(MUTATORS[name](rng, SEEDS["dicom-jpeg"], SEEDS["png"]) != SEEDS["dicom-jpeg"] for _ in range(20))
    assert changed >= 10, name


def test_seeds_are_valid() -> None:
    for kind, data in SEEDS.items():
        assert decode(data), kind
