"""service.inference wire format and analysis.runtime thread sharing."""

from __future__ import annotations

import numpy as np
import pytest

from service.inference import pack, unpack
from analysis.runtime import session_threads, worker_count


def test_pack_unpack_round_trip() -> None:
    rng = np.random.default_rng(0)
    out = {"logits": rng.normal(size=(3, 5)).astype(np.float32),
           "cam": rng.normal(size=(3, 5, 10, 10)).astype(np.float32)}
    packed = pack(out)
    assert packed.shape == (3, 5, 101) and packed.dtype == np.float32
    back = unpack(packed)
    np.testing.assert_array_equal(back["logits"], out["logits"])
    np.testing.assert_array_equal(back["cam"], out["cam"])
    # Batch rows stay independent: BentoML splits the output along axis 0.
    np.testing.assert_array_equal(unpack(packed[1:2])["cam"][0], out["cam"][1])


def test_unpack_refuses_a_non_square_cam() -> None:
    with pytest.raises(ValueError, match="square"):
        unpack(np.zeros((1, 5, 1 + 12), np.float32))


def test_threads_are_shared_among_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FOVEA_ORT_THREADS", raising=False)
    monkeypatch.delenv("FOVEA_ORT_SPINNING", raising=False)
    # Spinning is off unless asked for: the analysis does CPU work between and after the model runs.
    assert session_threads(workers=1, cores=8) == (8, False)
    assert session_threads(workers=2, cores=8) == (4, False)
    assert session_threads(workers=4, cores=2) == (1, False)
    monkeypatch.setenv("FOVEA_ORT_THREADS", "3")
    assert session_threads(workers=2, cores=8) == (3, False)
    monkeypatch.setenv("FOVEA_ORT_SPINNING", "1")
    assert session_threads(workers=1, cores=8) == (3, True)


def test_workers_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOVEA_INFERENCE_WORKERS", "2")
    assert worker_count("FOVEA_INFERENCE_WORKERS") == 2
    monkeypatch.delenv("FOVEA_WORKERS", raising=False)
    assert worker_count("FOVEA_WORKERS") == 1
    monkeypatch.setenv("FOVEA_WORKERS", "zero")
    with pytest.raises(ValueError, match="FOVEA_WORKERS"):
        worker_count("FOVEA_WORKERS")
