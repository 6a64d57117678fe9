"""Procedural renderer of colour fundus photographs with diabetic-retinopathy lesions (numpy + OpenCV).

Contract
--------
``render_fundus(rng, grade=g, laterality=l, size=s)`` returns a :class:`SyntheticFundus` whose ``image`` is an
``(s, s, 3)`` uint8 RGB, C-contiguous array looking like a fundus camera photograph, and whose ``lesions``
list every lesion drawn, each with its tight bounding box ``(x0, y0, x1, y1)`` (``x1``/``y1`` exclusive) in
pixels of that image. The output depends only on the state of ``rng`` and the arguments: the same generator
state gives the same pixels and lesions. ``size`` must be at least 64.

What is drawn (in this order):

* a dark surround (1-4 grey levels plus sensor noise) with a circular field of view, diameter 0.92-0.99 of
  the image side, centre jittered by at most 1.2 % of the side;
* an orange-red retina with per-image tone/pigmentation, smooth low-frequency texture and radial
  vignetting (darker towards the rim, slightly off-centre illumination);
* a darker macula with a fovea 2.5 disc diameters temporal to the disc, slightly below it;
* an optic disc (yellow-white ellipse, diameter ~0.15 of the field diameter, brighter cup) placed nasally:
  on the right half of the image for a right eye (``laterality="R"``), mirrored for a left eye;
* a vessel tree leaving the disc: superior/inferior temporal arcades curving around the macula, nasal
  vessels, branching and tapering; veins darker and wider than arteries; drawn anti-aliased at 2x and
  area-reduced;
* ICDR-graded lesions (see :func:`_lesion_plan`):
  grade 0 none; grade 1 microaneurysms only (2-8); grade 2 microaneurysms plus haemorrhages and/or hard
  exudate clusters (at least one of the two), sometimes a cotton-wool spot; grade 3 more than 20
  haemorrhages spread over the four quadrants of the field (4-2-1 rule), plus microaneurysms, exudates and
  cotton-wool spots; grade 4 the grade-3 findings plus neovascularisation and/or a pre-retinal haemorrhage;
* a light Gaussian blur, exposure variation and Gaussian (luminance) sensor noise.

Lesion records
--------------
One :class:`Lesion` per microaneurysm, per dot/blot/flame haemorrhage, per cotton-wool spot, and per
*cluster* of hard exudates (one box around the cluster's spots; a cluster may hold a single spot). A
pre-retinal haemorrhage is recorded as a ``"haemorrhage"``. Neovascularisation (a tangle of fine vessels on or
near the disc, or along an arcade) is drawn but **not recorded**: it is not one of :data:`LESION_TYPES` and
NVD lies on the disc. Every recorded box lies inside the image, its four corners inside the field of view,
and no box overlaps the optic disc (a lesion that would break this is placed elsewhere). Boxes are the
extent of the lesion's drawn mask above 10 % opacity, before the final blur (which widens edges by well
under a pixel). Lesions may overlap each other and the vessels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

LESION_TYPES: tuple[str, ...] = ("microaneurysm", "haemorrhage", "hard_exudate", "cotton_wool_spot")
LATERALITIES: tuple[str, ...] = ("L", "R")
MIN_SIZE = 64

#: Opacity above which a lesion pixel counts towards its bounding box.
_BOX_THRESHOLD = 0.1


@dataclass(frozen=True)
class Lesion:
    """One lesion: ``type`` in :data:`LESION_TYPES`; ``box`` = ``(x0, y0, x1, y1)`` pixels, x1/y1 exclusive."""

    type: str
    box: tuple[int, int, int, int]


@dataclass(frozen=True)
class SyntheticFundus:
    """A rendered photograph: ``image`` (size, size, 3) uint8 RGB; ICDR ``grade``; ``laterality`` "L"/"R"."""

    image: np.ndarray
    grade: int
    laterality: str
    lesions: tuple[Lesion, ...]


@dataclass(frozen=True)
class _Anatomy:
    """Geometry of one eye in the canonical right-eye frame (disc on the right), in pixels."""

    size: int
    cx: float  # field centre
    cy: float
    radius: float  # field radius
    disc_x: float
    disc_y: float
    disc_r: float  # disc radius (horizontal semi-axis)
    fovea_x: float
    fovea_y: float


# --------------------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------------------


def render_fundus(rng: np.random.Generator, *, grade: int, laterality: str, size: int = 512) -> SyntheticFundus:
    """Render one fundus photograph of ICDR ``grade`` (0-4) for eye ``laterality`` ("L" or "R").

    Draws everything from ``rng`` (deterministic for a given generator state). Raises ``ValueError`` for a
    grade outside 0-4, an unknown laterality or ``size`` < :data:`MIN_SIZE`.
    """
    if isinstance(grade, bool) or not isinstance(grade, (int, np.integer)) or not 0 <= int(grade) <= 4:
        raise ValueError(f"grade must be an integer 0-4, got {grade!r}")
    if laterality not in LATERALITIES:
        raise ValueError(f"laterality must be 'L' or 'R', got {laterality!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or int(size) < MIN_SIZE:
        raise ValueError(f"size must be an integer >= {MIN_SIZE}, got {size!r}")
    grade, size = int(grade), int(size)

    anat = _sample_anatomy(rng, size)
    grid = _Grid(size)
    img = _retina(rng, anat)
    _draw_disc(rng, img, anat, grid)
    plan = _lesion_plan(rng, grade)
    _draw_vessels(rng, img, anat, neo=plan["neo"] > 0)
    lesions = _draw_lesions(rng, img, anat, grade, plan)
    out = _finish(rng, img, anat, grid)

    if laterality == "L":  # mirror the canonical right eye: the disc moves to the left half
        out = out[:, ::-1]
        lesions = [Lesion(les.type, (size - les.box[2], les.box[1], size - les.box[0], les.box[3])) for les in lesions]
    return SyntheticFundus(
        image=np.ascontiguousarray(out), grade=grade, laterality=laterality, lesions=tuple(lesions)
    )


# --------------------------------------------------------------------------------------------------------------
# Anatomy
# --------------------------------------------------------------------------------------------------------------


class _Grid:
    """Pixel-centre coordinates of a ``size`` x ``size`` image as broadcastable float32 row/column vectors."""

    def __init__(self, size: int) -> None:
        coords = np.arange(size, dtype=np.float32)
        self.x = coords[None, :]
        self.y = coords[:, None]

    def dist(self, cx: float, cy: float) -> np.ndarray:
        """Euclidean distance of every pixel to ``(cx, cy)``, ``(size, size)`` float32."""
        dx = self.x - np.float32(cx)
        dy = self.y - np.float32(cy)
        return np.sqrt(dx * dx + dy * dy)


def _sample_anatomy(rng: np.random.Generator, size: int) -> _Anatomy:
    """Field of view, disc and fovea positions (canonical right eye: disc right of centre)."""
    diameter = size * rng.uniform(0.92, 0.99)
    cx = size / 2 + rng.uniform(-0.012, 0.012) * size
    cy = size / 2 + rng.uniform(-0.012, 0.012) * size
    disc_r = 0.075 * diameter * rng.uniform(0.92, 1.08)
    disc_x = cx + diameter * rng.uniform(0.20, 0.24)
    disc_y = cy + diameter * rng.uniform(-0.03, 0.02)
    # Fovea: 2.5 disc diameters temporal to the disc centre, a little below it.
    tilt = rng.uniform(0.04, 0.14)
    dist = 5.0 * disc_r * rng.uniform(0.95, 1.05)
    return _Anatomy(
        size=size,
        cx=cx,
        cy=cy,
        radius=diameter / 2,
        disc_x=disc_x,
        disc_y=disc_y,
        disc_r=disc_r,
        fovea_x=disc_x - dist * math.cos(tilt),
        fovea_y=disc_y + dist * math.sin(tilt),
    )


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-ish amplitude smooth noise: a ``cells`` x ``cells`` grid upsampled bicubically."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def _retina(rng: np.random.Generator, anat: _Anatomy) -> np.ndarray:
    """Retina with tone, texture, vignetting and macula: ``(size, size, 3)`` float32 RGB grey levels.

    Everything here is smooth, so it is computed on a grid 4x coarser and upsampled bicubically.
    """
    size = anat.size
    low = max(32, size // 4)
    k = size / low
    coords = (np.arange(low, dtype=np.float32) + np.float32(0.5)) * np.float32(k) - np.float32(0.5)
    gx, gy = coords[None, :], coords[:, None]

    red = rng.uniform(195.0, 245.0)
    pigment = rng.uniform(0.0, 1.0)  # darker fundi are browner: less green/blue relative to red
    tone = (
        red,
        red * rng.uniform(0.40, 0.50) * (1.0 - 0.2 * pigment),
        red * rng.uniform(0.12, 0.22) * (1.0 - 0.3 * pigment),
    )
    # Illumination: radial fall-off from a slightly off-centre point, plus smooth texture.
    off = rng.uniform(-0.08, 0.08, size=2) * anat.radius
    rho = np.sqrt((gx - np.float32(anat.cx + off[0])) ** 2 + (gy - np.float32(anat.cy + off[1])) ** 2)
    rho *= np.float32(1.0 / anat.radius)
    np.minimum(rho, np.float32(1.3), out=rho)
    shade = np.float32(1.0) - np.float32(rng.uniform(0.40, 0.62)) * cv2.pow(rho, rng.uniform(1.8, 2.8))
    texture = np.float32(0.06) * _smooth_noise(rng, low, 6) + np.float32(0.025) * _smooth_noise(rng, low, 24)
    shade *= np.float32(1.0) + texture

    # Macula: a broad dark Gaussian around the fovea and a small darker fovea; macular pigment absorbs more
    # green and blue.
    d2 = (gx - np.float32(anat.fovea_x)) ** 2 + (gy - np.float32(anat.fovea_y)) ** 2
    sigma = anat.disc_r * rng.uniform(1.3, 1.7)
    dark = np.exp(d2 * np.float32(-1.0 / (2 * sigma * sigma))) * np.float32(rng.uniform(0.22, 0.36))
    dark += np.float32(0.12) * np.exp(d2 * np.float32(-1.0 / (2 * (0.3 * anat.disc_r) ** 2)))

    r = shade * (np.float32(1.0) - dark) * np.float32(tone[0])
    g = shade * (np.float32(1.0) - np.float32(1.25) * dark) * np.float32(tone[1])
    g *= np.float32(1.0) + np.float32(0.04) * _smooth_noise(rng, low, 10)  # choroidal mottling
    b = shade * (np.float32(1.0) - np.float32(1.15) * dark) * np.float32(tone[2])
    return cv2.resize(cv2.merge([r, g, b]), (size, size), interpolation=cv2.INTER_CUBIC)


def _ellipse_mask(
    px: np.ndarray, py: np.ndarray, cx: float, cy: float, a: float, b: float, angle: float, soft: float
) -> np.ndarray:
    """Anti-aliased ellipse (semi-axes ``a``, ``b``, rotated by ``angle``) with an edge ramp ``soft`` px wide."""
    c, s = math.cos(angle), math.sin(angle)
    ox, oy = px - np.float32(cx), py - np.float32(cy)
    u = (ox * np.float32(c) + oy * np.float32(s)) * np.float32(1.0 / a)
    v = (oy * np.float32(c) - ox * np.float32(s)) * np.float32(1.0 / b)
    q = np.sqrt(u * u + v * v)
    # (1 - q) * min(a, b) approximates the signed distance to the rim in pixels.
    edge = (np.float32(1.0) - q) * np.float32(min(a, b) / max(soft, 1e-3)) + np.float32(0.5)
    return np.clip(edge, 0.0, 1.0)


def _draw_disc(rng: np.random.Generator, img: np.ndarray, anat: _Anatomy, grid: _Grid) -> None:
    """Optic disc: faint peripapillary glow, yellow-orange ellipse with a pinker rim, pale cup; in place."""
    size = anat.size
    pad = int(anat.disc_r * 2.4) + 2
    x0, x1 = max(0, int(anat.disc_x) - pad), min(size, int(anat.disc_x) + pad)
    y0, y1 = max(0, int(anat.disc_y) - pad), min(size, int(anat.disc_y) + pad)
    px, py = grid.x[:, x0:x1], grid.y[y0:y1, :]
    roi = img[y0:y1, x0:x1]

    a = anat.disc_r
    b = a * rng.uniform(1.05, 1.18)  # discs are slightly taller than wide
    tilt = rng.uniform(-0.15, 0.15)
    d = np.sqrt((px - np.float32(anat.disc_x)) ** 2 + (py - np.float32(anat.disc_y)) ** 2) * np.float32(1.0 / a)
    glow = np.exp(-(d / np.float32(1.2)) ** 2) * np.float32(rng.uniform(0.02, 0.05))
    roi *= (np.float32(1.0) + glow)[..., None]

    disc = _ellipse_mask(px, py, anat.disc_x, anat.disc_y, a, b, tilt, soft=0.1 * a)
    disc *= np.float32(rng.uniform(0.85, 0.95))
    centre = np.array([rng.uniform(232, 250), rng.uniform(170, 200), rng.uniform(100, 135)], dtype=np.float32)
    rim_col = centre * np.array([0.97, 0.78, 0.72], dtype=np.float32)  # neuroretinal rim: pinker, darker
    t = np.clip(d, 0.0, 1.0)[..., None]
    col = centre + (rim_col - centre) * t
    roi *= (np.float32(1.0) - disc)[..., None]
    roi += disc[..., None] * col

    cup_ratio = rng.uniform(0.3, 0.55)
    cup_x = anat.disc_x - a * rng.uniform(0.0, 0.15)  # cups sit slightly temporally
    cup = _ellipse_mask(
        px, py, cup_x, anat.disc_y, a * cup_ratio, b * cup_ratio * rng.uniform(0.95, 1.15), tilt,
        soft=0.4 * a * cup_ratio,
    )
    cup *= np.float32(rng.uniform(0.75, 0.9))
    cup_col = np.array([rng.uniform(245, 255), rng.uniform(222, 242), rng.uniform(165, 200)], dtype=np.float32)
    roi *= (np.float32(1.0) - cup)[..., None]
    roi += cup[..., None] * cup_col


# --------------------------------------------------------------------------------------------------------------
# Vessels
# --------------------------------------------------------------------------------------------------------------

_SUPERSAMPLE = 2  # vessels are drawn at 2x and area-reduced (anti-aliasing, sub-pixel widths)
_SHIFT = 4  # sub-pixel bits of cv2 drawing coordinates
# Colour factors multiplying the background under a vessel: vessels are red, so they darken green (and blue)
# much more than red; veins more than arteries.
_ARTERY = np.array([0.80, 0.56, 0.62], dtype=np.float32)
_VEIN = np.array([0.64, 0.38, 0.48], dtype=np.float32)
_NEO = np.array([0.72, 0.45, 0.52], dtype=np.float32)


def _darkening(factor: np.ndarray) -> tuple[float, float, float]:
    """Canvas colour for a layer: 255 * (1 - factor) per channel (the canvas stores darkening)."""
    d = 255.0 * (1.0 - factor)
    return (float(d[0]), float(d[1]), float(d[2]))


def _new_canvas(size: int) -> np.ndarray:
    """2x-resolution 3-channel uint8 canvas of per-channel darkening (0 = untouched)."""
    return np.zeros((size * _SUPERSAMPLE, size * _SUPERSAMPLE, 3), dtype=np.uint8)


def _polyline(canvas: np.ndarray, pts: np.ndarray, widths: np.ndarray, colour: tuple[float, float, float]) -> None:
    """Draw a tapering polyline (``(n, 2)`` 1x coordinates, ``(n,)`` 1x widths) on a 2x canvas, anti-aliased."""
    n = len(pts)
    if n < 2:
        return
    fixed = np.round(pts * (_SUPERSAMPLE * (1 << _SHIFT))).astype(np.int32).reshape(-1, 1, 2)
    thick = np.maximum(1, np.rint(widths * _SUPERSAMPLE)).astype(np.int32).tolist()
    start = 0
    for i in range(1, n + 1):  # one call per run of equal thickness
        if i < n and thick[i] == thick[start]:
            continue
        run = fixed[max(0, start - 1) : i]  # overlap one point so runs join
        if len(run) >= 2:
            cv2.polylines(canvas, [run], False, colour, thickness=thick[start], lineType=cv2.LINE_AA, shift=_SHIFT)
        start = i


def _step(anat: _Anatomy) -> float:
    return max(1.5, anat.size * 0.008)


def _clip_path(pts: np.ndarray, anat: _Anatomy) -> np.ndarray:
    """Cut a path at the first point beyond the field rim or inside the foveal avascular zone."""
    outside = np.hypot(pts[:, 0] - anat.cx, pts[:, 1] - anat.cy) > anat.radius * 1.02
    fovea = np.hypot(pts[:, 0] - anat.fovea_x, pts[:, 1] - anat.fovea_y) < 0.6 * anat.disc_r
    bad = np.flatnonzero((outside | fovea)[1:])
    return pts if bad.size == 0 else pts[: bad[0] + 2]


def _walk(
    rng: np.random.Generator, anat: _Anatomy, x: float, y: float, theta: float, length: float, curvature: float
) -> np.ndarray:
    """A curved random-walk path from ``(x, y)`` heading ``theta``; ``curvature`` in radians per pixel."""
    step = _step(anat)
    n = max(2, int(length / step))
    frac = np.arange(n) / n
    jitter = np.convolve(rng.normal(0.0, 0.12, n + 4), np.full(5, 0.2), mode="valid")  # smooth wander
    th = theta + np.cumsum(curvature * step * (1.0 - 0.6 * frac) + jitter)
    pts = np.empty((n + 1, 2))
    pts[0] = (x, y)
    pts[1:, 0] = x + np.cumsum(step * np.cos(th))
    pts[1:, 1] = y + np.cumsum(step * np.sin(th))
    return _clip_path(pts, anat)


def _arcade(
    rng: np.random.Generator, anat: _Anatomy, sign: float, x: float, y: float, a: float, b: float, end: float
) -> np.ndarray:
    """A temporal arcade from ``(x, y)`` on the disc around the macula (``sign`` -1 superior, +1 inferior).

    Follows the quarter-plus of an ellipse (semi-axes ``a`` horizontal, ``b`` vertical) centred ``a``
    temporal to its start, from angle 0 to ``end`` radians, then walks on towards the rim.
    """
    n = max(8, int((a + b) * end * 0.6 / _step(anat)))
    phi = np.linspace(0.0, end, n)
    knots = 6
    wobble = 1.0 + np.interp(np.linspace(0.0, knots - 1, n), np.arange(knots), rng.normal(0.0, 0.025, knots))  # meander
    pts = np.empty((n, 2))
    pts[:, 0] = x - a + a * np.cos(phi) * wobble
    pts[:, 1] = y + sign * b * np.sin(phi) * wobble
    # Past the end of the arc, continue temporally towards the rim along the last heading.
    tail = pts[-1] - pts[-2]
    heading = math.atan2(tail[1], tail[0])
    rest = _walk(rng, anat, pts[-1, 0], pts[-1, 1], heading, 2 * anat.radius, 0.0)
    return _clip_path(np.concatenate([pts, rest[1:]]), anat)


def _vessel(
    rng: np.random.Generator, canvas: np.ndarray, colour: tuple[float, float, float], anat: _Anatomy, pts: np.ndarray,
    width: float, depth: int,
) -> None:
    """Draw a vessel along ``pts`` tapering from ``width``, spawning thinner random-walk branches."""
    n = len(pts)
    if n < 2:
        return
    taper = 0.55 if depth == 0 else 0.7
    widths = width * (1.0 - taper * np.arange(n) / max(n - 1, 1))
    branch_p = (0.05, 0.04, 0.025, 0.0)[min(depth, 3)]
    spawn = np.flatnonzero((rng.random(n) < branch_p) & (np.arange(n) > 3) & (widths > 0.8))
    for i in spawn.tolist():
        i = min(i, n - 2)
        heading = math.atan2(pts[i + 1, 1] - pts[i, 1], pts[i + 1, 0] - pts[i, 0])
        # Prefer the side facing away from the fovea: most big branches head for the periphery.
        to_fovea = math.atan2(anat.fovea_y - pts[i, 1], anat.fovea_x - pts[i, 0])
        away = -1.0 if math.sin(to_fovea - heading) > 0 else 1.0
        side = away if rng.random() < 0.7 else -away
        theta = heading + side * rng.uniform(0.5, 1.1)
        length = (n - i) * _step(anat) * rng.uniform(0.3, 0.7) + anat.size * 0.05
        bw = widths[i] * rng.uniform(0.5, 0.72)
        if side != away and depth == 0:  # branches towards the fovea are short and thin
            length *= 0.45
            bw *= 0.8
        curv = side * rng.uniform(-0.5, 1.5) / anat.size
        _vessel(rng, canvas, colour, anat, _walk(rng, anat, pts[i, 0], pts[i, 1], theta, length, curv), bw, depth + 1)
    _polyline(canvas, pts, widths, colour)


def _draw_vessels(rng: np.random.Generator, img: np.ndarray, anat: _Anatomy, *, neo: bool) -> None:
    """Arcades and nasal vessels leaving the disc (and, if ``neo``, a neovascular tuft); darkens ``img`` in place."""
    size = anat.size
    canvas = _new_canvas(size)
    vein = _darkening(_VEIN * np.float32(rng.uniform(0.95, 1.04)))
    artery = _darkening(_ARTERY * np.float32(rng.uniform(0.96, 1.04)))
    vein_w = size * rng.uniform(0.009, 0.011)
    art_w = vein_w * rng.uniform(0.62, 0.74)
    diam = 2 * anat.radius

    def origin() -> tuple[float, float]:
        dx, dy = rng.uniform(-0.2, 0.2), rng.uniform(-0.25, 0.25)
        return (anat.disc_x + dx * anat.disc_r, anat.disc_y + dy * anat.disc_r)

    for sign in (-1.0, 1.0):  # superior, inferior
        # Temporal arcades: vein and artery follow distinct arcs (one wider than the other) so that they
        # run side by side and cross now and then; arteries are drawn over veins.
        a = (anat.disc_x - anat.fovea_x) * rng.uniform(1.15, 1.4)
        b = anat.disc_r * rng.uniform(3.2, 4.2)
        end = rng.uniform(1.6, 2.0)
        spread = rng.uniform(0.1, 0.2) * (1.0 if rng.random() < 0.5 else -1.0)
        for colour, w, s in ((vein, vein_w, 1.0 + spread / 2), (artery, art_w, 1.0 - spread / 2)):
            arc = _arcade(rng, anat, sign, *origin(), a * rng.uniform(0.95, 1.05), b * s, end * rng.uniform(0.95, 1.05))
            _vessel(rng, canvas, colour, anat, arc, w, 0)
        for colour, w in ((vein, vein_w * 0.8), (artery, art_w * 0.8)):  # nasal vessels
            theta = sign * rng.uniform(0.4, 1.1)
            path = _walk(rng, anat, *origin(), theta, diam * rng.uniform(0.3, 0.45), rng.uniform(-0.8, 0.8) / diam)
            _vessel(rng, canvas, colour, anat, path, w, 0)
    for _ in range(int(rng.integers(2, 5))):  # small papillomacular vessels heading for the macula
        colour = vein if rng.random() < 0.5 else artery
        x, y = anat.disc_x - 0.6 * anat.disc_r, anat.disc_y + rng.uniform(-0.5, 0.5) * anat.disc_r
        path = _walk(rng, anat, x, y, math.pi + rng.normal(0.0, 0.25), diam * rng.uniform(0.1, 0.2), 0.0)
        _vessel(rng, canvas, colour, anat, path, art_w * rng.uniform(0.3, 0.45), 2)
    if neo:
        _draw_neovascularisation(rng, canvas, anat)
    # img *= 1 - darkening / 255, with the canvas area-reduced to 1x.
    factor = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    factor *= np.float32(-1.0 / 255.0)
    factor += np.float32(1.0)
    img *= factor


def _draw_neovascularisation(rng: np.random.Generator, canvas: np.ndarray, anat: _Anatomy) -> None:
    """A tangle of fine, wiggly, looping vessels at the disc margin (NVD) or on an arcade (NVE)."""
    if rng.random() < 0.6:  # NVD
        t = rng.uniform(0, 2 * math.pi)
        cx = anat.disc_x + math.cos(t) * anat.disc_r * rng.uniform(0.3, 1.0)
        cy = anat.disc_y + math.sin(t) * anat.disc_r * rng.uniform(0.3, 1.0)
    else:  # NVE, above or below the macula, roughly where the arcades run
        cx = anat.fovea_x + rng.uniform(-1.5, 1.5) * anat.disc_r
        cy = anat.fovea_y + (1 if rng.random() < 0.5 else -1) * rng.uniform(2.5, 3.5) * anat.disc_r
    spread = anat.disc_r * rng.uniform(0.6, 1.0)
    width = max(0.7, anat.size * 0.002)
    step = max(1.0, anat.size * 0.004)
    colour = _darkening(_NEO)
    for _ in range(int(rng.integers(8, 15))):
        x = cx + rng.normal(0.0, spread * 0.4)
        y = cy + rng.normal(0.0, spread * 0.4)
        theta = rng.uniform(0, 2 * math.pi)
        pts = [(x, y)]
        for _ in range(int(rng.integers(10, 24))):
            theta += rng.normal(0.0, 0.6)
            if math.hypot(x - cx, y - cy) > spread:  # stay in the tuft
                theta = math.atan2(cy - y, cx - x) + rng.normal(0.0, 0.4)
            x += step * math.cos(theta)
            y += step * math.sin(theta)
            pts.append((x, y))
        path = _clip_path(np.asarray(pts), anat)
        _polyline(canvas, path, np.full(len(path), width), colour)


# --------------------------------------------------------------------------------------------------------------
# Lesions
# --------------------------------------------------------------------------------------------------------------

#: How a lesion mask is composited: ("mul", factor) multiplies the background by ``factor`` (dark red lesions
#: keep the local tone); ("mix", colour) blends towards ``colour`` (exudates, cotton-wool spots).
_Mode = tuple[str, np.ndarray]
_RED: _Mode = ("mul", np.array([0.58, 0.28, 0.34], dtype=np.float32))
_DEEP_RED: _Mode = ("mul", np.array([0.5, 0.2, 0.24], dtype=np.float32))


@dataclass
class _Patch:
    """A lesion's opacity mask over the image window whose top-left pixel is ``(x0, y0)``."""

    x0: int
    y0: int
    mask: np.ndarray

    def box(self) -> tuple[int, int, int, int] | None:
        """Tight box of ``mask > _BOX_THRESHOLD`` in image pixels (x1/y1 exclusive), or ``None`` if empty."""
        ys, xs = np.nonzero(self.mask > _BOX_THRESHOLD)
        if ys.size == 0:
            return None
        x0, y0 = self.x0 + int(xs.min()), self.y0 + int(ys.min())
        return (x0, y0, self.x0 + int(xs.max()) + 1, self.y0 + int(ys.max()) + 1)


