"""Procedural renderer of colour fundus photographs with diabetic-retinopathy lesions (numpy + OpenCV).

Contract
--------
``render_fundus(rng, grade=g, laterality=l, size=s)`` returns a :class:`SyntheticFundus`: ``image`` is an
``(H, W, 3)`` uint8 RGB, C-contiguous array looking like a 45-degree fundus camera photograph (``size`` an int
for ``W = H = size``, or a ``(width, height)`` pair for a camera's sensor, e.g. ``(2592, 1944)``);
``lesions`` lists every recorded lesion with its tight box and binary mask (:mod:`datasets.synthetic.lesions`);
``findings`` is everything the grade depends on, and ``grade``/``dme`` are *derived* from them by the rules of
:mod:`datasets.synthetic.grading` (``grade`` asks for a grade; the drawing follows :func:`~.lesions.lesion_plan`
for it, and the recorded grade is what was actually drawn — the same except when a lesion could not be placed,
which the statistics in docs/synthetic.md show to be rare). The output depends only on the state of ``rng`` and
the arguments. The smaller side must be at least :data:`MIN_SIZE`.

What is drawn, in this order (geometry in :mod:`datasets.synthetic.anatomy`):

* the retina, computed at a sixth of the resolution and upsampled (everything in it is smooth): an
  orange-red tone with per-image pigmentation (light orange to dark brown-red) and exposure, vignetting from a
  slightly off-centre illumination, low-frequency mottling, choroidal tessellation (a meshwork of orange
  choroidal vessels with darker spaces, stronger in the periphery, in some fundi), a brighter peripapillary
  sheen, and a darker macula (macular pigment absorbs green and blue) with a darker fovea;
* the optic disc: a yellow-orange, slightly taller-than-wide ellipse with a pinker neuroretinal rim, temporal
  pallor, a pale yellow-white cup (cup/disc ratio 0.25-0.6) and, in some eyes, a peripapillary crescent;
* deep lesions, the vessel tree with its vascular signs (:mod:`datasets.synthetic.vessels`), then
  superficial lesions (:mod:`datasets.synthetic.lesions`);
* the camera: a light optical blur, the circular field of view (diameter 0.90-0.98 of the smaller image side,
  entirely inside the image, centre jittered by at most 1 % of the smaller side) with a sharp anti-aliased edge
  on a dark surround, luminance grain and read noise, and for a left eye the mirror image of the canonical
  right eye.

Coordinates (boxes, ``fovea``, ``disc``, ``field``) are in pixels of ``image``, pixel ``(x, y)`` being column x,
row y; points are pixel-centre coordinates.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from datasets.synthetic.anatomy import QUADRANTS, Anatomy, box_centre, quadrant_of, sample_anatomy
from datasets.synthetic.grading import Findings, has_dme, icdr_grade, is_referable
from datasets.synthetic.lesions import LESION_TYPES, Lesion, LesionMask, LesionPainter, Look, lesion_plan
from datasets.synthetic.vessels import VesselCanvas, draw_vessels

__all__ = ["LATERALITIES", "LESION_TYPES", "MIN_SIZE", "Lesion", "LesionMask", "SyntheticFundus", "render_fundus"]

LATERALITIES: tuple[str, ...] = ("L", "R")
MIN_SIZE = 64


@dataclass(frozen=True)
class SyntheticFundus:
    """A rendered photograph and its ground truth (module docstring)."""

    image: np.ndarray
    grade: int
    laterality: str
    lesions: tuple[Lesion, ...]
    findings: Findings
    dme: bool
    field: tuple[float, float, float]  # centre x, centre y, radius
    disc: tuple[float, float]
    disc_diameter: float
    fovea: tuple[float, float]

    @property
    def referable(self) -> bool:
        """Moderate NPDR or worse, or DME."""
        return is_referable(self.grade, self.dme)


def _check_size(size: int | tuple[int, int]) -> tuple[int, int]:
    """``(width, height)`` of ``size``; ``ValueError`` unless both are integers >= :data:`MIN_SIZE`."""
    pair = (size, size) if not isinstance(size, (tuple, list)) else tuple(size)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in pair):
        raise ValueError(f"size must be an integer or a (width, height) pair of integers, got {size!r}")
    w, h = int(pair[0]), int(pair[1])
    if min(w, h) < MIN_SIZE:
        raise ValueError(f"image sides must be >= {MIN_SIZE} pixels, got {w}x{h}")
    return w, h


def render_fundus(
    rng: np.random.Generator, *, grade: int, laterality: str, size: int | tuple[int, int] = 512,
    timings: dict[str, float] | None = None,
) -> SyntheticFundus:
    """Render one fundus photograph meant to be of ICDR ``grade`` (0-4) for eye ``laterality`` ("L"/"R").

    Draws everything from ``rng`` (deterministic for a given generator state). ``timings``, if given, gets the
    seconds spent per stage added to it (``retina``, ``disc``, ``deep_lesions``, ``vessels``,
    ``superficial_lesions``, ``camera``, ``findings``; for :mod:`bench.synthetic`). Raises ``ValueError`` for a
    grade outside 0-4, an unknown laterality or a side < :data:`MIN_SIZE`.
    """
    if isinstance(grade, bool) or not isinstance(grade, (int, np.integer)) or not 0 <= int(grade) <= 4:
        raise ValueError(f"grade must be an integer 0-4, got {grade!r}")
    if laterality not in LATERALITIES:
        raise ValueError(f"laterality must be 'L' or 'R', got {laterality!r}")
    width, height = _check_size(size)
    small = min(width, height)

    diameter = min(small * rng.uniform(0.90, 0.98), small - 6.0)
    anat = sample_anatomy(rng, diameter)
    jitter = 0.01 * small
    ox = int(round((width - anat.side) / 2 + rng.uniform(-jitter, jitter)))
    oy = int(round((height - anat.side) / 2 + rng.uniform(-jitter, jitter)))
    ox, oy = min(max(ox, 0), width - anat.side), min(max(oy, 0), height - anat.side)

    clock = _Clock(timings)
    look = Look(gain=float(rng.uniform(0.82, 1.06)))
    img = _retina(rng, anat, look)
    clock.lap("retina")
    _draw_disc(rng, img, anat, look)
    clock.lap("disc")
    plan = lesion_plan(rng, int(grade))
    painter = LesionPainter(rng, img, anat, plan, look)
    painter.deep()
    clock.lap("deep_lesions")
    canvas = VesselCanvas(anat.side)
    signs = draw_vessels(rng, canvas, anat, beading=plan.beading, irma=plan.irma, nv=plan.nv)
    canvas.apply(img)
    clock.lap("vessels")
    painter.superficial()
    clock.lap("superficial_lesions")
    out = _camera(rng, img, anat, width, height, ox, oy)
    clock.lap("camera")

    # Into photograph coordinates: shift by the field's offset, then mirror a left eye.
    mirror = laterality == "L"
    lesions = [_place_lesion(les, ox, oy, width, mirror) for les in painter.lesions]

    def point(x: float, y: float) -> tuple[float, float]:
        x, y = x + ox, y + oy
        return (width - 1 - x if mirror else x, y)

    if mirror:
        out = cv2.flip(out, 1)
    field_c = point(anat.cx, anat.cy)
    fovea = point(anat.fovea_x, anat.fovea_y)
    per_quadrant = [0, 0, 0, 0]
    for les in lesions:
        if les.type == "haemorrhage" and les.subtype != "preretinal":
            per_quadrant[QUADRANTS.index(quadrant_of(*box_centre(les.box), *field_c, laterality))] += 1
    exudate_dd = _nearest_dd(lesions, fovea, anat.dd)
    findings = Findings(
        microaneurysms=sum(les.type == "microaneurysm" for les in lesions),
        haemorrhages_per_quadrant=(per_quadrant[0], per_quadrant[1], per_quadrant[2], per_quadrant[3]),
        preretinal_haemorrhages=sum(les.subtype == "preretinal" for les in lesions),
        hard_exudates=sum(les.type == "hard_exudate" for les in lesions),
        cotton_wool_spots=sum(les.type == "cotton_wool_spot" for les in lesions),
        venous_beading_quadrants=tuple(QUADRANTS[q] for q in signs.beading),
        irma_quadrants=tuple(QUADRANTS[q] for q in signs.irma),
        neovascularisation=signs.nv,
        vitreous_haemorrhage=painter.vitreous,
        laser_scars=painter.laser_scars,
        exudate_fovea_dd=exudate_dd,
    )
    clock.lap("findings")
    return SyntheticFundus(
        image=np.ascontiguousarray(out),
        grade=icdr_grade(findings),
        laterality=laterality,
        lesions=tuple(lesions),
        findings=findings,
        dme=has_dme(findings),
        field=(field_c[0], field_c[1], anat.radius),
        disc=point(anat.disc_x, anat.disc_y),
        disc_diameter=anat.dd,
        fovea=fovea,
    )


class _Clock:
    """Adds the seconds between laps to ``timings[stage]`` (a no-op without a dict)."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings
        self.t = time.perf_counter()

    def lap(self, stage: str) -> None:
        if self.timings is not None:
            now = time.perf_counter()
            self.timings[stage] = self.timings.get(stage, 0.0) + now - self.t
            self.t = now


