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


def test_transform_round_trip_maps_model_pixels_to_original() -> None:
    img = _fundus(1000, 1400, 700, 480, 450)
    img[480 - 5:480 + 5, 900 - 5:900 + 5] = (255, 255, 255)  # a white marker inside the field
    out = pp.preprocess(img, 256)
    ys, xs = np.nonzero(out.crop.min(axis=2) > 200)
    mx, my = xs.mean(), ys.mean()
    (ox, oy), = out.transform.to_original(np.array([[mx, my]]))
    assert abs(ox - 900) < 6 and abs(oy - 480) < 6
    # A map at model resolution warps back onto the original grid at the same place.
    heat = np.zeros((256, 256), np.float32)
    heat[int(my) - 2:int(my) + 3, int(mx) - 2:int(mx) + 3] = 1
    back = out.transform.map_to_original(heat)
    assert back.shape == (1000, 1400)
    bys, bxs = np.nonzero(back > 0.5)
    assert abs(bxs.mean() - 900) < 6 and abs(bys.mean() - 480) < 6
    box = out.transform.box_to_original((0, 0, 256, 256))
    assert box[0] == pytest.approx(250, abs=6) and box[2] == pytest.approx(1150, abs=6)


def test_preprocess_rejects_wrong_input() -> None:
    with pytest.raises(ValueError, match="uint8 RGB"):
        pp.preprocess(np.zeros((10, 10), np.uint8), 32)
    with pytest.raises(ValueError):
        pp.preprocess(np.zeros((10, 10, 3), np.float32), 32)