def _window(size: int, x: float, y: float, extent: float) -> tuple[int, int, int, int]:
    """Pixel window ``(x0, y0, width, height)`` around ``(x, y)`` covering ``extent`` px plus a margin."""
    x0 = max(0, int(math.floor(x - extent - 2)))
    y0 = max(0, int(math.floor(y - extent - 2)))
    x1 = min(size, int(math.ceil(x + extent + 3)))
    y1 = min(size, int(math.ceil(y + extent + 3)))
    return x0, y0, x1 - x0, y1 - y0


_Ellipse = tuple[float, float, float, float, float]  # centre x, centre y, semi-axes a, b, angle (radians)


def _ellipses(x0: int, y0: int, w: int, h: int, shapes: list[_Ellipse]) -> np.ndarray:
    """Union of filled, anti-aliased ellipses (image coordinates) on a ``(h, w)`` float32 window at ``(x0, y0)``."""
    m = np.zeros((h, w), dtype=np.uint8)
    one = 1 << _SHIFT
    for cx, cy, a, b, angle in shapes:
        centre = (int(round((cx - x0) * one)), int(round((cy - y0) * one)))
        axes = (max(1, int(round(a * one))), max(1, int(round(b * one))))
        cv2.ellipse(m, centre, axes, math.degrees(angle), 0, 360, 255, -1, cv2.LINE_AA, _SHIFT)
    out = m.astype(np.float32)
    out *= np.float32(1.0 / 255.0)
    return out


