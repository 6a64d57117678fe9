"""Synthetic image-quality artefacts: plans, thresholds, determinism, measurable effects, geometry, CSV."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from datasets.synthetic import quality as q
from datasets.synthetic.fundus import render_fundus
from datasets.synthetic.quality import (
    ARTEFACTS,
    QUALITY_COLUMNS,
    THRESHOLDS,
    ArtefactPlan,
    ChordCut,
    Geometry,
    NotchCut,
    QualityError,
    QualityTruth,
    apply,
    estimate_field,
    jpeg_quality,
    judge,
    recompress,
    sample_plan,
)

SIZE = 256
PIXEL_ARTEFACTS = tuple(a for a in ARTEFACTS if a != "jpeg_artefacts")


@pytest.fixture(scope="module")
def photo() -> tuple[np.ndarray, tuple[float, float, float]]:
    """A grade-2 right-eye photograph and its field of view."""
    image = render_fundus(np.random.default_rng(11), grade=2, laterality="R", size=SIZE).image
    return image, estimate_field(image)


def _run(
    photo: tuple[np.ndarray, tuple[float, float, float]], name: str, strength: float, seed: int = 0
) -> tuple[np.ndarray, Geometry]:
    image, field = photo
    return apply(image, ArtefactPlan({name: strength}), np.random.default_rng(seed), field=field)


def _field_pixels(shape: tuple[int, ...], field: tuple[float, float, float], shrink: float = 0.97) -> np.ndarray:
    cx, cy, r = field
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (xs - cx) ** 2 + (ys - cy) ** 2 < (shrink * r) ** 2


def _brightness(img: np.ndarray) -> np.ndarray:
    """Red + green, smoothed a little: a brightness proxy robust to noise and rounding."""
    rg = img[..., 0].astype(np.float32) + img[..., 1].astype(np.float32)
    return cv2.blur(rg, (5, 5))


def _detail(img: np.ndarray, inside: np.ndarray) -> float:
    """Variance of the Laplacian of the (lightly pre-smoothed) green channel inside the field: sharpness.

    The sigma-1.5 pre-smoothing keeps pixel noise (which blur and haze add back) out of the measure.
    """
    green = cv2.GaussianBlur(img[..., 1].astype(np.float32), (0, 0), 1.5)
    return float(cv2.Laplacian(green, cv2.CV_32F)[inside].var())


# --- names, plans, thresholds ---------------------------------------------------------------------------------


def test_names_match_the_folder_contract() -> None:
    assert set(ARTEFACTS) == {
        "blur", "underexposed", "overexposed", "uneven_illumination", "lid_shadow", "haze", "off_centre",
        "cut_field", "jpeg_artefacts",
    }
    assert len(ARTEFACTS) == 9 and set(THRESHOLDS) == set(ARTEFACTS)
    assert QUALITY_COLUMNS == ("gradable", "reasons", *ARTEFACTS)


def test_plan_fills_missing_names_and_rejects_bad_strengths() -> None:
    plan = ArtefactPlan({"blur": 0.3})
    assert list(plan.strengths) == list(ARTEFACTS) and plan.strengths["haze"] == 0.0
    assert plan.degraded and plan.present() == ("blur",)
    assert not ArtefactPlan({}).degraded
    for bad in ({"sharpness": 0.2}, {"blur": 1.5}, {"blur": -0.1}, {"blur": math.nan}, {"blur": True},
                {"blur": "0.3"}):
        with pytest.raises(QualityError):
            ArtefactPlan(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ARTEFACTS)
def test_judge_threshold_is_inclusive(name: str) -> None:
    t = THRESHOLDS[name]
    below = judge(ArtefactPlan({name: round(t - 0.001, 3)}))
    assert below.gradable and below.reasons == () and below.strengths[name] == pytest.approx(t - 0.001)
    for s in (t, 1.0):
        at = judge(ArtefactPlan({name: s}))
        assert not at.gradable and at.reasons == (name,)


def test_judge_lists_only_the_artefacts_past_threshold_in_canonical_order() -> None:
    truth = judge(ArtefactPlan({"jpeg_artefacts": 0.9, "blur": 0.7, "haze": 0.2}))
    assert truth.reasons == ("blur", "jpeg_artefacts") and not truth.gradable
    assert judge(ArtefactPlan({})) == QualityTruth(True, (), dict.fromkeys(ARTEFACTS, 0.0))


def test_sample_plan_is_deterministic_and_mostly_clean() -> None:
    a = [sample_plan(np.random.default_rng([5, i])) for i in range(50)]
    b = [sample_plan(np.random.default_rng([5, i])) for i in range(50)]
    assert a == b
    rng = np.random.default_rng(1)
    plans = [sample_plan(rng, p_degraded=0.25) for _ in range(4000)]
    degraded = [p for p in plans if p.degraded]
    assert 0.22 < len(degraded) / len(plans) < 0.28
    sides: dict[str, set[bool]] = {name: set() for name in ARTEFACTS}
    for p in degraded:
        present = p.present()
        assert 1 <= len(present) <= 2
        assert not {"underexposed", "overexposed"} <= set(present)
        for name in present:
            s = p.strengths[name]
            assert 0.1 <= s <= 1.0 and s == round(s, 3)
            sides[name].add(s >= THRESHOLDS[name])
    assert all(v == {True, False} for v in sides.values()), sides  # both sides of every threshold occur
    ungradable = sum(not judge(p).gradable for p in plans) / len(plans)
    assert 0.10 < ungradable < 0.20
    assert not any(sample_plan(rng, p_degraded=0.0).degraded for _ in range(50))


def test_sample_plan_force() -> None:
    rng = np.random.default_rng(2)
    for name in ARTEFACTS:
        plan = sample_plan(rng, force=name)
        assert plan.present() == (name,) and plan.strengths[name] >= THRESHOLDS[name]
        assert judge(plan).reasons == (name,)
    assert sample_plan(rng, force="haze", strength=0.2).strengths["haze"] == 0.2
    with pytest.raises(QualityError, match="unknown artefact"):
        sample_plan(rng, force="glare")
    with pytest.raises(QualityError, match="force"):
        sample_plan(rng, strength=0.4)
    with pytest.raises(QualityError, match="p_degraded"):
        sample_plan(rng, p_degraded=1.5)


def test_csv_fields_round_trip_and_errors() -> None:
    truth = judge(ArtefactPlan({"blur": 0.5, "haze": 0.123}))
    fields = truth.csv_fields()
    assert fields[:2] == ("0", "blur") and len(fields) == len(QUALITY_COLUMNS)
    assert fields[QUALITY_COLUMNS.index("haze")] == "0.123"
    row = dict(zip(QUALITY_COLUMNS, fields, strict=True))
    assert QualityTruth.from_csv_fields(row) == truth
    clean = judge(ArtefactPlan({}))
    assert QualityTruth.from_csv_fields(dict(zip(QUALITY_COLUMNS, clean.csv_fields(), strict=True))) == clean
    bad_rows = [
        ({"gradable": "yes"}, "gradable must be 0 or 1"),
        ({"reasons": "blur;glare"}, "unknown reason"),
        ({"gradable": "1"}, "contradicts"),
        ({"haze": "1.2"}, "must be in"),
        ({"haze": "x"}, "must be a number"),
    ]
    for change, message in bad_rows:
        with pytest.raises(QualityError, match=message) as err:
            QualityTruth.from_csv_fields({**row, **change}, where="d/quality.csv:3")
        assert "d/quality.csv:3" in str(err.value)
    with pytest.raises(QualityError, match="missing column"):
        QualityTruth.from_csv_fields({"gradable": "1"})


def test_jpeg_quality() -> None:
    assert jpeg_quality(ArtefactPlan({})) == 95 and jpeg_quality(ArtefactPlan({"blur": 0.9})) == 95
    assert jpeg_quality(ArtefactPlan({}), default=90) == 90
    assert jpeg_quality(ArtefactPlan({"jpeg_artefacts": 0.5})) == 15  # the threshold
    qualities = [jpeg_quality(ArtefactPlan({"jpeg_artefacts": s})) for s in (0.001, 0.3, 0.7, 1.0)]
    assert qualities == sorted(qualities, reverse=True) and all(5 <= v <= 25 for v in qualities)


def test_recompress_shows_blocking(photo: tuple[np.ndarray, tuple[float, float, float]]) -> None:
    image, _ = photo

    def blockiness(img: np.ndarray) -> float:
        """Mean jump across 8-pixel block borders over the mean jump elsewhere (1 = no block structure)."""
        g = img[..., 1].astype(np.float32)
        jumps = np.abs(np.diff(g, axis=1))[:, 32:-32]
        cols = np.arange(32, g.shape[1] - 33)
        border = (cols % 8) == 7
        return float(jumps[:, border].mean() / jumps[:, ~border].mean())

    heavy = recompress(image, jpeg_quality(ArtefactPlan({"jpeg_artefacts": 0.9})))
    light = recompress(image, 95)
    assert heavy.shape == image.shape and heavy.dtype == np.uint8
    assert blockiness(heavy) > 1.5 > blockiness(light)


# --- apply: contract -----------------------------------------------------------------------------------------


def test_clean_and_jpeg_only_plans_return_the_input_itself(
    photo: tuple[np.ndarray, tuple[float, float, float]],
) -> None:
    image, field = photo
    for plan in (ArtefactPlan({}), ArtefactPlan({"jpeg_artefacts": 0.8})):
        rng = np.random.default_rng(0)
        state = rng.bit_generator.state
        out, geometry = apply(image, plan, rng, field=field)
        assert out is image and geometry.identity and geometry.field == field
        assert rng.bit_generator.state == state  # no draws: the writer's stream is unchanged


@pytest.mark.parametrize("name", PIXEL_ARTEFACTS)
def test_apply_is_deterministic_and_leaves_the_input_alone(
    photo: tuple[np.ndarray, tuple[float, float, float]], name: str
) -> None:
    image, _ = photo
    before = image.copy()
    a, ga = _run(photo, name, 0.6, seed=3)
    b, gb = _run(photo, name, 0.6, seed=3)
    assert np.array_equal(image, before)
    assert a.shape == image.shape and a.dtype == np.uint8 and a.flags.c_contiguous
    assert a.tobytes() == b.tobytes() and ga == gb
    assert not np.array_equal(a, image)
    if name != "overexposed":  # the only artefact without random parameters or noise
        c, _ = _run(photo, name, 0.6, seed=4)
        assert not np.array_equal(a, c)


def test_two_artefacts_together(photo: tuple[np.ndarray, tuple[float, float, float]]) -> None:
    image, field = photo
    plan = ArtefactPlan({name: 0.7 for name in PIXEL_ARTEFACTS if name != "overexposed"})
    a, ga = apply(image, plan, np.random.default_rng(9), field=field)
    b, gb = apply(image, plan, np.random.default_rng(9), field=field)
    assert a.tobytes() == b.tobytes() and ga == gb and ga.cuts and (ga.dx, ga.dy) != (0, 0)


def test_bad_input_is_rejected(photo: tuple[np.ndarray, tuple[float, float, float]]) -> None:
    image, field = photo
    plan = ArtefactPlan({"blur": 0.6})
    rng = np.random.default_rng(0)
    for bad in (image.astype(np.float32), image[..., 0], image[..., :2], image[:8, :8]):
        with pytest.raises(QualityError, match="image must be"):
            apply(bad, plan, rng, field=field)
    for bad_field in ((128.0, 128.0, 0.0), (math.nan, 128.0, 100.0)):
        with pytest.raises(QualityError, match="field"):
            apply(image, plan, rng, field=bad_field)


# --- apply: each artefact moves its proxy the intended way ------------------------------------------------------


def test_blur_lowers_sharpness_monotonically(photo: tuple[np.ndarray, tuple[float, float, float]]) -> None:
    image, field = photo
    inside = _field_pixels(image.shape, field, 0.8)
    sharp = _detail(image, inside)
    details = [_detail(_run(photo, "blur", s)[0], inside) for s in (0.3, 0.5, 0.9)]
    assert sharp > details[0] > details[1] > details[2]
    assert details[1] < 0.5 * sharp and details[2] < 0.1 * sharp  # at threshold, half the detail is gone


def test_blur_keeps_the_field_edge_and_brightness(photo: tuple[np.ndarray, tuple[float, float, float]]) -> None:
    image, field = photo
    out, _ = _run(photo, "blur", 0.9)
    inside = _field_pixels(image.shape, field, 0.97)
    # Normalised convolution: no dark halo creeps in from the surround, so the field's mean barely moves.
    assert abs(out[inside].mean() - image[inside].mean()) < 2.0
    outside = ~_field_pixels(image.shape, field, 1.02)
    assert np.abs(out[outside].astype(int) - image[outside]).max() <= 6  # surround: only read noise


def test_underexposure_scales_brightness(photo: tuple[np.ndarray, tuple[float, float, float]]) -> None:
    image, field = photo
    inside = _field_pixels(image.shape, field)
    for s in (0.25, 0.5):
        out, _ = _run(photo, "underexposed", s)
        ratio = out[inside].astype(np.float64).mean() / image[inside].mean()
        assert ratio == pytest.approx(2.0 ** (-4 * s), rel=0.1)


def test_overexposure_clips_green_on_a_quarter_of_the_field_at_threshold(
    photo: tuple[np.ndarray, tuple[float, float, float]],
) -> None:
    image, field = photo
    inside = _field_pixels(image.shape, field, 1.0)
    assert (image[..., 1][inside] == 255).mean() < 0.01
    clipped = [(_run(photo, "overexposed", s)[0][..., 1][inside] == 255).mean() for s in (0.25, 0.5, 0.75)]
    assert clipped[0] < 0.2 and clipped[1] == pytest.approx(0.25, abs=0.04) and clipped[2] > 0.45


@pytest.mark.parametrize("seed", range(4))  # covers both the one-dark-side and the dark-periphery forms
def test_uneven_illumination_darkens_the_stated_fraction(
    photo: tuple[np.ndarray, tuple[float, float, float]], seed: int
) -> None:
    image, field = photo
    inside = _field_pixels(image.shape, field)
    for s in (0.5, 0.8):
        out, _ = _run(photo, "uneven_illumination", s, seed)
        ratio = _brightness(out)[inside] / np.maximum(_brightness(image)[inside], 1.0)
        assert (ratio < 0.25).mean() == pytest.approx(s / 2, abs=0.05)


@pytest.mark.parametrize("seed", range(4))
def test_lid_shadow_darkens_a_band_at_the_top_or_bottom(
    photo: tuple[np.ndarray, tuple[float, float, float]], seed: int
) -> None:
    image, field = photo
    cx, cy, r = field
    inside = _field_pixels(image.shape, field)
    out, geometry = _run(photo, "lid_shadow", 0.6, seed)
    assert geometry.identity
    ratio = _brightness(out) / np.maximum(_brightness(image), 1.0)
    dark = inside & (ratio < 0.6)
    assert 0.27 <= dark[inside].mean() <= 0.42  # the band (0.3 of the field) and some lashes
    ys = np.nonzero(dark)[0]
    assert abs(ys.mean() - cy) > 0.45 * r  # the shadow hangs from the top or the bottom
    top_band = inside & (np.arange(image.shape[0])[:, None] < cy - 0.8 * r)
    bottom_band = inside & (np.arange(image.shape[0])[:, None] > cy + 0.8 * r)
    band = top_band if ys.mean() < cy else bottom_band
    assert ratio[band].mean() < 0.3


def test_haze_lowers_contrast_and_lifts_the_dark(photo: tuple[np.ndarray, tuple[float, float, float]]) -> None:
    image, field = photo
    inside = _field_pixels(image.shape, field, 0.8)
    green = image[..., 1][inside].astype(np.float64)
    for s, max_detail in ((0.3, 0.8), (0.6, 0.5)):
        out, geometry = _run(photo, "haze", s)
        assert geometry.identity
        assert _detail(out, inside) < max_detail * _detail(image, inside)
        hazy = out[..., 1][inside].astype(np.float64)
        assert hazy.std() / hazy.mean() < 0.8 * green.std() / green.mean()  # flatter, milkier
        assert hazy.mean() > green.mean()  # a bright veil, not a dark filter


@pytest.mark.parametrize("strength", [0.2, 0.5, 0.9])
def test_off_centre_translates_the_field(
    photo: tuple[np.ndarray, tuple[float, float, float]], strength: float
) -> None:
    image, field = photo
    h, w = image.shape[:2]
    out, g = _run(photo, "off_centre", strength, seed=int(strength * 10))
    dx, dy = g.dx, g.dy
    assert (dx, dy) != (0, 0) and g.field == (field[0] + dx, field[1] + dy, field[2])
    # The content moved exactly by (dx, dy) ...
    src = image[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
    dst = out[max(0, dy) : h - max(0, -dy), max(0, dx) : w - max(0, -dx)]
    assert np.array_equal(src, dst)
    # ... and the field centroid with it (measured on a canvas big enough to hold the whole field).
    pad = SIZE
    canvas_in = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    moved = np.zeros_like(canvas_in)
    moved[pad + dy : pad + dy + h, pad + dx : pad + dx + w] = canvas_in[pad : pad + h, pad : pad + w]
    before, after = estimate_field(canvas_in), estimate_field(moved)
    assert after[0] - before[0] == pytest.approx(dx, abs=0.5)
    assert after[1] - before[1] == pytest.approx(dy, abs=0.5)
    # The fraction of the field pushed out of the image is s / 2.
    cx, cy, r = g.field
    ys, xs = np.mgrid[-pad : h + pad, -pad : w + pad]
    disc = (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
    in_image = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
    lost_after = 1.0 - (disc & in_image).sum() / disc.sum()
    disc0 = (xs - field[0]) ** 2 + (ys - field[1]) ** 2 <= r * r
    lost_before = 1.0 - (disc0 & in_image).sum() / disc0.sum()
    assert lost_after - lost_before == pytest.approx(strength / 2, abs=0.03)


@pytest.mark.parametrize("seed", range(5))  # chords, crops and notches
def test_cut_field_masks_the_stated_fraction(photo: tuple[np.ndarray, tuple[float, float, float]], seed: int) -> None:
    image, field = photo
    inside = _field_pixels(image.shape, field, 1.0)
    out, g = _run(photo, "cut_field", 0.6, seed)
    assert g.cuts and (g.dx, g.dy) == (0, 0)
    dark = out.max(axis=2) < 12
    assert (dark[inside]).mean() == pytest.approx(0.3, abs=0.03)
    hidden = ~g.visible_mask & inside
    assert dark[hidden].mean() > 0.95  # the geometry's hidden region is what was masked
    assert hidden.sum() / inside.sum() == pytest.approx(0.3, abs=0.03)


# --- geometry ---------------------------------------------------------------------------------------------------


def test_geometry_maps_boxes_and_masks() -> None:
    ident = Geometry(width=100, height=80, field=(50.0, 40.0, 45.0))
    assert ident.map_box((1, 2, 3, 4)) == (1, 2, 3, 4)
    mask = np.zeros((80, 100), dtype=np.uint8)
    mask[10:20, 30:40] = 1
    assert ident.map_mask(mask) is mask

    moved = Geometry(width=100, height=80, field=(60.0, 35.0, 45.0), dx=10, dy=-5)
    assert moved.map_box((30, 10, 40, 20)) == (40, 5, 50, 15)
    assert moved.map_box((92, 10, 95, 20)) is None  # would reach x = 105 > width
    assert moved.map_box((30, 2, 40, 8)) is None  # would start at y = -3
    assert moved.map_box((0, 5, 90, 85)) == (10, 0, 100, 80)  # corners exactly on the border stay
    shifted = moved.map_mask(mask)
    assert shifted.dtype == mask.dtype and shifted.sum() == mask.sum() and shifted[5:15, 40:50].all()

    cut = Geometry(width=100, height=80, field=(50.0, 40.0, 45.0), cuts=(ChordCut(0.0, -1.0, -20.0),))
    assert cut.map_box((30, 30, 40, 40)) == (30, 30, 40, 40)
    assert cut.map_box((30, 15, 40, 25)) is None  # its top corners lie above y = 20, in the cut
    hidden = cut.map_mask(np.ones((80, 100), dtype=bool))
    assert not hidden[:20].any() and hidden[21:].all()

    notch = Geometry(width=100, height=80, field=(50.0, 40.0, 45.0), cuts=(NotchCut(100.0, 40.0, 20.0),))
    assert notch.map_box((82, 35, 86, 45)) is None  # corner (82, 35) is 18.7 px from the notch's centre
    assert notch.map_box((60, 35, 75, 45)) == (60, 35, 75, 45)
    with pytest.raises(QualityError, match="mask shape"):
        notch.map_mask(np.zeros((10, 10), dtype=np.uint8))


def test_lesions_survive_or_drop_consistently(photo: tuple[np.ndarray, tuple[float, float, float]]) -> None:
    """A lesion box kept by the geometry shows the same pixels in the output as in the input."""
    image, field = photo
    fundus = render_fundus(np.random.default_rng(11), grade=3, laterality="R", size=SIZE)
    plan = ArtefactPlan({"off_centre": 0.4})
    out, g = apply(fundus.image, plan, np.random.default_rng(1), field=estimate_field(fundus.image))
    kept = [g.map_box(les.box) for les in fundus.lesions]
    assert any(b is None for b in kept) and any(b is not None for b in kept)
    for les, box in zip(fundus.lesions, kept, strict=True):
        if box is not None:
            x0, y0, x1, y1 = les.box
            u0, v0, u1, v1 = box
            assert np.array_equal(out[v0:v1, u0:u1], fundus.image[y0:y1, x0:x1])


# --- other shapes ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(200, 320), (320, 200), (64, 64)])
@pytest.mark.parametrize("name", PIXEL_ARTEFACTS)
def test_non_square_and_small_images(shape: tuple[int, int], name: str) -> None:
    h, w = shape
    image = np.zeros((h, w, 3), dtype=np.uint8)
    r = 0.55 * min(h, w)  # the field overflows the short side, as with a cropped camera frame
    cv2.circle(image, (w // 2, h // 2), int(r), (190, 80, 30), -1, cv2.LINE_AA)
    cv2.line(image, (w // 4, h // 2), (3 * w // 4, h // 2 + 5), (120, 30, 20), 2, cv2.LINE_AA)
    field = (w / 2, h / 2, r)
    plan = ArtefactPlan({name: 0.7})
    a, ga = apply(image, plan, np.random.default_rng(0), field=field)
    b, gb = apply(image, plan, np.random.default_rng(0), field=field)
    assert a.shape == image.shape and a.dtype == np.uint8 and a.tobytes() == b.tobytes() and ga == gb
    assert (ga.width, ga.height) == (w, h) and not np.array_equal(a, image)
    assert ga.visible_mask.shape == (h, w)


def test_estimate_field() -> None:
    # A field drawn as the renderer draws it: coverage clip(r + 0.5 - distance, 0, 1), dim towards the rim.
    ys, xs = np.mgrid[0:300, 0:400]
    dist = np.hypot(xs - 210.3, ys - 139.6)
    level = np.clip(120.0 + 0.5 - dist, 0.0, 1.0) * (200.0 - 120.0 * (dist / 120.0) ** 2)
    image = np.repeat(level[..., None], 3, axis=2).astype(np.uint8)
    cx, cy, r = estimate_field(image)
    assert (cx, cy, r) == pytest.approx((210.3, 139.6, 120.0), abs=0.5)
    with pytest.raises(QualityError, match="cannot locate the field"):
        estimate_field(np.zeros((64, 64, 3), dtype=np.uint8))


def test_area_helpers_are_exact() -> None:
    for frac in (0.01, 0.25, 0.5, 0.9):
        assert q._segment_fraction(q._chord_offset(frac)) == pytest.approx(frac, abs=1e-9)
    xs, ys = q._UNIT_X, q._UNIT_Y
    assert (xs**2 + ys**2 <= 1.0).all() and abs(xs.mean()) < 1e-3 and abs(ys.mean()) < 1e-3
    assert (xs > 0.5).mean() == pytest.approx(q._segment_fraction(0.5), abs=2e-3)
