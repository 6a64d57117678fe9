"""Diabetic-retinopathy lesions: what a grade gets (:func:`lesion_plan`), where it goes, how it looks.

Contract
--------
Every recorded lesion is one :class:`Lesion`: a ``type`` from :data:`LESION_TYPES`, a ``subtype`` (see
:data:`SUBTYPES`), its tight ``box`` ``(x0, y0, x1, y1)`` (x1/y1 exclusive) and its binary ``mask`` (a
:class:`LesionMask` cropped to the box). The mask is where the lesion's drawn opacity is at least
:data:`MASK_THRESHOLD`; the box is the mask's extent. A cluster of hard exudates (scattered, circinate ring or
confluent plaque) is one lesion whose mask holds all its spots. A pre-retinal haemorrhage is recorded as a
``haemorrhage`` of subtype ``preretinal``.

Placement rules (canonical right-eye frame of :mod:`datasets.synthetic.anatomy`):

* every box corner lies inside the field of view and no box comes within 1.15 disc radii of the disc centre;
* a lesion asked for in a quadrant has its whole extent in that quadrant (so its box centre is there too);
* without planned DME, every exudate pixel is more than one disc diameter from the fovea; with planned DME the
  first cluster is centred within 0.7 DD of it (the DME label itself is computed from the masks);
* microaneurysms and haemorrhages gather around the posterior pole, cotton-wool spots along the arcades,
  pan-retinal laser scars fill the mid-periphery outside the arcades and spare the macula and the disc.

Layers: microaneurysms, dot/blot haemorrhages, exudates and laser scars are *deep* (drawn before the vessels,
which pass over them); flame and pre-retinal haemorrhages, cotton-wool spots and vitreous haemorrhage are
*superficial* (drawn after, hiding the vessels). Neither vitreous haemorrhage nor laser scars are recorded as
lesions; they are image-level findings (:class:`datasets.synthetic.grading.Findings`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from datasets.synthetic.anatomy import Anatomy

LESION_TYPES: tuple[str, ...] = ("microaneurysm", "haemorrhage", "hard_exudate", "cotton_wool_spot")
SUBTYPES: dict[str, tuple[str, ...]] = {
    "microaneurysm": ("",),
    "haemorrhage": ("dot", "blot", "flame", "preretinal"),
    "hard_exudate": ("scattered", "circinate", "plaque"),
    "cotton_wool_spot": ("",),
}
#: Opacity from which a drawn pixel belongs to the lesion's mask.
MASK_THRESHOLD = 0.25
_SHIFT = 4  # sub-pixel bits of cv2 drawing coordinates
_ONE = 1 << _SHIFT


@dataclass(frozen=True)
class LesionMask:
    """A binary mask cropped to its box: ``bits[r, c]`` is image pixel ``(x0 + c, y0 + r)``."""

    x0: int
    y0: int
    bits: np.ndarray  # (h, w) bool, True on at least every border row and column


@dataclass(frozen=True)
class Lesion:
    """One lesion: ``type`` in :data:`LESION_TYPES`; ``box`` = ``(x0, y0, x1, y1)`` pixels, x1/y1 exclusive."""

    type: str
    box: tuple[int, int, int, int]
    subtype: str = ""
    mask: LesionMask | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Plan:
    """What one photograph gets. Quadrants are indices into :data:`datasets.synthetic.anatomy.QUADRANTS`."""

    microaneurysms: int = 0
    haemorrhages: tuple[int, int, int, int] = (0, 0, 0, 0)  # intraretinal, per quadrant
    exudate_clusters: int = 0
    dme: bool = False
    cotton_wool_spots: int = 0
    beading: tuple[int, ...] = ()
    irma: tuple[int, ...] = ()
    nv: tuple[str, ...] = ()  # "disc", "elsewhere"
    preretinal: int = 0
    vitreous: bool = False
    laser: bool = False


# --------------------------------------------------------------------------------------------------------------
# Plan
# --------------------------------------------------------------------------------------------------------------


def _spread(rng: np.random.Generator, total: int, cap: int) -> tuple[int, int, int, int]:
    """``total`` lesions dealt at random over 4 quadrants, at most ``cap`` in any one."""
    counts = [0, 0, 0, 0]
    for q in rng.integers(0, 4, size=total).tolist():
        counts[q if counts[q] < cap else int(np.argmin(counts))] += 1
    return (counts[0], counts[1], counts[2], counts[3])


def _quadrants(rng: np.random.Generator, k: int) -> tuple[int, ...]:
    return tuple(sorted(int(q) for q in rng.choice(4, size=k, replace=False)))


def _moderate(rng: np.random.Generator) -> dict[str, object]:
    """Grade-2 findings: more than microaneurysms only, short of the 4-2-1 rule."""
    plan: dict[str, object] = {
        "microaneurysms": int(rng.integers(2, 26)),
        "haemorrhages": _spread(rng, int(rng.integers(0, 31)), 15),
        "exudate_clusters": int(rng.integers(0, 6)) if rng.random() < 0.6 else 0,
        "cotton_wool_spots": int(rng.integers(1, 4)) if rng.random() < 0.3 else 0,
        "beading": _quadrants(rng, 1) if rng.random() < 0.1 else (),
    }
    if not (sum(plan["haemorrhages"]) or plan["exudate_clusters"] or plan["cotton_wool_spots"]):  # type: ignore[arg-type]
        plan["haemorrhages"] = _spread(rng, int(rng.integers(1, 6)), 15)
    return plan


def _severe(rng: np.random.Generator) -> dict[str, object]:
    """Grade-3 findings: one or more of the 4-2-1 criteria."""
    criteria = rng.random(3) < (0.6, 0.35, 0.45)
    if not criteria.any():
        criteria[int(rng.integers(0, 3))] = True
    if criteria[0]:
        haem = tuple(int(n) for n in rng.integers(21, 31, size=4))
    else:
        haem = tuple(int(n) for n in rng.integers(2, 14, size=4))
    return {
        "microaneurysms": int(rng.integers(10, 41)),
        "haemorrhages": haem,
        "exudate_clusters": int(rng.integers(1, 9)) if rng.random() < 0.75 else 0,
        "cotton_wool_spots": int(rng.integers(1, 7)),
        "beading": _quadrants(rng, int(rng.integers(2, 4))) if criteria[1] else (),
        "irma": _quadrants(rng, int(rng.integers(1, 3))) if criteria[2] else (),
    }


def lesion_plan(rng: np.random.Generator, grade: int) -> Plan:
    """Sample the findings of a photograph meant to be of ICDR ``grade`` (the rules in
    :mod:`datasets.synthetic.grading`; the recorded grade is re-derived from what is actually drawn)."""
    if grade == 0:
        return Plan()
    if grade == 1:
        return Plan(microaneurysms=int(rng.integers(1, 11)))
    parts: dict[str, object] = _moderate(rng) if grade == 2 else _severe(rng)
    if grade == 4:
        if rng.random() < 0.4:  # PDR without a severe-NPDR background
            parts = _moderate(rng)
        roll = rng.random()
        nv: tuple[str, ...] = ()
        if roll < 0.85:
            site = rng.random()
            nv = ("disc",) if site < 0.5 else ("elsewhere",) if site < 0.85 else ("disc", "elsewhere")
        parts["nv"] = nv
        parts["preretinal"] = int(rng.integers(1, 3)) if (not nv or rng.random() < 0.25) else 0
        parts["vitreous"] = bool(rng.random() < 0.12)
        parts["laser"] = bool(rng.random() < 0.3)
    if parts.get("exudate_clusters"):
        parts["dme"] = bool(rng.random() < (0.35 if grade == 2 else 0.5))
    return Plan(**parts)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------------
# Patches: a lesion's opacity over a window of the working image
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Patch:
    """Opacity ``alpha`` (float32, 0..1) over the window whose top-left pixel is ``(x0, y0)``."""

    x0: int
    y0: int
    alpha: np.ndarray

    def mask(self) -> LesionMask | None:
        """The binary mask (opacity >= :data:`MASK_THRESHOLD`) cropped to its box, ``None`` when empty."""
        bits = self.alpha >= MASK_THRESHOLD
        rows = np.flatnonzero(bits.any(axis=1))
        if rows.size == 0:
            return None
        cols = np.flatnonzero(bits.any(axis=0))
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        return LesionMask(self.x0 + c0, self.y0 + r0, np.ascontiguousarray(bits[r0:r1, c0:c1]))


def mask_box(m: LesionMask) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` of a cropped mask."""
    h, w = m.bits.shape
    return (m.x0, m.y0, m.x0 + w, m.y0 + h)