# Each lesion maker draws its shape around ``(x, y)``; the matching ``_*_extent(size)`` bounds the distance of
# any drawn pixel from ``(x, y)`` and is what the placer keeps inside the field.


def _ma_extent(size: int) -> float:
    return max(1.5, size * 0.007) + 2


def _microaneurysm(rng: np.random.Generator, anat: _Anatomy, x: float, y: float) -> _Patch:
    """Small round dark-red dot, radius 0.4-0.7 % of the image side (at least 1.5 px)."""
    r = max(1.5, anat.size * rng.uniform(0.004, 0.007))
    x0, y0, w, h = _window(anat.size, x, y, r)
    return _Patch(x0, y0, _ellipses(x0, y0, w, h, [(x, y, r, r, 0.0)]) * np.float32(rng.uniform(0.85, 1.0)))


def _haem_extent(size: int) -> float:
    return max(2.0, size * 0.022) * 2.4 + 3


def _haemorrhage(rng: np.random.Generator, anat: _Anatomy, x: float, y: float) -> _Patch:
    """Dot/blot (union of a few ellipses) or flame (elongated along the nerve fibres, radial to the disc)."""
    size = anat.size
    r = max(2.0, size * rng.uniform(0.006, 0.022))
    if rng.random() < 0.25:  # flame
        along = math.atan2(y - anat.disc_y, x - anat.disc_x) + rng.normal(0.0, 0.15)
        a, b = r * rng.uniform(1.6, 2.4), r * rng.uniform(0.35, 0.55)
        x0, y0, w, h = _window(size, x, y, a + 2)
        m = cv2.GaussianBlur(_ellipses(x0, y0, w, h, [(x, y, a, b, along)]), (0, 0), 0.8)
    else:  # dot / blot
        x0, y0, w, h = _window(size, x, y, 1.5 * r + 2)
        shapes: list[_Ellipse] = []
        for _ in range(int(rng.integers(1, 5))):
            ox, oy = np.clip(rng.normal(0.0, 0.3 * r, size=2), -0.6 * r, 0.6 * r)
            ea, eb = r * rng.uniform(0.5, 0.85), r * rng.uniform(0.4, 0.75)
            shapes.append((x + ox, y + oy, ea, eb, rng.uniform(0, math.pi)))
        m = cv2.GaussianBlur(_ellipses(x0, y0, w, h, shapes), (0, 0), max(0.6, 0.1 * r))
    return _Patch(x0, y0, m * np.float32(rng.uniform(0.75, 0.95)))


