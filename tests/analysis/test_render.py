"""analysis.render: heatmap placement on the original grid, overlay, caption, PNG encoding."""

from __future__ import annotations

import base64

import cv2
import numpy as np

from models.preprocess import FundusTransform
from analysis.render import CAPTION, cam_to_heatmap, overlay, png_base64


def test_heatmap_lands_where_the_cam_peaks() -> None:
    t = FundusTransform(x0=100.0, y0=50.0, scale=2.0, size=64, original_width=300, original_height=200)
    cam = np.full((8, 8), -1.0, np.float32)
    cam[2, 5] = 3.0  # cell centre at model index (8*5 + 3.5, 8*2 + 3.5) → original (100 + 44*2 - .5, 50 + 20*2 - .5)
    heat = cam_to_heatmap(cam, t)
    assert heat.shape == (200, 300) and heat.dtype == np.float32
    assert 0.0 <= heat.min() and heat.max() <= 1.0
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    assert abs(x - 187.5) <= 2 and abs(y - 89.5) <= 2
    assert heat[:, :90].max() < 0.05  # outside the crop: nothing


def test_flat_or_negative_cam_gives_an_empty_heatmap_and_corners_stay_empty() -> None:
    t = FundusTransform(x0=0.0, y0=0.0, scale=1.0, size=32, original_width=32, original_height=32)
    assert cam_to_heatmap(-np.ones((4, 4), np.float32), t).max() == 0.0
    assert cam_to_heatmap(np.full((4, 4), 5.0, np.float32), t).max() == 0.0
    cam = np.zeros((4, 4), np.float32)
    cam[0, 0] = 1.0  # evidence in the crop's corner, outside the fundus field
    heat = cam_to_heatmap(cam, t)
    assert heat[0, 0] == 0.0 and heat[16, 16] < heat.max()


def test_overlay_blends_and_burns_in_caption() -> None:
    rgb = np.full((400, 600, 3), 128, np.uint8)
    heat = np.zeros((400, 600), np.uint8)
    heat[100:200, 100:200] = 255
    out = overlay(rgb, heat)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert not np.array_equal(out[150, 150], rgb[150, 150])  # coloured where the heat is
    assert np.array_equal(out[50, 500], rgb[50, 500])  # untouched where it is not
    band = out[-12:, :]
    assert band.max() == 255 and np.median(band) < 60  # white text on a dark band
    assert "not for diagnosis" in CAPTION


def test_png_base64_round_trip() -> None:
    img = (np.random.default_rng(0).random((33, 47, 3)) * 255).astype(np.uint8)
    back = cv2.imdecode(np.frombuffer(base64.b64decode(png_base64(img)), np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(back[:, :, ::-1], img)
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    back = cv2.imdecode(np.frombuffer(base64.b64decode(png_base64(grey)), np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(back, grey)


def test_lesion_boxes_and_legend_are_drawn() -> None:
    from analysis.render import LESION_STYLE, draw_lesions

    img = np.zeros((400, 600, 3), np.uint8)
    draw_lesions(img, [("haemorrhage", 0.9, (200.0, 200.0, 300.0, 260.0)),
                       ("microaneurysm", 0.5, (400.0, 100.0, 408.0, 108.0))], scale=2.0)
    he, ma = LESION_STYLE["haemorrhage"][0], LESION_STYLE["microaneurysm"][0]
    # Boxes land at original / scale (the edge pixel just outside the lesion).
    assert tuple(img[115, 99]) == he and tuple(img[99, 125]) == he and tuple(img[130, 140]) == he
    assert (img[49:56, 199] == ma).all(axis=1).any()
    # The legend (top-left) holds one swatch per type present, in order.
    assert (img[8:40, 8:20] == he).all(axis=2).any() and (img[8:40, 8:20] == ma).all(axis=2).any()
    assert not (img[150:180, 150:180] != 0).any()  # nothing drawn where there is no lesion


def test_render_factor_caps_the_long_side() -> None:
    from analysis.render import RENDER_MAX_SIDE, render_factor

    assert RENDER_MAX_SIDE == 1024
    assert render_factor(648, 972) == 1 and render_factor(1024, 1024) == 1
    assert render_factor(1411, 1411) == 2 and render_factor(1536, 2048) == 2 and render_factor(2049, 100) == 3
    assert all(-(-max(h, w) // render_factor(h, w)) <= 1024 for h, w in [(1025, 3), (4000, 3000), (5000, 5000)])


def test_reduce_by_is_the_exact_block_mean() -> None:
    from analysis.render import reduce_by

    img = (np.random.default_rng(1).random((7, 10, 3)) * 255).astype(np.uint8)
    assert reduce_by(img, 1) is img
    small = reduce_by(img, 3)
    assert small.shape == (3, 4, 3)  # ceil(7 / 3), ceil(10 / 3)
    np.testing.assert_allclose(small[1, 2], img[3:6, 6:9].reshape(-1, 3).mean(axis=0), atol=0.5)
    # The partial corner block: its own pixels, edge replicated (so their mean).
    np.testing.assert_allclose(small[2, 3], img[6:7, 9:10].reshape(-1, 3).mean(axis=0), atol=0.5)


def test_coarser_transform_draws_the_same_heatmap_on_the_coarse_grid() -> None:
    from analysis.render import coarser, reduce_by

    t = FundusTransform(x0=-20.0, y0=35.0, scale=3.5, size=64, original_width=301, original_height=250)
    cam = np.random.default_rng(2).random((8, 8)).astype(np.float32)
    fine = cam_to_heatmap(cam, t)
    coarse = cam_to_heatmap(cam, coarser(t, 2))
    assert coarse.shape == (125, 151)
    # Point-sampled at the coarse pixel centres vs block means of the fine map: equal up to the smoothing.
    assert np.abs(coarse - reduce_by(fine, 2)).mean() < 0.01
    assert coarser(t, 1) is t


def test_caption_follows_the_cards_intended_use() -> None:
    from models.card import RESEARCH_WARNING, SYNTHETIC_WARNING, intended_use_for
    from analysis.render import CAPTION_REAL, CAPTION_RESEARCH, caption_for_use

    real = intended_use_for(False, data="EyePACS photographs", terms="non-commercial research use only")
    assert caption_for_use(real) == CAPTION_RESEARCH and "not for clinical use" in CAPTION_RESEARCH
    assert caption_for_use(SYNTHETIC_WARNING) == CAPTION
    assert caption_for_use(RESEARCH_WARNING) == CAPTION_REAL  # a card that states neither
