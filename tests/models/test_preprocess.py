"""models.preprocess: field detection, crop/resize, normalisation and the inverse transform."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from models import preprocess as pp


def _fundus(h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    cv2.circle(img, (round(cx), round(cy)), round(r), (200, 90, 40), -1, cv2.LINE_AA)
    return img


@pytest.mark.parametrize(("h", "w", "cx", "cy", "r"), [(600, 800, 400, 300, 280), (500, 500, 230, 260, 200),
                                                        (1944, 2592, 1300, 972, 900)])
def test_locate_field_finds_the_circle(h: int, w: int, cx: float, cy: float, r: float) -> None:
    fx, fy, fr = pp.locate_field(_fundus(h, w, cx, cy, r))
    tol = max(3.0, 0.02 * r)
    assert abs(fx - cx) < tol and abs(fy - cy) < tol and abs(fr - r) < tol


def test_field_cut_by_border_keeps_full_radius() -> None:
    # Many cameras cut the top and bottom of the circle: the radius comes from the wider extent.
    img = _fundus(400, 700, 350, 200, 300)
    _, cy, r = pp.locate_field(img)
    assert abs(r - 300) < 8 and abs(cy - 200) < 8


def test_no_dark_surround_uses_whole_image() -> None:
    img = np.full((300, 400, 3), 120, np.uint8)
    assert pp.locate_field(img) == (200.0, 150.0, 200.0)
    assert pp.locate_field(np.zeros((50, 60, 3), np.uint8)) == (30.0, 25.0, 30.0)


def test_preprocess_shapes_and_normalisation() -> None:
    out = pp.preprocess(_fundus(600, 800, 400, 300, 280), 128)
    assert out.tensor.shape == (3, 128, 128) and out.tensor.dtype == np.float32
    assert out.crop.shape == (128, 128, 3) and out.crop.dtype == np.uint8
    # The field fills the crop: its centre is the disc colour, its corner the black surround.
    assert tuple(out.crop[64, 64]) == pytest.approx((200, 90, 40), abs=2)
    assert out.crop[2, 2].max() < 10
    np.testing.assert_allclose(out.tensor[:, 64, 64], (np.array([200, 90, 40]) / 255 - pp.MEAN) / pp.STD, atol=0.02)


@pytest.mark.parametrize(("h", "w", "size", "marker"), [(1000, 1400, 256, (900, 480)), (1411, 1411, 224, (1000, 300)),
                                                      (3000, 4000, 320, (2600, 1700)), (300, 300, 512, (200, 120))])
def test_transform_round_trip_is_exact(h: int, w: int, size: int, marker: tuple[int, int]) -> None:
    img = _fundus(h, w, w / 2, h / 2, 0.45 * min(h, w) if h != w else 0.48 * w)
    mx0, my0 = marker
    k = max(4, w // 60)  # a white square marker inside the field, centre (mx0 + k/2 - 0.5, ...)
    img[my0:my0 + k, mx0:mx0 + k] = 255
    truth = np.array([mx0 + k / 2 - 0.5, my0 + k / 2 - 0.5])
    out = pp.preprocess(img, size)
    t = out.transform
    tol = max(0.5, 0.1 * t.scale)  # a tenth of a model pixel
    # Model → original: the marker's centroid in the crop maps back onto the marker. The blue channel is
    # 40 on the field and 255 on the marker, so (blue - 40) is linear in the marker's coverage of a pixel.
    wgt = np.clip(out.crop[:, :, 2].astype(np.float64) - 40, 0, None)
    ys, xs = np.mgrid[:size, :size]
    centroid = np.array([(xs * wgt).sum(), (ys * wgt).sum()]) / wgt.sum()
    np.testing.assert_allclose(t.to_original(centroid), truth, atol=tol)
    # A map at model resolution warps back onto the original grid at the same place.
    heat = (wgt / wgt.max()).astype(np.float32)
    back = t.map_to_original(heat)
    assert back.shape == (h, w)
    yy, xx = np.mgrid[:h, :w]
    np.testing.assert_allclose([(xx * back).sum() / back.sum(), (yy * back).sum() / back.sum()], truth, atol=tol)
    # Box edges: the whole crop is the square around the field.
    x0, y0, x1, y1 = t.box_to_original((0, 0, size, size))
    assert x0 == max(0.0, t.x0) and x1 == min(float(w), t.x0 + t.scale * size)


def test_preprocess_rejects_wrong_input() -> None:
    with pytest.raises(ValueError, match="uint8 RGB"):
        pp.preprocess(np.zeros((10, 10), np.uint8), 32)
    with pytest.raises(ValueError):
        pp.preprocess(np.zeros((10, 10, 3), np.float32), 32)


def _lit_fundus(gain: float, gradient: float, cast: tuple[float, float, float], h: int = 600, w: int = 700,
                r: float = 270) -> np.ndarray:
    """A field with a vessel-like dark line and a bright dot, lit by ``gain`` with a left-to-right
    illumination ``gradient`` and a colour ``cast``: the same retina photographed differently."""
    rng = np.random.default_rng(0)
    base = np.full((h, w, 3), 0.55, np.float32) + rng.normal(0, 0.01, (h, w, 3)).astype(np.float32)
    cv2.line(base, (200, 150), (500, 450), (0.25, 0.25, 0.25), 6)
    cv2.circle(base, (420, 220), 8, (0.9, 0.9, 0.9), -1)
    light = gain * (1 + gradient * (np.linspace(-1, 1, w, dtype=np.float32)[None, :]))
    img = base * light[:, :, None] * np.array(cast, np.float32)
    mask = np.zeros((h, w), np.uint8)
    cv2.circle(mask, (w // 2, h // 2), round(r), 1, -1)
    return (np.clip(img, 0, 1) * 255 * mask[:, :, None]).astype(np.uint8)


def test_contrast_recipe_makes_differently_lit_photographs_alike() -> None:
    a = pp.preprocess(_lit_fundus(1.0, 0.0, (1.0, 1.0, 1.0)), 128, recipe=pp.CONTRAST)
    b = pp.preprocess(_lit_fundus(0.45, 0.5, (1.3, 0.8, 0.5)), 128, recipe=pp.CONTRAST)
    inner = cv2.erode(pp.field_mask(a.crop), np.ones((9, 9), np.uint8)).astype(bool)
    # As photographed the two differ by tens of grey levels; after the recipe by a few.
    raw_gap = np.abs(a.crop.astype(int) - b.crop.astype(int))[inner].mean()
    norm_gap = np.abs(a.image.astype(int) - b.image.astype(int))[inner].mean()
    assert raw_gap > 40 and norm_gap < 0.25 * raw_gap
    # The vessel stays dark and the dot bright, the surround is mid-grey, the mean/std are (0.5, 0.5).
    assert a.image[64, 64].mean() < 110 and a.image[2, 2].tolist() == [128, 128, 128]
    np.testing.assert_allclose(a.tensor, (a.image.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5, atol=1e-5)
    assert a.crop.shape == a.image.shape == (128, 128, 3)


def test_field_mask_keeps_dark_lesions_inside_the_field() -> None:
    img = _fundus(400, 400, 200, 200, 180)
    cv2.circle(img, (200, 200), 30, (0, 0, 0), -1)  # a large dark haemorrhage in the middle of the field
    crop, _ = pp.crop_field(img, 128)
    mask = pp.field_mask(crop)
    assert mask[64, 64] == 1 and mask[1, 1] == 0


def test_recipes_are_looked_up_by_name_and_disc_crop_stays_the_default() -> None:
    assert pp.recipe_for("fovea.fundus-contrast") is pp.CONTRAST
    assert pp.DISC_CROP.name == pp.NAME and pp.DISC_CROP.mean == tuple(pp.MEAN.tolist())
    with pytest.raises(KeyError, match="fovea.fundus-disc-crop"):
        pp.recipe_for("nope")
    img = _fundus(300, 300, 150, 150, 140)
    np.testing.assert_array_equal(pp.preprocess(img, 64).image, pp.preprocess(img, 64).crop)


def _textured_fundus(h: int, w: int, cx: float, cy: float, r: float, seed: int = 0) -> np.ndarray:
    """A field with vessel-like lines and fine noise (detail that a second resampling would blur)."""
    rng = np.random.default_rng(seed)
    img = _fundus(h, w, cx, cy, r)
    for _ in range(12):
        p0, p1 = rng.integers(0, (w, h), 2), rng.integers(0, (w, h), 2)
        cv2.line(img, tuple(int(v) for v in p0), tuple(int(v) for v in p1), (90, 30, 20), int(rng.integers(1, 6)))
    noise = rng.integers(-12, 13, img.shape)
    return np.clip(img.astype(int) + noise * (img > 0), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(("h", "w", "field"), [
    (1296, 1944, (975.8, 648.0, 618.9)),  # a 10 MP camera photograph decoded at 1/2: the square fits
    (700, 1000, (500.0, 350.0, 400.0)),  # the field cut at top and bottom: the square is padded
    (584, 565, (282.0, 292.0, 271.0)),  # a DRIVE-sized photograph: the 768 crop is enlarged
])
def test_crop_pyramid_has_crop_fields_geometry_and_its_crops_within_one_grey_level(
        h: int, w: int, field: tuple[float, float, float]) -> None:
    img = _textured_fundus(h, w, *field)
    sizes = (512, 768, 256, 224, 128)
    pyramid = pp.crop_pyramid(img, sizes, field=field)
    assert sorted(pyramid) == sorted(sizes)
    for size, (crop, transform) in pyramid.items():
        direct, direct_transform = pp.crop_field(img, size, field=field)
        assert transform == direct_transform  # the geometry, exactly: every field of the transform
        assert crop.shape == direct.shape and crop.dtype == direct.dtype
        assert np.abs(crop.astype(int) - direct).max() <= 1  # derived by an integer ratio, or direct
    # A size with no integer multiple among the resized crops (224, and 768 / 512 = 1.5) is crop_field's, bit for bit.
    for size in (768, 512, 224):
        np.testing.assert_array_equal(pyramid[size][0], pp.crop_field(img, size, field=field)[0])
    # The field is located once when not given, the same as crop_field's.
    located = pp.crop_pyramid(img, sizes)
    assert all(located[s][1] == pp.crop_field(img, s)[1] for s in sizes)


def test_crop_pyramid_reads_the_square_only_for_sizes_it_cannot_derive_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    img = _textured_fundus(1296, 1944, 975.8, 648.0, 618.9)
    field = (975.8, 648.0, 618.9)
    from_square: list[int] = []
    real = pp._resize
    monkeypatch.setattr(pp, "_resize", lambda square, size: (from_square.append(size), real(square, size))[1])
    pyramid = pp.crop_pyramid(img, (512, 256, 224, 768), field=field)
    assert from_square == [768, 512, 224]  # 256 is the exact 3x3 block mean of the 768 crop
    assert np.abs(pyramid[256][0].astype(int) - pp.crop_field(img, 256, field=field)[0]).max() <= 1
    from_square.clear()
    exact = pp.crop_pyramid(img, (512, 256, 224, 768), field=field, exact={256})
    assert from_square == [768, 512, 256, 224]
    np.testing.assert_array_equal(exact[256][0], pp.crop_field(img, 256, field=field)[0])
    with pytest.raises(ValueError, match="positive"):
        pp.crop_pyramid(img, (0, 64), field=field)
    with pytest.raises(ValueError, match="uint8 RGB"):
        pp.crop_pyramid(img.astype(np.float32), (64,), field=field)


def test_a_derived_crop_differs_from_a_direct_one_by_rounding_only_on_a_real_photograph(retina_path) -> None:
    """On scikit-image's real photograph: the derived crop (256 from 768) is within 1 grey level of crop_field's,
    on average under 0.1 (docs/performance.md has the figures on more photographs and what the models make of
    them)."""
    rgb = cv2.cvtColor(cv2.imread(str(retina_path)), cv2.COLOR_BGR2RGB)
    pyramid = pp.crop_pyramid(rgb, (768, 256))
    diff = np.abs(pyramid[256][0].astype(int) - pp.crop_field(rgb, 256)[0])
    assert diff.max() <= 1 and diff.mean() < 0.1


def _normalize_per_pixel(crop: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """What normalize computed before its lookup table: the float32 arithmetic on every pixel."""
    x = crop.astype(np.float32) * np.float32(1.0 / 255.0)
    x -= mean
    x /= std
    return np.ascontiguousarray(x.transpose(2, 0, 1))


@pytest.mark.parametrize(("mean", "std"), [
    (pp.MEAN, pp.STD), (np.float32(0.5), np.float32(0.5)), (np.array([0.5, 0.5, 0.5]), np.array([0.5, 0.5, 0.5])),
    (np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])),  # float64: computed in float64, as before
])
def test_normalize_is_bit_identical_to_the_per_pixel_arithmetic(mean: np.ndarray, std: np.ndarray) -> None:
    rng = np.random.default_rng(3)
    crop = rng.integers(0, 256, (97, 61, 3), dtype=np.uint8)
    crop[0, :3] = [[0, 0, 0], [255, 255, 255], [1, 128, 254]]
    for c in (crop, crop[5:80, 7:50]):  # contiguous and a view
        out = pp.normalize(c, mean, std)
        assert out.dtype == np.float32 and out.shape == (3, *c.shape[:2]) and out.flags.c_contiguous
        np.testing.assert_array_equal(out, _normalize_per_pixel(c, mean, std))
    as_float = crop.astype(np.float32)  # not uint8: computed per pixel, as before
    np.testing.assert_array_equal(pp.normalize(as_float, mean, std), _normalize_per_pixel(as_float, mean, std))


def test_from_crop_is_preprocess_after_the_crop() -> None:
    img = _textured_fundus(600, 800, 400, 300, 280)
    for recipe in (pp.DISC_CROP, pp.CONTRAST):
        a = pp.preprocess(img, 96, recipe=recipe)
        b = pp.from_crop(*pp.crop_field(img, 96), recipe=recipe)
        np.testing.assert_array_equal(a.tensor, b.tensor)
        np.testing.assert_array_equal(a.image, b.image)
        assert a.transform == b.transform


def test_box_to_original_clips_as_np_clip_did() -> None:
    t = pp.FundusTransform(x0=-20.0, y0=10.0, scale=1.7, size=64, original_width=90, original_height=70)
    for v in (-30.0, -0.0, 0.0, 3.25, 11.76, 63.9, 64.0, 1e9, float("inf"), -float("inf")):
        box = (v, v, v + 5.0, v + 5.0)
        expected = (float(np.clip(t.x0 + box[0] * t.scale, 0, 90)), float(np.clip(t.y0 + box[1] * t.scale, 0, 70)),
                    float(np.clip(t.x0 + box[2] * t.scale, 0, 90)), float(np.clip(t.y0 + box[3] * t.scale, 0, 70)))
        got = t.box_to_original(box)
        assert [repr(g) for g in got] == [repr(e) for e in expected] and all(type(g) is float for g in got)