def _exudate_extent(size: int) -> float:
    return size * (0.03 + 0.006) + 3


def _exudate_cluster(rng: np.random.Generator, anat: _Anatomy, x: float, y: float) -> _Patch:
    """Crisp yellow spots scattered (or in a partial ring) around ``(x, y)``: one patch for the cluster."""
    size = anat.size
    spread = size * rng.uniform(0.006, 0.03)
    x0, y0, w, h = _window(size, x, y, spread + size * 0.006 + 1)
    ring = rng.random() < 0.3
    spots: list[_Ellipse] = []
    for _ in range(int(rng.integers(1, 13))):
        if ring:  # circinate pattern
            t = rng.uniform(0, 2 * math.pi)
            ox, oy = spread * 0.8 * math.cos(t), spread * 0.8 * math.sin(t)
        else:
            ox, oy = np.clip(rng.normal(0.0, spread / 2, size=2), -spread, spread)
        r = max(1.0, size * rng.uniform(0.002, 0.006))
        spots.append((x + ox, y + oy, r, r, 0.0))
    return _Patch(x0, y0, _ellipses(x0, y0, w, h, spots) * np.float32(rng.uniform(0.8, 0.95)))


def _cws_extent(size: int) -> float:
    return max(2.5, size * 0.035) * 2.2 + 3


