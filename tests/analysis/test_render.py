"""analysis.render: heatmap placement on the original grid, overlay, caption, PNG encoding."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from models.preprocess import FundusTransform
from analysis import render
from analysis.render import CAPTION, cam_to_heatmap, overlay, png_base64, png_bytes, saliency_caption


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


def _deflaters() -> list[object]:
    """Every deflate png_bytes may use here: the default (ISA-L when installed) and the standard library's."""
    return [pytest.param(None, id="default"), pytest.param(render.deflate_zlib_stdlib, id="zlib")]


def _overlay_like(h: int = 300, w: int = 420) -> tuple[np.ndarray, np.ndarray]:
    """A photograph-like RGB image with a blended heatmap and a caption, and its grey heatmap."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:h, :w]
    disc = ((xx - w / 2) ** 2 + (yy - h / 2) ** 2 < (0.45 * h) ** 2)
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[disc] = (180, 80, 40)
    rgb = np.clip(rgb.astype(int) + rng.integers(-6, 7, rgb.shape) * disc[:, :, None], 0, 255).astype(np.uint8)
    heat = (255 * np.exp(-((xx - 250) ** 2 + (yy - 120) ** 2) / 2000.0) * disc).astype(np.uint8)
    return overlay(rgb, heat), heat


@pytest.mark.parametrize("deflate", _deflaters())
def test_png_bytes_is_a_valid_lossless_png_of_the_same_pixels(deflate: object) -> None:
    pic, heat = _overlay_like()
    rng = np.random.default_rng(2)
    for img in (pic, heat, rng.integers(0, 256, (1, 1, 3), dtype=np.uint8), rng.integers(0, 256, (7, 1), dtype=np.uint8),
                np.ascontiguousarray(pic[::2, 1::3]), np.zeros((40, 30), np.uint8), np.full((5, 9, 3), 255, np.uint8)):
        data = png_bytes(img, deflate=deflate)  # type: ignore[arg-type]
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(io.BytesIO(data)) as im:
            im.verify()  # chunk CRCs and structure
        with Image.open(io.BytesIO(data)) as im:
            assert im.mode == ("RGB" if img.ndim == 3 else "L") and im.size == (img.shape[1], img.shape[0])
            np.testing.assert_array_equal(np.asarray(im), img)
        back = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(back if img.ndim == 2 else back[:, :, ::-1], img)
        # IHDR: the size, 8 bits, truecolour (2) or greyscale (0), deflate, adaptive filtering, no interlace.
        assert struct.unpack(">IIBBBBB", data[16:29]) == (img.shape[1], img.shape[0], 8, 2 if img.ndim == 3 else 0,
                                                          0, 0, 0)


@pytest.mark.parametrize("deflate", _deflaters())
def test_png_bytes_costs_little_more_than_the_libpng_encoding_it_replaced(deflate: object) -> None:
    """About as many bytes as OpenCV's libpng at compression 1, Up filter, RLE (the encoding before)."""
    before = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP,
              cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
    pic, heat = _overlay_like()
    for img, libpng_input in ((pic, cv2.cvtColor(pic, cv2.COLOR_RGB2BGR)), (heat, heat)):
        ours = len(png_bytes(img, deflate=deflate))  # type: ignore[arg-type]
        theirs = len(cv2.imencode(".png", libpng_input, before)[1])
        assert ours <= 1.15 * theirs + 200


def test_png_bytes_refuses_what_it_cannot_write() -> None:
    for bad in (np.zeros((4, 4), np.float32), np.zeros((4, 4, 4), np.uint8), np.zeros((0, 4), np.uint8),
                np.zeros((4,), np.uint8)):
        with pytest.raises(ValueError, match="uint8 image"):
            png_bytes(bad)


def test_the_default_deflate_is_isal_when_present_and_zlib_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = np.random.default_rng(5).integers(0, 4, 5_000, dtype=np.uint8).tobytes()
    levels: list[int] = []

    class FakeIsal:
        @staticmethod
        def compress(data: bytes, level: int) -> bytes:
            levels.append(level)
            return zlib.compress(bytes(data), 9)

    monkeypatch.setattr(render, "_isal_zlib", FakeIsal)
    assert render.deflate_zlib(raw) == zlib.compress(raw, 9) and levels == [render._ISAL_LEVEL]
    monkeypatch.setattr(render, "_isal_zlib", None)
    assert render.deflate_zlib(raw) == render.deflate_zlib_stdlib(raw)
    assert zlib.decompress(render.deflate_zlib_stdlib(raw)) == raw


def test_the_default_deflate_is_isal_when_installed() -> None:
    isal_zlib = pytest.importorskip("isal.isal_zlib", reason="isal (a serving dependency) is not installed here")
    raw = np.random.default_rng(4).integers(0, 4, 10_000, dtype=np.uint8).tobytes()
    assert render.deflate_zlib(raw) == isal_zlib.compress(raw, render._ISAL_LEVEL)
    assert zlib.decompress(render.deflate_zlib(raw)) == raw


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


def test_a_blank_heatmaps_caption_says_there_was_no_evidence() -> None:
    assert saliency_caption(CAPTION, 2, True) == CAPTION
    assert saliency_caption(CAPTION, 2, False) == f"{CAPTION} - no evidence found for grade 2"
    # Still legible on a narrow overlay: the band shrinks the longer text to the image's width.
    narrow = overlay(np.full((200, 240, 3), 120, np.uint8), np.zeros((200, 240), np.uint8),
                     caption=saliency_caption(CAPTION, 2, False))
    assert narrow.shape == (200, 240, 3) and (narrow[-8:] != 120).any()