def _window(side: int, x: float, y: float, extent: float) -> tuple[int, int, int, int]:
    """``(x0, y0, w, h)`` of the pixels within ``extent`` (plus a margin) of ``(x, y)``, clipped to the array."""
    x0 = max(0, int(math.floor(x - extent - 2)))
    y0 = max(0, int(math.floor(y - extent - 2)))
    x1 = min(side, int(math.ceil(x + extent + 3)))
    y1 = min(side, int(math.ceil(y + extent + 3)))
    return x0, y0, max(1, x1 - x0), max(1, y1 - y0)


_Ellipse = tuple[float, float, float, float, float]  # centre x, centre y, semi-axes a, b, angle (radians)


def _ellipses(x0: int, y0: int, w: int, h: int, shapes: list[_Ellipse], blur: float = 0.0) -> np.ndarray:
    """Union of filled anti-aliased ellipses (image coordinates) over the window, optionally blurred; float32."""
    m = np.zeros((h, w), dtype=np.uint8)
    for cx, cy, a, b, angle in shapes:
        centre = (int(round((cx - x0) * _ONE)), int(round((cy - y0) * _ONE)))
        axes = (max(1, int(round(a * _ONE))), max(1, int(round(b * _ONE))))
        cv2.ellipse(m, centre, axes, math.degrees(angle), 0, 360, 255, -1, cv2.LINE_AA, _SHIFT)
    if blur > 0:
        m = gaussian(m, blur)
    out = m.astype(np.float32)
    out *= np.float32(1.0 / 255.0)
    return out