def _cotton_wool(rng: np.random.Generator, anat: _Anatomy, x: float, y: float) -> _Patch:
    """Soft, fluffy whitish patch: a few overlapping ellipses, blurred."""
    size = anat.size
    r = max(2.5, size * rng.uniform(0.018, 0.035))
    x0, y0, w, h = _window(size, x, y, 2.0 * r + 2)
    shapes: list[_Ellipse] = []
    for _ in range(int(rng.integers(2, 5))):
        ox, oy = np.clip(rng.normal(0.0, 0.3 * r, size=2), -0.6 * r, 0.6 * r)
        ea, eb = r * rng.uniform(0.5, 0.9), r * rng.uniform(0.35, 0.6)
        shapes.append((x + ox, y + oy, ea, eb, rng.uniform(0, math.pi)))
    m = cv2.GaussianBlur(_ellipses(x0, y0, w, h, shapes), (0, 0), 0.3 * r)
    return _Patch(x0, y0, m * np.float32(rng.uniform(0.45, 0.65)))


def _preretinal_extent(size: int) -> float:
    return size * 0.07 + 4


def _preretinal(rng: np.random.Generator, anat: _Anatomy, x: float, y: float) -> _Patch:
    """Boat-shaped pre-retinal haemorrhage: an ellipse with its top cut flat (the fluid level)."""
    size = anat.size
    a = size * rng.uniform(0.04, 0.07)
    b = a * rng.uniform(0.55, 0.75)
    x0, y0, w, h = _window(size, x, y, a + 2)
    m = _ellipses(x0, y0, w, h, [(x, y, a, b, rng.normal(0.0, 0.05))])
    level = y - b * rng.uniform(0.1, 0.4)
    rows = np.arange(y0, y0 + h, dtype=np.float32)[:, None]
    m *= np.clip(rows - np.float32(level) + np.float32(0.5), 0.0, 1.0)
    m = cv2.GaussianBlur(m, (0, 0), 0.8)
    return _Patch(x0, y0, m * np.float32(0.95))


