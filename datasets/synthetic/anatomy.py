"""Geometry of one synthetic eye: field of view, optic disc, fovea, quadrants.

Contract
--------
:func:`sample_anatomy` draws an :class:`Anatomy` in the *canonical right-eye frame* of a square working array
of side ``side`` pixels (the field of view's bounding square plus a 2-pixel margin): the disc lies nasal of the
fovea, i.e. to the right of it, as in a photograph of a right eye. Left eyes are rendered in this frame and
mirrored at the very end (:mod:`datasets.synthetic.fundus`).

Proportions follow a 45-degree fundus photograph (field diameter ``D`` about 12 mm of retina):

* disc diameter ``DD`` = 0.125-0.155 ``D`` (about 1.8 mm), slightly taller than wide;
* fovea 2.5 ``DD`` (+- 8 %) temporal to the disc centre and 3-12 degrees below the disc-fovea horizontal
  (the disc sits a little higher than the fovea), the fovea itself 0-7 % of ``D`` temporal of the field centre;
* the disc lies entirely inside 0.45 ``D`` of the field centre (the pair is moved temporally when needed).

Quadrants (:data:`QUADRANTS`) are those of the photograph about the field centre: *superior* above the
horizontal through the centre, *temporal* on the fovea's side of the vertical (left in the canonical frame,
right in a left eye's photograph). A point exactly on an axis counts as inferior / nasal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

QUADRANTS: tuple[str, ...] = ("superotemporal", "superonasal", "inferonasal", "inferotemporal")


@dataclass(frozen=True)
class Anatomy:
    """One eye in the canonical right-eye frame of a ``side`` x ``side`` working array, in pixels."""

    side: int
    cx: float  # field centre
    cy: float
    radius: float  # field radius
    disc_x: float
    disc_y: float
    disc_r: float  # disc radius (horizontal semi-axis); DD = 2 * disc_r
    disc_ry: float  # vertical semi-axis
    fovea_x: float
    fovea_y: float

    @property
    def diameter(self) -> float:
        """Field-of-view diameter ``D`` in pixels: the unit every size is drawn in."""
        return 2.0 * self.radius

    @property
    def dd(self) -> float:
        """Disc diameter (horizontal) in pixels: the clinical unit of the DME rule."""
        return 2.0 * self.disc_r

    def quadrant(self, x: float, y: float) -> int:
        """Index into :data:`QUADRANTS` of point ``(x, y)`` in the canonical frame (see the module docstring)."""
        return quadrant_index(x < self.cx, y < self.cy)


def quadrant_index(temporal: bool, superior: bool) -> int:
    """Index into :data:`QUADRANTS` for a temporal/nasal and superior/inferior pair."""
    if superior:
        return 0 if temporal else 1
    return 3 if temporal else 2


def sample_anatomy(rng: np.random.Generator, diameter: float) -> Anatomy:
    """Draw the geometry of an eye photographed with a field of view ``diameter`` pixels across."""
    if not diameter > 8:
        raise ValueError(f"field diameter must be > 8 pixels, got {diameter}")
    side = int(math.ceil(diameter)) + 4
    c = side / 2.0
    dd = diameter * rng.uniform(0.125, 0.155)
    disc_r = dd / 2.0
    disc_ry = disc_r * rng.uniform(1.04, 1.15)
    fovea_x = c - diameter * rng.uniform(0.0, 0.07)
    fovea_y = c + diameter * rng.uniform(-0.03, 0.03)
    dist = 2.5 * dd * rng.uniform(0.92, 1.08)
    tilt = math.radians(rng.uniform(3.0, 12.0))
    disc_x = fovea_x + dist * math.cos(tilt)
    disc_y = fovea_y - dist * math.sin(tilt)
    excess = math.hypot(disc_x - c, disc_y - c) + disc_ry - 0.45 * diameter
    if excess > 0:  # keep the whole disc well inside the field
        fovea_x -= excess
        disc_x -= excess
    return Anatomy(
        side=side, cx=c, cy=c, radius=diameter / 2.0, disc_x=disc_x, disc_y=disc_y, disc_r=disc_r,
        disc_ry=disc_ry, fovea_x=fovea_x, fovea_y=fovea_y,
    )


def quadrant_of(x: float, y: float, cx: float, cy: float, laterality: str) -> str:
    """Quadrant name of point ``(x, y)`` of a *photograph* (after mirroring) with field centre ``(cx, cy)``.

    Temporal is left of the centre in a right eye's photograph and right of it in a left eye's; points on an
    axis count as nasal / inferior (the same rule as :meth:`Anatomy.quadrant` before mirroring).
    """
    temporal = x < cx if laterality == "R" else x > cx
    return QUADRANTS[quadrant_index(temporal, y < cy)]


def box_centre(box: tuple[int, int, int, int]) -> tuple[float, float]:
    """Centre of a pixel box ``(x0, y0, x1, y1)`` (x1/y1 exclusive) in pixel-centre coordinates."""
    return ((box[0] + box[2] - 1) / 2.0, (box[1] + box[3] - 1) / 2.0)