def gaussian(m: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur truncated at 2.5 sigma. OpenCV's automatic kernel for uint8 spans 8 sigma, which costs
    four times as much on the small windows lesions live in, for no visible difference."""
    k = 2 * int(math.ceil(2.5 * sigma)) + 1
    return cv2.GaussianBlur(m, (k, k), sigma)


def compose(img: np.ndarray, patch: Patch, colour: np.ndarray, *, mix: bool) -> None:
    """Composite ``patch`` into the uint8 RGB ``img`` in place.

    ``mix=False`` multiplies the background by ``1 - alpha (1 - colour)`` (dark-red lesions keep the local
    tone; ``colour`` is a per-channel transmission); ``mix=True`` blends towards the RGB ``colour``.
    """
    h, w = patch.alpha.shape
    roi = img[patch.y0 : patch.y0 + h, patch.x0 : patch.x0 + w]
    a = patch.alpha[..., None]
    f = roi.astype(np.float32)
    if mix:
        f += a * (colour.astype(np.float32) - f)
    else:
        f *= np.float32(1.0) - a * (np.float32(1.0) - colour.astype(np.float32))
    roi[...] = cv2.convertScaleAbs(f)  # rounds and saturates to uint8 (values are never negative)


# --------------------------------------------------------------------------------------------------------------
# Lesion makers. ``u`` is one thousandth of the field diameter (about 12 micrometres of retina).
# Each ``*_extent(u)`` bounds the distance of any drawn pixel from the lesion centre.
# --------------------------------------------------------------------------------------------------------------


def _ma(rng: np.random.Generator, side: int, u: float, x: float, y: float) -> Patch:
    """Microaneurysm: a tiny, sharp, round dark-red dot (60-120 um across, at least 2.4 px)."""
    r = max(1.2, u * rng.uniform(2.5, 5.0))
    x0, y0, w, h = _window(side, x, y, r)
    return Patch(x0, y0, _ellipses(x0, y0, w, h, [(x, y, r, r * rng.uniform(0.85, 1.0), rng.uniform(0, math.pi))])
                 * np.float32(rng.uniform(0.85, 1.0)))


def _ma_extent(u: float) -> float:
    return max(1.2, 5.0 * u) + 1


def _haem_extent(u: float, subtype: str) -> float:
    return {"dot": max(1.5, 8 * u) + 2, "blot": max(2.0, 18 * u) * 1.6 + 2, "flame": max(3.0, 32 * u) + 3}[subtype]


def _haemorrhage(rng: np.random.Generator, side: int, u: float, x: float, y: float, subtype: str,
                 disc: tuple[float, float]) -> Patch:
    """Dot (small, round), blot (irregular union of ellipses) or flame (feathered, along the nerve fibres)."""
    if subtype == "dot":
        r = max(1.5, u * rng.uniform(4.0, 8.0))
        x0, y0, w, h = _window(side, x, y, r)
        m = _ellipses(x0, y0, w, h, [(x, y, r, r * rng.uniform(0.8, 1.0), rng.uniform(0, math.pi))], 0.5)
        return Patch(x0, y0, m * np.float32(rng.uniform(0.8, 0.97)))
    if subtype == "blot":
        r = max(2.0, u * rng.uniform(8.0, 18.0))
        x0, y0, w, h = _window(side, x, y, 1.6 * r)
        shapes: list[_Ellipse] = []
        for _ in range(int(rng.integers(2, 6))):
            ox, oy = np.clip(rng.normal(0.0, 0.3 * r, size=2), -0.6 * r, 0.6 * r)
            shapes.append((x + ox, y + oy, r * rng.uniform(0.45, 0.8), r * rng.uniform(0.35, 0.7), rng.uniform(0, math.pi)))
        m = _ellipses(x0, y0, w, h, shapes, max(0.6, 0.12 * r))
        return Patch(x0, y0, m * np.float32(rng.uniform(0.78, 0.95)))
    # Flame: elongated radially from the disc (the course of the nerve fibre layer near the posterior pole).
    a = max(3.0, u * rng.uniform(14.0, 32.0))
    b = a * rng.uniform(0.18, 0.32)
    along = math.atan2(y - disc[1], x - disc[0]) + rng.normal(0.0, 0.12)
    x0, y0, w, h = _window(side, x, y, a)
    c, s = math.cos(along), math.sin(along)
    shapes = [(x, y, a * 0.85, b, along)]
    for _ in range(3):  # feathered ends: thinner streaks continuing the flame
        t = rng.uniform(-0.5, 0.5) * a
        shapes.append((x + c * t, y + s * t, a * rng.uniform(0.4, 0.6), b * rng.uniform(0.35, 0.6), along + rng.normal(0.0, 0.08)))
    m = _ellipses(x0, y0, w, h, shapes, max(0.6, 0.35 * b))
    return Patch(x0, y0, m * np.float32(rng.uniform(0.75, 0.92)))


_EXUDATE_SPREAD = {"scattered": 35.0, "circinate": 60.0, "plaque": 16.0}


def _exudate_extent(u: float, subtype: str) -> float:
    return _EXUDATE_SPREAD[subtype] * u * 1.2 + max(1.0, 12.0 * u) + 2


def _exudates(rng: np.random.Generator, side: int, u: float, x: float, y: float, subtype: str) -> Patch:
    """Crisp, waxy yellow spots: a scattered cluster, a circinate (partial) ring, or a confluent plaque."""
    spots: list[_Ellipse] = []
    if subtype == "circinate":
        radius = u * rng.uniform(22.0, _EXUDATE_SPREAD["circinate"])
        start, arc = rng.uniform(0, 2 * math.pi), rng.uniform(3.5, 2 * math.pi)
        for _ in range(int(rng.integers(12, 36))):
            t = start + rng.uniform(0, arc)
            rr = radius * rng.uniform(0.85, 1.15)
            r = max(1.0, u * rng.uniform(1.5, 4.5))
            spots.append((x + rr * math.cos(t), y + rr * math.sin(t), r, r * rng.uniform(0.6, 1.0), rng.uniform(0, math.pi)))
    elif subtype == "plaque":
        spread = u * rng.uniform(5.0, _EXUDATE_SPREAD["plaque"])
        for _ in range(int(rng.integers(2, 7))):
            ox, oy = np.clip(rng.normal(0.0, spread / 2, size=2), -spread, spread)
            r = max(1.0, u * rng.uniform(4.0, 12.0))
            spots.append((x + ox, y + oy, r, r * rng.uniform(0.5, 0.9), rng.uniform(0, math.pi)))
    else:
        spread = u * rng.uniform(8.0, _EXUDATE_SPREAD["scattered"])
        for _ in range(int(rng.integers(3, 21))):
            ox, oy = np.clip(rng.normal(0.0, spread / 2, size=2), -spread, spread)
            r = max(1.0, u * rng.uniform(1.5, 5.0))
            spots.append((x + ox, y + oy, r, r * rng.uniform(0.6, 1.0), rng.uniform(0, math.pi)))
    x0, y0, w, h = _window(side, x, y, _exudate_extent(u, subtype))
    return Patch(x0, y0, _ellipses(x0, y0, w, h, spots, 0.45) * np.float32(rng.uniform(0.85, 1.0)))


def _cws_extent(u: float) -> float:
    return max(2.5, 32.0 * u) * 1.7 + 3


def _cotton_wool(rng: np.random.Generator, side: int, u: float, x: float, y: float, disc: tuple[float, float]) -> Patch:
    """Soft, fluffy, greyish-white patch with indistinct borders, elongated along the nerve fibres."""
    r = max(2.5, u * rng.uniform(14.0, 32.0))
    along = math.atan2(y - disc[1], x - disc[0]) + math.pi / 2 * rng.uniform(-0.3, 0.3)
    x0, y0, w, h = _window(side, x, y, 1.7 * r)
    shapes: list[_Ellipse] = []
    for _ in range(int(rng.integers(3, 6))):
        ox, oy = np.clip(rng.normal(0.0, 0.3 * r, size=2), -0.6 * r, 0.6 * r)
        shapes.append((x + ox, y + oy, r * rng.uniform(0.5, 0.9), r * rng.uniform(0.3, 0.55), along + rng.normal(0.0, 0.3)))
    m = _ellipses(x0, y0, w, h, shapes, 0.3 * r)
    return Patch(x0, y0, m * np.float32(rng.uniform(0.45, 0.65)))


def _preretinal_extent(u: float) -> float:
    return max(4.0, 80.0 * u) + 3


def _preretinal(rng: np.random.Generator, side: int, u: float, x: float, y: float) -> Patch:
    """Boat-shaped pre-retinal haemorrhage: an ellipse with a flat upper border (the fluid level)."""
    a = max(4.0, u * rng.uniform(40.0, 80.0))
    b = a * rng.uniform(0.55, 0.8)
    x0, y0, w, h = _window(side, x, y, a)
    m = _ellipses(x0, y0, w, h, [(x, y, a, b, rng.normal(0.0, 0.05))])
    level = y - b * rng.uniform(0.1, 0.45)
    rows = np.arange(y0, y0 + h, dtype=np.float32)[:, None]
    m *= np.clip(rows - np.float32(level) + np.float32(0.5), 0.0, 1.0)
    m *= np.float32(0.8) + np.float32(0.2) * np.clip((rows - np.float32(level)) / np.float32(b), 0.0, 1.0)  # settled
    m = gaussian(m, max(0.6, 0.8 * u))
    return Patch(x0, y0, m * np.float32(rng.uniform(0.88, 0.97)))


def _vitreous(rng: np.random.Generator, anat: Anatomy) -> Patch:
    """Vitreous haemorrhage: a large, diffuse red-brown cloud settling in the lower part of the field."""
    d = anat.diameter
    x = anat.cx + rng.uniform(-0.25, 0.25) * d
    y = anat.cy + rng.uniform(0.05, 0.3) * d
    extent = d * rng.uniform(0.18, 0.32)
    x0, y0, w, h = _window(anat.side, x, y, extent)
    coarse = rng.standard_normal((12, 12)).astype(np.float32)
    noise = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    xs = (np.arange(x0, x0 + w, dtype=np.float32) - np.float32(x)) / np.float32(extent)
    ys = (np.arange(y0, y0 + h, dtype=np.float32) - np.float32(y)) / np.float32(extent)
    rho2 = xs[None, :] ** 2 + ys[:, None] ** 2
    m = np.clip((np.float32(1.0) - rho2) * np.float32(1.4) + np.float32(0.35) * noise, 0.0, 1.0)
    return Patch(x0, y0, m * np.float32(rng.uniform(0.55, 0.85)))


# --------------------------------------------------------------------------------------------------------------
# Placement and drawing
# --------------------------------------------------------------------------------------------------------------


class Placer:
    """Rejection sampler of lesion centres inside the field and clear of the optic disc."""

    def __init__(self, rng: np.random.Generator, anat: Anatomy) -> None:
        self.rng = rng
        self.anat = anat

    def sample(
        self, extent: float, *, quadrant: int | None = None, near: tuple[float, float, float] | None = None,
        avoid: tuple[float, float, float] | None = None,
    ) -> tuple[float, float] | None:
        """A centre whose ``extent``-disc lies in the field, off the disc and, if given, in ``quadrant``, near
        ``(x, y, r)`` and more than ``r`` away from ``avoid = (x, y, r)``; ``None`` after 64 tries."""
        a = self.anat
        limit = a.radius * 0.97 - extent * 1.42  # keeps the corners of the lesion's box inside the field too
        if limit <= 0:
            return None
        for _ in range(64):
            if near is not None:
                t = self.rng.uniform(0, 2 * math.pi)
                rr = near[2] * math.sqrt(self.rng.random())
                x, y = near[0] + rr * math.cos(t), near[1] + rr * math.sin(t)
            else:
                t = self.rng.uniform(0, 2 * math.pi)
                rr = limit * math.sqrt(self.rng.uniform(0.01, 1.0))
                x, y = a.cx + rr * math.cos(t), a.cy + rr * math.sin(t)
            if quadrant is not None:  # fold into the quadrant, its whole extent off the axes
                temporal, superior = quadrant in (0, 3), quadrant in (0, 1)
                dx, dy = abs(x - a.cx), abs(y - a.cy)
                if dx <= extent + 0.5 or dy <= extent + 0.5:
                    continue
                x = a.cx - dx if temporal else a.cx + dx
                y = a.cy - dy if superior else a.cy + dy
            if math.hypot(x - a.cx, y - a.cy) > limit:
                continue
            if math.hypot(x - a.disc_x, y - a.disc_y) < a.disc_ry * 1.15 + extent:
                continue
            if avoid is not None and math.hypot(x - avoid[0], y - avoid[1]) <= avoid[2] + extent:
                continue
            return x, y
        return None


def box_allowed(box: tuple[int, int, int, int], anat: Anatomy) -> bool:
    """All four box corners inside the field, and the box clear of 1.15 disc radii around the disc centre."""
    x0, y0, x1, y1 = box
    for x, y in ((x0, y0), (x1 - 1, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)):
        if math.hypot(x - anat.cx, y - anat.cy) > anat.radius - 1.0:
            return False
    nx = min(max(anat.disc_x, x0), x1 - 1)
    ny = min(max(anat.disc_y, y0), y1 - 1)
    return math.hypot(nx - anat.disc_x, ny - anat.disc_y) > anat.disc_ry * 1.15


@dataclass(frozen=True)
class Look:
    """Per-image appearance shared by background and lesions: ``gain`` scales the light colours."""

    gain: float


# Per-channel transmissions of dark-red lesions and RGB colours of pale ones (before ``Look.gain``).
_MA = np.array([0.56, 0.26, 0.3], dtype=np.float32)
_DOTBLOT = np.array([0.62, 0.3, 0.33], dtype=np.float32)
_FLAME = np.array([0.7, 0.34, 0.36], dtype=np.float32)
_PRERETINAL = np.array([0.5, 0.17, 0.2], dtype=np.float32)
_VITREOUS = np.array([0.5, 0.3, 0.34], dtype=np.float32)
_LASER_PIGMENT = np.array([0.3, 0.26, 0.27], dtype=np.float32)


class LesionPainter:
    """Draws a :class:`Plan` into a uint8 RGB working image in two layers (deep, superficial)."""

    def __init__(self, rng: np.random.Generator, img: np.ndarray, anat: Anatomy, plan: Plan, look: Look) -> None:
        self.rng, self.img, self.anat, self.plan, self.look = rng, img, anat, plan, look
        self.u = anat.diameter / 1000.0
        self.place = Placer(rng, anat)
        self.lesions: list[Lesion] = []
        self.laser_scars = 0
        self.vitreous = False
        # Haemorrhage subtypes are decided up front: flames are superficial, dots and blots deep.
        self.haem: list[tuple[int, str]] = []
        for q, n in enumerate(plan.haemorrhages):
            for _ in range(n):
                roll = rng.random()
                self.haem.append((q, "dot" if roll < 0.5 else "blot" if roll < 0.85 else "flame"))
        self.haem_quadrant = any(n > 20 for n in plan.haemorrhages)  # severe: keep each in its quadrant

    # -- helpers --------------------------------------------------------------------------------------------

    @property
    def _posterior(self) -> tuple[float, float, float]:
        a = self.anat
        return ((a.fovea_x + a.disc_x) / 2, a.fovea_y, a.radius * 0.62)

    def _colour(self, lo: tuple[float, float, float], hi: tuple[float, float, float]) -> np.ndarray:
        c = np.array([self.rng.uniform(l, h) for l, h in zip(lo, hi)], dtype=np.float32)
        return c * np.float32(self.look.gain)

    def _add(self, make: Callable[[float, float], Patch], extent: float, colour: np.ndarray, mix: bool,
             record: tuple[str, str] | None, *, quadrant: int | None = None,
             near: tuple[float, float, float] | None = None, avoid: tuple[float, float, float] | None = None) -> bool:
        """Place, draw and (if ``record``) record one lesion; re-placed up to 8 times when the box breaks the
        placement contract. ``make(x, y)`` returns the lesion's :class:`Patch`; ``quadrant``/``near``/``avoid`` as
        in :meth:`Placer.sample`."""
        for _ in range(8):
            pos = self.place.sample(extent, quadrant=quadrant, near=near, avoid=avoid)
            if pos is None:
                return False
            patch = make(*pos)
            m = patch.mask()
            if m is None or not box_allowed(mask_box(m), self.anat):
                continue
            compose(self.img, patch, colour, mix=mix)
            if record is not None:
                self.lesions.append(Lesion(record[0], mask_box(m), record[1], m))
            return True
        return False

    def _haemorrhage_at(self, x: float, y: float, subtype: str) -> Patch:
        return _haemorrhage(self.rng, self.anat.side, self.u, x, y, subtype, (self.anat.disc_x, self.anat.disc_y))

    def _haemorrhages(self, superficial: bool) -> None:
        """Draw the planned haemorrhages of one layer (flames are superficial, dots and blots deep)."""
        for q, sub in self.haem:
            if (sub == "flame") != superficial:
                continue
            ext = _haem_extent(self.u, sub)
            colour = _FLAME if sub == "flame" else _DOTBLOT
            colour = colour * np.float32(self.rng.uniform(0.92, 1.08))
            make = functools.partial(self._haemorrhage_at, subtype=sub)
            if self.haem_quadrant or self.rng.random() >= 0.6:
                placed = self._add(make, ext, colour, False, ("haemorrhage", sub), quadrant=q)
            else:  # around the posterior pole
                placed = self._add(make, ext, colour, False, ("haemorrhage", sub), near=self._posterior)
            if not placed:  # one more round anywhere in the planned quadrant
                self._add(make, ext, colour, False, ("haemorrhage", sub), quadrant=q)

    # -- layers ---------------------------------------------------------------------------------------------

    def deep(self) -> None:
        """Laser scars, exudates, dot/blot haemorrhages and microaneurysms (under the vessels)."""
        rng, a, u = self.rng, self.anat, self.u
        if self.plan.laser:
            self._laser()
        fovea_guard = (a.fovea_x, a.fovea_y, a.dd)
        for i in range(self.plan.exudate_clusters):
            roll = rng.random()
            sub = "scattered" if roll < 0.55 else "circinate" if roll < 0.8 else "plaque"
            colour = self._colour((238, 212, 95), (255, 238, 150))
            ext = _exudate_extent(u, sub)
            make = lambda x, y, s=sub: _exudates(rng, a.side, u, x, y, s)  # noqa: E731
            if self.plan.dme and i == 0:
                if not self._add(make, ext, colour, True, ("hard_exudate", sub), near=(a.fovea_x, a.fovea_y, 0.7 * a.dd)):
                    make = lambda x, y: _exudates(rng, a.side, u, x, y, "plaque")  # noqa: E731
                    self._add(make, _exudate_extent(u, "plaque"), colour, True, ("hard_exudate", "plaque"),
                              near=(a.fovea_x, a.fovea_y, 0.7 * a.dd))
            elif self.plan.dme and rng.random() < 0.5:
                self._add(make, ext, colour, True, ("hard_exudate", sub), near=(a.fovea_x, a.fovea_y, 2.5 * a.dd))
            else:
                near = self._posterior if rng.random() < 0.6 else None
                self._add(make, ext, colour, True, ("hard_exudate", sub), near=near, avoid=fovea_guard)
        self._haemorrhages(superficial=False)
        for _ in range(self.plan.microaneurysms):
            colour = _MA * np.float32(rng.uniform(0.9, 1.1))
            near = self._posterior if rng.random() < 0.65 else None
            self._add(lambda x, y: _ma(rng, a.side, u, x, y), _ma_extent(u), colour, False, ("microaneurysm", ""), near=near)

    def superficial(self) -> None:
        """Flame and pre-retinal haemorrhages, cotton-wool spots, vitreous haemorrhage (over the vessels)."""
        rng, a, u = self.rng, self.anat, self.u
        disc = (a.disc_x, a.disc_y)
        for _ in range(self.plan.cotton_wool_spots):
            colour = self._colour((222, 215, 190), (245, 238, 215))
            near = (a.disc_x - 0.8 * a.dd, a.disc_y, 3.2 * a.dd)  # along the arcades, around the disc
            self._add(lambda x, y: _cotton_wool(rng, a.side, u, x, y, disc), _cws_extent(u), colour, True,
                      ("cotton_wool_spot", ""), near=near)
        self._haemorrhages(superficial=True)
        for _ in range(self.plan.preretinal):
            colour = _PRERETINAL * np.float32(rng.uniform(0.9, 1.1))
            self._add(lambda x, y: _preretinal(rng, a.side, u, x, y), _preretinal_extent(u), colour, False,
                      ("haemorrhage", "preretinal"), near=(a.cx, a.cy, a.radius * 0.7))
        if self.plan.vitreous:
            compose(self.img, _vitreous(rng, a), _VITREOUS, mix=False)
            self.vitreous = True

    def _laser(self) -> None:
        """Pan-retinal photocoagulation: rows of round scars (pale atrophic halo, dark pigment clumps) in the
        mid-periphery, sparing the macula (3 DD around the fovea) and the disc."""
        rng, a, u = self.rng, self.anat, self.u
        spacing = max(4.0, u * rng.uniform(28.0, 40.0))
        r_scar = spacing * rng.uniform(0.22, 0.32)
        pale = self._colour((205, 175, 120), (235, 210, 160))
        rot = rng.uniform(0, math.pi / 3)
        c, s = math.cos(rot), math.sin(rot)
        n = int(a.radius / spacing) + 2
        for i in range(-n, n + 1):
            for j in range(-n, n + 1):
                gx, gy = (i + 0.5 * (j % 2)) * spacing, j * spacing * 0.866  # hexagonal grid
                x = a.cx + c * gx - s * gy + rng.normal(0.0, 0.2 * spacing)
                y = a.cy + s * gx + c * gy + rng.normal(0.0, 0.2 * spacing)
                if math.hypot(x - a.cx, y - a.cy) > a.radius * 0.96 - 2 * r_scar:
                    continue
                if math.hypot(x - a.fovea_x, y - a.fovea_y) < 2.4 * a.dd or math.hypot(x - a.disc_x, y - a.disc_y) < 1.3 * a.dd:
                    continue
                if rng.random() < 0.35:
                    continue
                r = r_scar * rng.uniform(0.6, 1.4)
                x0, y0, w, h = _window(a.side, x, y, 1.3 * r)
                halo = _ellipses(x0, y0, w, h, [(x, y, r, r * rng.uniform(0.75, 1.0), rng.uniform(0, math.pi))],
                                 max(0.5, 0.25 * r))
                compose(self.img, Patch(x0, y0, halo * np.float32(rng.uniform(0.15, 0.5))), pale, mix=True)
                clumps = [(x + rng.normal(0, 0.35 * r), y + rng.normal(0, 0.35 * r), r * rng.uniform(0.2, 0.7),
                           r * rng.uniform(0.2, 0.55), rng.uniform(0, math.pi)) for _ in range(int(rng.integers(0, 5)))]
                if clumps:
                    pig = _ellipses(x0, y0, w, h, clumps, max(0.5, 0.15 * r))
                    compose(self.img, Patch(x0, y0, pig * np.float32(rng.uniform(0.3, 0.85))), _LASER_PIGMENT, mix=False)
                self.laser_scars += 1