def _lesion_plan(rng: np.random.Generator, grade: int) -> dict[str, int]:
    """How many of each finding a photograph of ``grade`` gets (``hard_exudate`` counts clusters)."""
    plan = dict.fromkeys(("microaneurysm", "haemorrhage", "hard_exudate", "cotton_wool_spot", "preretinal", "neo"), 0)
    if grade == 1:
        plan["microaneurysm"] = int(rng.integers(2, 9))
    elif grade == 2:
        plan["microaneurysm"] = int(rng.integers(3, 16))
        plan["haemorrhage"] = int(rng.integers(0, 10))
        plan["hard_exudate"] = int(rng.integers(0, 5))
        if plan["haemorrhage"] + plan["hard_exudate"] == 0:
            plan["haemorrhage" if rng.random() < 0.5 else "hard_exudate"] = 1
        plan["cotton_wool_spot"] = int(rng.random() < 0.3)
    elif grade >= 3:
        plan["microaneurysm"] = int(rng.integers(8, 26))
        plan["haemorrhage"] = int(rng.integers(21, 41))  # dealt round the quadrants: >= 5 in each (4-2-1 rule)
        plan["hard_exudate"] = int(rng.integers(2, 9))
        plan["cotton_wool_spot"] = int(rng.integers(1, 6))
        if grade == 4:  # neovascularisation and/or pre-retinal haemorrhage
            roll = rng.random()
            plan["neo"] = int(roll < 0.75)
            plan["preretinal"] = int(roll >= 0.45)
    return plan


