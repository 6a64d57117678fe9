"""Lesion name aliases and mask → box conversion (8-connectivity, exclusive x1/y1)."""

from __future__ import annotations

import numpy as np
import pytest

from datasets.readers.lesions import LESION_ALIASES, NON_LESIONS, canonical_lesion, mask_boxes
from datasets.synthetic.fundus import LESION_TYPES


@pytest.mark.parametrize(("name", "kind"), [
    ("MA", "microaneurysm"), ("Microaneurysms", "microaneurysm"), ("ma", "microaneurysm"),
    ("hemorrhage", "haemorrhage"), ("Haemorrhages", "haemorrhage"), ("HE", "haemorrhage"),
    ("EX", "hard_exudate"), ("Hard Exudates", "hard_exudate"), ("hard_exudate", "hard_exudate"),
    ("SE", "cotton_wool_spot"), ("soft exudates", "cotton_wool_spot"), ("Cotton-Wool  Spots", "cotton_wool_spot"),
    ("cotton_wool_spot", "cotton_wool_spot"), ("optic disc", None), ("drusen", None),
])
def test_aliases(name: str, kind: str | None) -> None:
    assert canonical_lesion(name) == kind


def test_alias_table_covers_exactly_the_canonical_types() -> None:
    assert set(LESION_ALIASES.values()) == set(LESION_TYPES)
    assert all(canonical_lesion(t) == t for t in LESION_TYPES)
    assert not any(canonical_lesion(n) for n in NON_LESIONS)


def test_mask_boxes_eight_connected_exact() -> None:
    mask = np.zeros((20, 30), np.uint8)
    mask[2:5, 3:7] = 255          # a 4x3 block: (3, 2, 7, 5)
    mask[10, 10] = mask[11, 11] = 255  # diagonal neighbours: one component under 8-connectivity
    mask[15, 29] = 1               # a single pixel on the right edge
    assert mask_boxes(mask) == [(3.0, 2.0, 7.0, 5.0), (10.0, 10.0, 12.0, 12.0), (29.0, 15.0, 30.0, 16.0)]


def test_mask_boxes_colour_and_empty() -> None:
    mask = np.zeros((8, 8, 3), np.uint8)
    assert mask_boxes(mask) == []
    mask[1:3, 4:6, 2] = 255  # only the red channel (BGR) set, as in colour-coded masks
    assert mask_boxes(mask) == [(4.0, 1.0, 6.0, 3.0)]
