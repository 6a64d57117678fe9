"""COCO RLE of cropped lesion masks (datasets/synthetic/coco.py) against pycocotools' own encoder."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from datasets.synthetic.coco import annotation, categories, encode_mask
from datasets.synthetic.lesions import LESION_TYPES, LesionMask


def _random_mask(rng: np.random.Generator) -> tuple[LesionMask, int, int]:
    height, width = (int(v) for v in rng.integers(4, 40, size=2))
    h, w = int(rng.integers(1, height + 1)), int(rng.integers(1, width + 1))
    x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    bits = rng.random((h, w)) < 0.4
    bits[0, rng.integers(0, w)] = bits[-1, rng.integers(0, w)] = True  # tight: every border row/column set
    bits[rng.integers(0, h), 0] = bits[rng.integers(0, h), -1] = True
    return LesionMask(x0, y0, bits), height, width


def test_rle_equals_pycocotools_encoder_and_bbox_is_tight() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        m, height, width = _random_mask(rng)
        full = np.zeros((height, width), dtype=np.uint8, order="F")
        h, w = m.bits.shape
        full[m.y0 : m.y0 + h, m.x0 : m.x0 + w] = m.bits
        assert encode_mask(m, height, width)["counts"] == mask_utils.encode(full)["counts"].decode("ascii")
        ann = annotation(7, 3, "hard_exudate", m, height, width, subtype="plaque")
        coded = {"size": [height, width], "counts": ann["segmentation"]["counts"].encode("ascii")}
        assert ann["bbox"] == [m.x0, m.y0, w, h] == mask_utils.toBbox(coded).tolist()
        assert ann["area"] == int(m.bits.sum()) == int(mask_utils.area(coded))
        assert ann["category_id"] == 3 and ann["attributes"] == {"subtype": "plaque"}


def test_mask_touching_the_last_pixel() -> None:
    m = LesionMask(4, 6, np.ones((2, 1), dtype=bool))  # the bottom-right corner of a 5x8 image
    full = np.zeros((8, 5), dtype=np.uint8, order="F")
    full[6:, 4] = 1
    assert encode_mask(m, 8, 5)["counts"] == mask_utils.encode(full)["counts"].decode("ascii")


def test_categories_and_errors() -> None:
    assert [c["name"] for c in categories()] == list(LESION_TYPES)
    assert [c["id"] for c in categories()] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="not inside"):
        encode_mask(LesionMask(3, 0, np.ones((2, 2), dtype=bool)), 4, 4)
    with pytest.raises(ValueError, match="empty"):
        encode_mask(LesionMask(0, 0, np.zeros((2, 2), dtype=bool)), 4, 4)
    with pytest.raises(ValueError):
        annotation(1, 1, "drusen", LesionMask(0, 0, np.ones((1, 1), dtype=bool)), 4, 4)
