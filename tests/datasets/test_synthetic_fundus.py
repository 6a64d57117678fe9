"""Synthetic fundus renderer: contract, grade/DME rules on what is drawn, mirrored laterality, camera geometry."""

from __future__ import annotations

import numpy as np
import pytest

from datasets.synthetic.anatomy import QUADRANTS, quadrant_of
from datasets.synthetic.fundus import LESION_TYPES, SyntheticFundus, render_fundus
from datasets.synthetic.grading import icdr_grade

SIZE = 128


def _render(seed: int, grade: int, laterality: str = "R", size: int | tuple[int, int] = SIZE) -> SyntheticFundus:
    return render_fundus(np.random.default_rng([seed, grade]), grade=grade, laterality=laterality, size=size)


# --- renderer -------------------------------------------------------------------------------------------------


def test_render_contract_and_determinism() -> None:
    a, b, c = _render(1, 3), _render(1, 3), _render(2, 3)
    assert a.image.shape == (SIZE, SIZE, 3) and a.image.dtype == np.uint8 and a.image.flags.c_contiguous
    assert a.laterality == "R" and a.grade == icdr_grade(a.findings)
    assert np.array_equal(a.image, b.image) and a.lesions == b.lesions and a.findings == b.findings
    assert not np.array_equal(a.image, c.image)
    for les in a.lesions:  # the mask is cropped to the box and touches all four sides
        assert les.mask is not None and (les.mask.x0, les.mask.y0) == les.box[:2]
        bits = les.mask.bits
        assert bits.shape == (les.box[3] - les.box[1], les.box[2] - les.box[0])
        assert bits[0].any() and bits[-1].any() and bits[:, 0].any() and bits[:, -1].any()


@pytest.mark.parametrize(
    "kwargs",
    [{"grade": 5}, {"grade": -1}, {"grade": True}, {"laterality": "X"}, {"size": 32}, {"size": (200, 40)},
     {"size": (200,)}, {"size": 100.0}],
)
def test_render_rejects_bad_arguments(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"grade": 0, "laterality": "L", "size": SIZE}
    args.update(kwargs)
    with pytest.raises(ValueError):
        render_fundus(np.random.default_rng(0), **args)  # type: ignore[arg-type]