def _place_lesion(les: Lesion, ox: int, oy: int, width: int, mirror: bool) -> Lesion:
    """A lesion of the working array in photograph coordinates."""
    assert les.mask is not None
    h, w = les.mask.bits.shape
    x0, y0 = les.mask.x0 + ox, les.mask.y0 + oy
    bits = les.mask.bits
    if mirror:
        x0 = width - (x0 + w)
        bits = np.ascontiguousarray(bits[:, ::-1])
    return Lesion(les.type, (x0, y0, x0 + w, y0 + h), les.subtype, LesionMask(x0, y0, bits))


def _nearest_dd(lesions: list[Lesion], fovea: tuple[float, float], dd: float) -> float | None:
    """Distance from the fovea to the nearest hard-exudate mask pixel, in disc diameters (None if none)."""
    best: float | None = None
    for les in lesions:
        if les.type != "hard_exudate" or les.mask is None:
            continue
        ys, xs = np.nonzero(les.mask.bits)
        d = float(np.hypot(xs + (les.mask.x0 - fovea[0]), ys + (les.mask.y0 - fovea[1])).min()) / dd
        best = d if best is None else min(best, d)
    return best


# --------------------------------------------------------------------------------------------------------------
# Retina and disc
# --------------------------------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-ish smooth noise on a ``size`` x ``size`` grid: a ``cells``-square grid upsampled."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def _retina(rng: np.random.Generator, anat: Anatomy, look: Look) -> np.ndarray:
    """The background retina, ``(side, side, 3)`` uint8 RGB, computed at 1/6 resolution and upsampled."""
    side = anat.side
    low = max(48, side // 6)
    k = side / low
    coords = (np.arange(low, dtype=np.float32) + np.float32(0.5)) * np.float32(k) - np.float32(0.5)
    gx, gy = coords[None, :], coords[:, None]
    f32 = np.float32

    pigment = rng.uniform(0.0, 1.0) ** 1.5
    red = rng.uniform(215.0, 262.0) * (1.0 - 0.25 * pigment) * look.gain
    tone = (red, red * rng.uniform(0.38, 0.54) * (1.0 - 0.25 * pigment), red * rng.uniform(0.10, 0.22) * (1.0 - 0.35 * pigment))

    off = rng.uniform(-0.08, 0.08, size=2) * anat.radius
    rho = np.sqrt((gx - f32(anat.cx + off[0])) ** 2 + (gy - f32(anat.cy + off[1])) ** 2) * f32(1.0 / anat.radius)
    np.minimum(rho, f32(1.3), out=rho)
    shade = f32(1.0) - f32(rng.uniform(0.3, 0.55)) * cv2.pow(rho, rng.uniform(2.0, 3.2))
    shade *= f32(1.0) + f32(0.05) * _smooth_noise(rng, low, 6) + f32(0.02) * _smooth_noise(rng, low, 20)

    # Choroidal tessellation: broad orange choroidal vessels (where band-limited noise is near zero) with
    # darker, browner islands between them, more visible towards the periphery.
    tess = f32(rng.uniform(0.0, 1.0) ** 2 * 0.3)
    ridge = _smooth_noise(rng, low, int(rng.integers(12, 20)))
    spaces = f32(1.0) - np.exp(-(ridge * ridge) * f32(1.0 / 0.7))
    spaces *= spaces
    spaces *= tess * (f32(0.3) + f32(0.7) * np.minimum(rho, f32(1.0)))

    # Macula: broad darkening around the fovea plus a darker foveal pit; a faint sheen around the disc.
    d2f = (gx - f32(anat.fovea_x)) ** 2 + (gy - f32(anat.fovea_y)) ** 2
    sigma = anat.dd * rng.uniform(0.7, 1.0)
    dark = np.exp(d2f * f32(-1.0 / (2 * sigma * sigma))) * f32(rng.uniform(0.22, 0.36))
    dark += f32(rng.uniform(0.06, 0.14)) * np.exp(d2f * f32(-1.0 / (2 * (0.2 * anat.dd) ** 2)))
    d2d = (gx - f32(anat.disc_x)) ** 2 + (gy - f32(anat.disc_y)) ** 2
    sheen = f32(rng.uniform(0.03, 0.08)) * np.exp(d2d * f32(-1.0 / (2 * (1.1 * anat.dd) ** 2)))

    base = shade * (f32(1.0) + sheen)
    r = base * (f32(1.0) - f32(0.55) * spaces) * (f32(1.0) - f32(0.8) * dark) * f32(tone[0])
    g = base * (f32(1.0) - spaces) * (f32(1.0) - f32(1.3) * dark) * f32(tone[1])
    g *= f32(1.0) + f32(0.04) * _smooth_noise(rng, low, 12)
    b = base * (f32(1.0) - spaces) * (f32(1.0) - f32(1.15) * dark) * f32(tone[2])
    lowres = cv2.merge([r, g, b])
    np.clip(lowres + np.float32(0.5), 0.0, 255.0, out=lowres)
    return cv2.resize(lowres.astype(np.uint8), (side, side), interpolation=cv2.INTER_CUBIC)


def _draw_disc(rng: np.random.Generator, img: np.ndarray, anat: Anatomy, look: Look) -> None:
    """Optic disc with rim, temporal pallor, cup and sometimes a peripapillary crescent; in place.

    The layers (disc, crescent, cup) are smooth, so they are folded into one ``keep`` (1 channel) and one
    ``add`` (RGB) map at half resolution (``out = img * keep + add``), upsampled once and applied in one pass.
    """
    f32 = np.float32
    a, b = anat.disc_r, anat.disc_ry
    pad = int(b * 1.5) + 3
    x0, x1 = max(0, int(anat.disc_x) - pad), min(anat.side, int(anat.disc_x) + pad)
    y0, y1 = max(0, int(anat.disc_y) - pad), min(anat.side, int(anat.disc_y) + pad)
    k = 2 if a > 16 else 1  # working scale
    lw, lh = -(-(x1 - x0) // k), -(-(y1 - y0) // k)
    px = (np.arange(lw, dtype=np.float32) * f32(k) + f32(x0 + (k - 1) / 2 - anat.disc_x))[None, :]
    py = (np.arange(lh, dtype=np.float32) * f32(k) + f32(y0 + (k - 1) / 2 - anat.disc_y))[:, None]
    tilt = rng.uniform(-0.15, 0.15)
    c, s = f32(math.cos(tilt)), f32(math.sin(tilt))
    u, v = (px * c + py * s) * f32(1.0 / a), (py * c - px * s) * f32(1.0 / b)
    q = np.sqrt(u * u + v * v)  # 1 on the disc margin
    gain = f32(look.gain)

    soft = max(0.8, 0.06 * a)
    disc = np.clip((f32(1.0) - q) * f32(a / soft) + f32(0.5), 0.0, 1.0) * f32(rng.uniform(0.82, 0.94))
    rim = np.array([rng.uniform(232, 252), rng.uniform(128, 160), rng.uniform(72, 105)], dtype=np.float32) * gain
    inner = np.array([rng.uniform(242, 255), rng.uniform(178, 205), rng.uniform(110, 140)], dtype=np.float32) * gain
    pallor = np.clip(-u, 0.0, 1.0) * f32(rng.uniform(0.2, 0.6))  # the temporal side is paler
    t = np.minimum(q, f32(1.0))
    t *= t
    t *= f32(1.0) - pallor  # rim colour towards the margin, less so temporally
    keep = f32(1.0) - disc
    add = (disc * (f32(1.0) - t))[..., None] * inner + (disc * t)[..., None] * rim

    if rng.random() < 0.3:  # peripapillary atrophy: a pale crescent on the temporal margin
        crescent = np.clip(f32(1.0) - np.abs(q - f32(1.12)) * f32(8.0), 0.0, 1.0) * np.clip(-u * f32(2.0), 0.0, 1.0)
        crescent *= f32(rng.uniform(0.3, 0.6))
        pale = np.array([215, 175, 125], dtype=np.float32) * gain
        add *= (f32(1.0) - crescent)[..., None]
        add += crescent[..., None] * pale
        keep *= f32(1.0) - crescent

    ratio = rng.uniform(0.25, 0.6)
    cup_dx = f32(-a * rng.uniform(0.0, 0.15))  # cups sit slightly temporally
    cu, cv = (px - cup_dx) * f32(1.0 / (a * ratio)), py * f32(1.0 / (b * ratio * rng.uniform(0.95, 1.1)))
    cup = np.clip((f32(1.0) - np.sqrt(cu * cu + cv * cv)) * f32(2.0), 0.0, 1.0) * f32(rng.uniform(0.55, 0.8))
    cup_col = np.array([rng.uniform(248, 255), rng.uniform(225, 245), rng.uniform(170, 205)], dtype=np.float32) * gain
    add *= (f32(1.0) - cup)[..., None]
    add += cup[..., None] * cup_col
    keep *= f32(1.0) - cup

    if k > 1:
        size = (lw * k, lh * k)
        keep = cv2.resize(keep, size, interpolation=cv2.INTER_LINEAR)
        add = cv2.resize(add, size, interpolation=cv2.INTER_LINEAR)
    roi = img[y0:y1, x0:x1]
    h, w = roi.shape[:2]
    out = roi.astype(np.float32)
    out *= cv2.merge([keep[:h, :w]] * 3)
    out += add[:h, :w]
    roi[...] = cv2.convertScaleAbs(out)


# --------------------------------------------------------------------------------------------------------------
# Camera
# --------------------------------------------------------------------------------------------------------------

_NOISE_SIGMA = 0.8
_GRAIN_SIGMA = 1.6
_NOISE_PAD = 64


@lru_cache(maxsize=2)
def _noise_tiles(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Luminance noise (the same in R, G, B) as its positive and negative parts, two uint8
    ``(height + pad, width + pad, 3)`` arrays (saturating uint8 adds are several times faster than a signed add);
    fixed per size, so only the crop offset is drawn per image. It is a fine grain (white noise blurred to about
    a pixel and a half, as demosaicing and the retina's own granularity give) plus white read noise."""
    rng = np.random.default_rng(0x5EED)
    shape = (height + _NOISE_PAD, width + _NOISE_PAD)
    grain = cv2.GaussianBlur(rng.standard_normal(shape, dtype=np.float32), (0, 0), 0.8)
    grain *= np.float32(_GRAIN_SIGMA / max(float(grain.std()), 1e-6))
    grain += rng.standard_normal(shape, dtype=np.float32) * np.float32(_NOISE_SIGMA)
    n = np.rint(grain)
    pos = np.clip(n, 0, 255).astype(np.uint8)
    neg = np.clip(-n, 0, 255).astype(np.uint8)
    return cv2.merge([pos, pos, pos]), cv2.merge([neg, neg, neg])


def _camera(rng: np.random.Generator, img: np.ndarray, anat: Anatomy, width: int, height: int, ox: int,
            oy: int) -> np.ndarray:
    """Optics blur, circular field on a dark surround, grain and read noise: the photograph."""
    img = cv2.GaussianBlur(img, (3, 3), rng.uniform(0.5, 0.9))
    # The field: an anti-aliased disc (a fundus camera's field stop is in focus: a sharp edge).
    mask = np.zeros(img.shape[:2], dtype=np.uint8)
    cv2.circle(mask, (int(round(anat.cx * 16)), int(round(anat.cy * 16))), int(round(anat.radius * 16)), 255, -1,
               cv2.LINE_AA, 4)
    cv2.multiply(img, cv2.merge([mask, mask, mask]), dst=img, scale=1.0 / 255.0)
    surround = int(rng.integers(0, 6))
    out = np.full((height, width, 3), surround, dtype=np.uint8)
    sub = out[oy : oy + anat.side, ox : ox + anat.side]
    np.maximum(sub, img, out=sub)
    pos, neg = _noise_tiles(width, height)
    for _ in range(int(rng.integers(1, 3))):  # 1-2 independent draws: noise std about 1.8-2.5 grey levels
        nx, ny = (int(v) for v in rng.integers(0, _NOISE_PAD, size=2))
        cv2.add(out, pos[ny : ny + height, nx : nx + width], dst=out)
        cv2.subtract(out, neg[ny : ny + height, nx : nx + width], dst=out)
    return out
