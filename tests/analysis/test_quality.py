"""analysis.quality: the classic gate keeps real photographs gradable and names what spoils a bad one."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets.synthetic import quality as artefacts
from datasets.synthetic.fundus import render_fundus
from models.preprocess import locate_field
from analysis.quality import REASONS, QualityMeasures, QualityRules, assess, measure


def _rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def _synthetic(seed: int, force: str | None = None, strength: float | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = render_fundus(rng, grade=int(rng.integers(0, 5)), laterality="R", size=640).image
    if force is None:
        return img
    plan = artefacts.sample_plan(rng, force=force, strength=strength)
    out, _ = artefacts.apply(img, plan, rng, field=locate_field(img))
    return out


def test_real_photograph_is_gradable(retina_path: Path) -> None:
    v = assess(measure(_rgb(retina_path)))
    assert v.gradable and v.reasons == () and v.score > 0.5


def test_measures_do_not_depend_much_on_resolution(retina_path: Path) -> None:
    rgb = _rgb(retina_path)
    full, half = measure(rgb), measure(cv2.resize(rgb, (706, 706), interpolation=cv2.INTER_AREA))
    for name in ("coverage", "brightness", "illumination"):
        assert getattr(half, name) == pytest.approx(getattr(full, name), rel=0.1, abs=0.01)
    assert assess(half).gradable


@pytest.mark.parametrize("seed", range(6))
def test_clean_synthetic_photographs_pass(seed: int) -> None:
    assert assess(measure(_synthetic(seed))).gradable


@pytest.mark.parametrize(("artefact", "reason"), [
    ("blur", "blur"), ("underexposed", "underexposed"), ("overexposed", "overexposed"), ("haze", "haze"),
    ("cut_field", "field"), ("uneven_illumination", "uneven"),
])
def test_strong_artefacts_are_named(artefact: str, reason: str) -> None:
    v = assess(measure(_synthetic(100, artefact, 0.95)))
    assert not v.gradable and reason in v.reasons and v.score < 0.5


def test_black_and_blank_images_are_ungradable() -> None:
    black = np.zeros((400, 400, 3), np.uint8)
    v = assess(measure(black))
    assert not v.gradable and "field" in v.reasons
    grey = np.full((400, 400, 3), 128, np.uint8)  # no fundus, no detail at all
    assert not assess(measure(grey)).gradable


def test_rules_and_reason_order() -> None:
    m = QualityMeasures(coverage=0.5, brightness=0.01, clipped=0.0, sharpness=0.1, contrast=0.001, illumination=0.01)
    v = assess(m)
    assert v.reasons == tuple(r for r in REASONS if r in {"field", "underexposed", "blur", "haze"})
    lenient = QualityRules(coverage_min=0.01, brightness_min=0.001, sharpness_min=0.01, contrast_min=0.0001)
    assert assess(m, lenient).gradable


def test_histogram_median_equals_numpy_median() -> None:
    from analysis.quality import _median_u8

    rng = np.random.default_rng(5)
    for n in (1, 2, 3, 10, 1001, 150_000):
        v = rng.integers(0, 256, n).astype(np.uint8)
        assert _median_u8(v) == float(np.median(v))
    assert _median_u8(np.array([0, 255], np.uint8)) == 127.5