def _quadrant_counts(f: SyntheticFundus) -> list[int]:
    counts = [0, 0, 0, 0]
    for les in f.lesions:
        if les.type == "haemorrhage" and les.subtype != "preretinal":
            x0, y0, x1, y1 = les.box
            q = quadrant_of((x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2, f.field[0], f.field[1], f.laterality)
            counts[QUADRANTS.index(q)] += 1
    return counts


@pytest.mark.parametrize("seed", range(3))
def test_grade_rules_on_what_is_drawn(seed: int) -> None:
    for asked in range(5):
        for laterality in ("L", "R"):
            f = render_fundus(np.random.default_rng([seed, asked]), grade=asked, laterality=laterality, size=256)
            assert f.grade == asked  # the plan for a grade is drawn in full at this size
            kinds = [les.type for les in f.lesions]
            fd = f.findings
            assert tuple(_quadrant_counts(f)) == fd.haemorrhages_per_quadrant
            assert kinds.count("microaneurysm") == fd.microaneurysms
            if f.grade == 0:
                assert kinds == []
            if f.grade == 1:
                assert kinds and set(kinds) == {"microaneurysm"}
            if f.grade >= 2:
                assert set(kinds) - {"microaneurysm"} or fd.venous_beading_quadrants
            if f.grade == 3:  # the 4-2-1 rule, and nothing proliferative
                assert (all(n > 20 for n in _quadrant_counts(f)) or len(set(fd.venous_beading_quadrants)) >= 2
                        or fd.irma_quadrants)
                assert not (fd.neovascularisation or fd.preretinal_haemorrhages or fd.vitreous_haemorrhage)
            if f.grade == 4:
                assert fd.neovascularisation or fd.preretinal_haemorrhages or fd.vitreous_haemorrhage
            assert all(t in LESION_TYPES for t in kinds)


def _nearest_exudate_dd(f: SyntheticFundus) -> float | None:
    best = None
    for les in f.lesions:
        if les.type == "hard_exudate":
            assert les.mask is not None
            ys, xs = np.nonzero(les.mask.bits)
            d = float(np.hypot(xs + les.mask.x0 - f.fovea[0], ys + les.mask.y0 - f.fovea[1]).min()) / f.disc_diameter
            best = d if best is None else min(best, d)
    return best


def test_dme_iff_exudate_within_one_disc_diameter() -> None:
    seen = {True: 0, False: 0}
    for seed in range(10):
        for grade in (2, 3, 4):
            f = _render(seed, grade, "L" if seed % 2 else "R", size=192)
            d = _nearest_exudate_dd(f)
            assert f.dme == (d is not None and d <= 1.0), (seed, grade, d)
            assert f.referable
            if d is not None:
                seen[f.dme] += 1
    assert seen[True] and seen[False]  # both sides of the rule occur


def test_left_is_mirrored_right() -> None:
    right = render_fundus(np.random.default_rng(11), grade=4, laterality="R", size=(160, 128))
    left = render_fundus(np.random.default_rng(11), grade=4, laterality="L", size=(160, 128))
    w = 160
    assert np.array_equal(left.image, right.image[:, ::-1])
    assert [les.box for les in left.lesions] == [(w - x1, y0, w - x0, y1) for x0, y0, x1, y1 in (les.box for les in right.lesions)]
    for a, b in zip(left.lesions, right.lesions):
        assert a.mask is not None and b.mask is not None and np.array_equal(a.mask.bits, b.mask.bits[:, ::-1])
    assert left.findings == right.findings and left.grade == right.grade  # quadrants are anatomical
    assert left.fovea == pytest.approx((w - 1 - right.fovea[0], right.fovea[1]))
    assert right.disc[0] > right.fovea[0] and left.disc[0] < left.fovea[0]  # disc nasal of the fovea
    # Disc-fovea geometry: 2.5 disc diameters apart (+- 8 %), fovea a little below the disc.
    dist = np.hypot(right.disc[0] - right.fovea[0], right.disc[1] - right.fovea[1]) / right.disc_diameter
    assert 2.3 <= dist <= 2.7 and right.fovea[1] > right.disc[1]


@pytest.mark.parametrize("camera", [(240, 180), (180, 240), (300, 200)])
def test_non_square_cameras_keep_field_and_boxes_inside(camera: tuple[int, int]) -> None:
    w, h = camera
    for seed in range(3):
        f = render_fundus(np.random.default_rng(seed), grade=3, laterality="LR"[seed % 2], size=camera)
        assert f.image.shape == (h, w, 3)
        cx, cy, r = f.field
        assert r <= min(w, h) / 2 and cx - r >= 0 and cy - r >= 0 and cx + r <= w and cy + r <= h
        for corner in (f.image[:4, :4], f.image[:4, -4:], f.image[-4:, :4], f.image[-4:, -4:]):
            assert corner.max() < 20
        assert f.lesions
        for les in f.lesions:
            x0, y0, x1, y1 = les.box
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            for x, y in ((x0, y0), (x1 - 1, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)):
                assert np.hypot(x - cx, y - cy) <= r


def test_microaneurysms_are_visible_dots() -> None:
    f = _render(3, 1, size=512)
    assert f.lesions
    for les in f.lesions:
        x0, y0, x1, y1 = les.box
        assert min(x1 - x0, y1 - y0) >= 2
        patch = f.image[y0:y1, x0:x1].astype(int)
        ring = f.image[max(0, y0 - 6) : y1 + 6, max(0, x0 - 6) : x1 + 6].astype(int)
        assert patch[..., 1].min() < np.median(ring[..., 1]) - 8  # darker than its surroundings in green


@pytest.mark.parametrize("laterality", ["L", "R"])
def test_surround_dark_and_field_red(laterality: str) -> None:
    for grade in range(5):
        img = _render(5, grade, laterality).image
        for corner in (img[:6, :6], img[:6, -6:], img[-6:, :6], img[-6:, -6:]):
            assert corner.max() < 20
        c = SIZE // 2
        centre = img[c - 12 : c + 12, c - 12 : c + 12].reshape(-1, 3).astype(float).mean(axis=0)
        assert centre[0] > 80 and centre[0] > centre[1] > centre[2], centre