class _Placer:
    """Rejection sampler of lesion centres inside the field and clear of the optic disc."""

    def __init__(self, rng: np.random.Generator, anat: _Anatomy) -> None:
        self.rng = rng
        self.anat = anat

    def sample(
        self, extent: float, *, quadrant: int | None = None, near: tuple[float, float, float] | None = None
    ) -> tuple[float, float] | None:
        """A centre whose ``extent``-disc lies inside the field and off the disc, or ``None`` after 64 tries.

        ``quadrant`` q restricts to the angles ``[q pi/2, (q + 1) pi/2)`` around the field centre, counted from
        +x towards +y in image coordinates (0 lower right, 1 lower left, 2 upper left, 3 upper right);
        ``near=(x, y, r)`` restricts to a disc of radius ``r``.
        """
        a = self.anat
        limit = a.radius * 0.97 - extent * 1.42  # keeps the corners of the lesion's box inside the field too
        for _ in range(64):
            if near is not None:
                t = self.rng.uniform(0, 2 * math.pi)
                rr = near[2] * math.sqrt(self.rng.random())
                x, y = near[0] + rr * math.cos(t), near[1] + rr * math.sin(t)
            else:
                lo = 0.0 if quadrant is None else quadrant * math.pi / 2
                hi = 2 * math.pi if quadrant is None else lo + math.pi / 2
                t = self.rng.uniform(lo, hi)
                rr = limit * math.sqrt(self.rng.uniform(0.01, 1.0))
                x, y = a.cx + rr * math.cos(t), a.cy + rr * math.sin(t)
            if math.hypot(x - a.cx, y - a.cy) > limit:
                continue
            if math.hypot(x - a.disc_x, y - a.disc_y) < a.disc_r * 1.2 + extent:
                continue
            return x, y
        return None


_Maker = Callable[[np.random.Generator, _Anatomy, float, float], _Patch]


def _draw_lesions(
    rng: np.random.Generator, img: np.ndarray, anat: _Anatomy, grade: int, plan: dict[str, int]
) -> list[Lesion]:
    """Draw the planned lesions into ``img`` in place; return their records (canonical right-eye frame)."""
    place = _Placer(rng, anat)
    size = anat.size
    lesions: list[Lesion] = []
    posterior = (anat.fovea_x + anat.disc_r, anat.fovea_y, anat.radius * 0.6)
    macula = (anat.fovea_x, anat.fovea_y, 2.5 * anat.disc_r)

    def add(
        maker: _Maker, extent: float, mode: _Mode, record: str,
        quadrant: int | None = None, near: tuple[float, float, float] | None = None,
    ) -> bool:
        """Place, draw and record one lesion; a lesion whose box breaks the contract is re-placed (8 tries)."""
        for _ in range(8):
            pos = place.sample(extent, quadrant=quadrant, near=near)
            if pos is None:
                return False
            patch = maker(rng, anat, *pos)
            box = patch.box()
            if box is not None and _box_allowed(box, anat):
                _apply(img, patch, mode)
                lesions.append(Lesion(record, box))
                return True
        return False

    # Large lesions first so the small ones lie on top.
    for _ in range(plan["preretinal"]):
        central = (anat.cx, anat.cy, anat.radius * 0.75)
        add(_preretinal, _preretinal_extent(size), _DEEP_RED, "haemorrhage", near=central)
    for _ in range(plan["cotton_wool_spot"]):
        white = np.array([rng.uniform(225, 245), rng.uniform(215, 235), rng.uniform(190, 215)], dtype=np.float32)
        add(_cotton_wool, _cws_extent(size), ("mix", white), "cotton_wool_spot", near=posterior)
    placed = 0
    for i in range(plan["haemorrhage"]):
        placed += add(_haemorrhage, _haem_extent(size), _RED, "haemorrhage", quadrant=i % 4 if grade >= 3 else None)
    for i in range(64 if grade >= 3 else 0):  # severe NPDR must show > 20 of them: top up if placement failed
        if placed > 20:
            break
        placed += add(_haemorrhage, _haem_extent(size), _RED, "haemorrhage", quadrant=i % 4)
    for _ in range(plan["hard_exudate"]):
        yellow = np.array([rng.uniform(235, 252), rng.uniform(212, 238), rng.uniform(90, 140)], dtype=np.float32)
        near = macula if rng.random() < 0.5 else None  # half of the clusters gather around the macula
        add(_exudate_cluster, _exudate_extent(size), ("mix", yellow), "hard_exudate", near=near)
    for _ in range(plan["microaneurysm"]):
        add(_microaneurysm, _ma_extent(size), _RED, "microaneurysm", near=posterior if rng.random() < 0.6 else None)
    return lesions


def _box_allowed(box: tuple[int, int, int, int], anat: _Anatomy) -> bool:
    """The recording contract: all four box corners inside the field, and the box clear of the optic disc."""
    x0, y0, x1, y1 = box
    for x, y in ((x0, y0), (x1, y0), (x0, y1), (x1, y1)):
        if math.hypot(x - anat.cx, y - anat.cy) > anat.radius - 1.0:
            return False
    # Distance from the disc centre to the nearest point of the box, against the disc's larger semi-axis.
    nx = min(max(anat.disc_x, x0), x1)
    ny = min(max(anat.disc_y, y0), y1)
    return math.hypot(nx - anat.disc_x, ny - anat.disc_y) > anat.disc_r * 1.2


def _apply(img: np.ndarray, patch: _Patch, mode: _Mode) -> None:
    """Composite a lesion patch into ``img`` in place."""
    h, w = patch.mask.shape
    roi = img[patch.y0 : patch.y0 + h, patch.x0 : patch.x0 + w]
    a = patch.mask[..., None]
    kind, colour = mode
    if kind == "mul":
        roi *= np.float32(1.0) - a * (np.float32(1.0) - colour)
    else:
        roi *= np.float32(1.0) - a
        roi += a * colour


# --------------------------------------------------------------------------------------------------------------
# Camera
# --------------------------------------------------------------------------------------------------------------


def _finish(rng: np.random.Generator, img: np.ndarray, anat: _Anatomy, grid: _Grid) -> np.ndarray:
    """Exposure, light blur, circular field with a dark surround, Gaussian sensor noise; returns uint8 RGB."""
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 0.8))
    field = grid.dist(anat.cx, anat.cy)
    np.subtract(np.float32(anat.radius + 0.5), field, out=field)
    np.clip(field, 0.0, 1.0, out=field)
    exposure = np.float32(rng.uniform(0.85, 1.05))
    surround = np.float32(rng.uniform(1.0, 4.0))
    # Added equally to the three channels: surround level outside the field, rounding offset, luminance noise.
    offset = rng.standard_normal(field.shape, dtype=np.float32)
    offset *= np.float32(rng.uniform(1.2, 2.6))
    offset += surround + np.float32(0.5)
    offset -= surround * field
    field *= exposure
    img *= cv2.cvtColor(field, cv2.COLOR_GRAY2RGB)
    img += cv2.cvtColor(offset, cv2.COLOR_GRAY2RGB)
    np.clip(img, 0.0, 255.0, out=img)
    return img.astype(np.uint8)  # truncating x + 0.5: rounding
