"""Image-quality artefacts for synthetic fundus photographs, and the gradability truth they imply.

A grader rejects a photograph when some defect hides the smallest finding that decides a grade: a
microaneurysm (diameter about 1 % of the field-of-view diameter ``D``) or a small vessel. This module draws a
plan of such defects (:func:`sample_plan`), decides from the plan alone whether the photograph stays gradable
(:func:`judge`), and paints the defects onto a rendered photograph (:func:`apply`). The JPEG defect is
realised by the writer, which encodes with :func:`jpeg_quality` (95 normally).

Strengths and thresholds
------------------------
Every artefact has a strength ``s`` in ``[0, 1]`` (0 = absent). Strengths are scaled so that the grading
threshold is the same for all, :data:`THRESHOLDS` ``= 0.5``: ``s >= 0.5`` makes the photograph ungradable and
names the artefact in the reasons; a weaker artefact is visible but leaves the photograph gradable (it is
recorded in the strengths only). Field-loss artefacts share one rule: a photograph is ungradable when a
quarter or more of the field cannot be assessed (lost, masked, shadowed or too dark): that is as much retina
as one quadrant of the 4-2-1 rule, so severe NPDR could no longer be recognised, and it may hold the only
lesions.

===================  ====================================================  =================================
artefact             what ``s`` means physically (``D``: field diameter)   why the threshold ``s = 0.5``
===================  ====================================================  =================================
blur                 defocus: a pillbox point-spread function (as a        the blur disc's radius equals a
                     defocused lens gives) of radius ``0.024 D s``         microaneurysm's diameter (1.2 %
                                                                           of D): its peak contrast falls
                                                                           to 1/4 or less
underexposed         display levels scaled by ``2 ** (-4 s)``; sensor      1/4 of the brightness: green at
                     read noise added back at its usual level              15-25 levels, a microaneurysm's
                                                                           30 % contrast ~5 levels, at the
                                                                           noise level
overexposed          display gain ``E ** (2 s)``, ``E`` being the gain     a quarter of the field has lost
                     that clips the green channel (255) on a quarter of    all green (and red) detail
                     the field; red clips first
uneven_illumination  a smooth fall-off (one dark side, or a dark           a quarter of the field at 1/4
                     periphery as with a small pupil) leaving ``s / 2``    of its brightness or less
                     of the field below 1/4 of its brightness
lid_shadow           a dark band with a soft arc for an edge and           a quarter of the field is
                     out-of-focus lashes, from the top (or bottom),        shadowed
                     covering ``s / 2`` of the field
haze                 media opacity: a milky veil of weight ``v = 0.8 s``;  fine-detail contrast falls to
                     of the light that passes, a fraction ``0.5 s`` is     ~0.4: small vessels (5-10 %
                     forward-scattered (blurred over ~0.4 % of D)          contrast) sink into the noise
off_centre           the field is translated so that ``s / 2`` of its      a quarter of the field is
                     area leaves the image                                 outside the image
cut_field            ``s / 2`` of the field is masked to the surround:     a quarter of the field is
                     camera-mask chords, or an iris notch as when the      masked
                     aperture is not filled
jpeg_artefacts       the writer encodes with JPEG quality                  quality 15 or less: 8x8 blocks
                     ``round(25 - 20 s)`` (25 ... 5) instead of 95         go flat; microaneurysm-sized
                                                                           detail is quantised away
===================  ====================================================  =================================

Contracts
---------
* :func:`sample_plan` draws only from its ``rng``; :func:`apply` draws only from its ``rng``, and only for the
  artefacts present. The same generator states give byte-identical pixels and the same :class:`Geometry`.
* :func:`apply` never modifies its input; for a plan without pixel artefacts (clean, or only
  ``jpeg_artefacts``) it returns the input array itself and the identity geometry.
* Geometry: only ``off_centre`` moves content (by the integer translation ``(dx, dy)``); only ``cut_field``
  hides part of the field. The writer maps each lesion with :meth:`Geometry.map_box` (and masks with
  :meth:`Geometry.map_mask`) and **drops a lesion whose mapped box is ``None``**: a box with any corner
  outside the image or hidden by a cut. Lesions under a lid shadow, in a dark region or under haze are kept:
  the disease is there even where the photograph fails to show it, as grade/dme are kept for ungradable
  photographs.
* Cost at 1024 x 1024, one OpenCV thread, CPU time on the 2-vCPU Zen 3 machine: a clean (or JPEG-only) plan
  costs nothing; one artefact 3 ms (overexposed, off_centre) to ~21 ms (blur at low strength, haze); drawn
  degraded plans (1-2 artefacts) 13.6 ms on average, 29 ms at the 95th percentile. Smooth fields are
  computed on a grid 4x coarser (``min(h, w) // 256``) and upsampled once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from statistics import NormalDist
from types import MappingProxyType

import cv2
import numpy as np

ARTEFACTS: tuple[str, ...] = (
    "blur",
    "underexposed",
    "overexposed",
    "uneven_illumination",
    "lid_shadow",
    "haze",
    "off_centre",
    "cut_field",
    "jpeg_artefacts",
)

#: Strength at or above which an artefact makes a photograph ungradable (see the module docstring's table).
THRESHOLDS: Mapping[str, float] = MappingProxyType(dict.fromkeys(ARTEFACTS, 0.5))

#: JPEG quality of a photograph without ``jpeg_artefacts`` (the writer's normal quality).
CLEAN_JPEG_QUALITY = 95

#: Relative frequency of each artefact among degraded photographs (defocus and exposure problems are the
#: commonest reasons graders give in screening programmes; compression damage the rarest).
_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {
        "blur": 3.0,
        "underexposed": 3.0,
        "overexposed": 1.0,
        "uneven_illumination": 2.0,
        "lid_shadow": 2.0,
        "haze": 2.0,
        "off_centre": 1.0,
        "cut_field": 1.0,
        "jpeg_artefacts": 1.0,
    }
)
#: Strengths of sampled artefacts are uniform in this range, rounded to 3 decimals (exact in a CSV).
_STRENGTH_RANGE = (0.1, 1.0)
_DECIMALS = 3

#: Columns of ``quality.csv`` after ``image`` (see docs/synthetic.md, "Files"): gradable, reasons, strengths.
QUALITY_COLUMNS: tuple[str, ...] = ("gradable", "reasons", *ARTEFACTS)


class QualityError(ValueError):
    """Bad input to this module (unknown artefact, strength out of range, malformed image or CSV row)."""


# ------------------------------------------------------------------------------------------------------------
# Plans and truth
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArtefactPlan:
    """What to degrade: ``strengths`` maps every name in :data:`ARTEFACTS` to a strength in ``[0, 1]``.

    Built from a partial mapping (missing names get 0). Raises :class:`QualityError` for an unknown name or a
    strength that is not a finite number in ``[0, 1]``. Treat ``strengths`` as read-only.
    """

    strengths: dict[str, float]

    def __post_init__(self) -> None:
        unknown = sorted(set(self.strengths) - set(ARTEFACTS))
        if unknown:
            raise QualityError(f"unknown artefact(s) {unknown}; known: {', '.join(ARTEFACTS)}")
        full: dict[str, float] = {}
        for name in ARTEFACTS:
            value = self.strengths.get(name, 0.0)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
                raise QualityError(f"strength of {name} must be a number in [0, 1], got {value!r}")
            value = float(value)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise QualityError(f"strength of {name} must be in [0, 1], got {value}")
            full[name] = value
        object.__setattr__(self, "strengths", full)

    @property
    def degraded(self) -> bool:
        """Whether any artefact is present (strength > 0)."""
        return any(s > 0 for s in self.strengths.values())

    def present(self) -> tuple[str, ...]:
        """Names with strength > 0, in :data:`ARTEFACTS` order."""
        return tuple(name for name in ARTEFACTS if self.strengths[name] > 0)


@dataclass(frozen=True)
class QualityTruth:
    """Ground truth of a photograph's quality: ``gradable``; ``reasons`` (artefacts at or above threshold, in
    :data:`ARTEFACTS` order, empty iff gradable); ``strengths`` (every artefact's strength, 0 = absent)."""

    gradable: bool
    reasons: tuple[str, ...]
    strengths: dict[str, float]

    def csv_fields(self) -> tuple[str, ...]:
        """The values of :data:`QUALITY_COLUMNS`: ``1``/``0``, ``;``-joined reasons, 3-decimal strengths."""
        strengths = tuple(f"{self.strengths.get(name, 0.0):.{_DECIMALS}f}" for name in ARTEFACTS)
        return ("1" if self.gradable else "0", ";".join(self.reasons), *strengths)

    @classmethod
    def from_csv_fields(cls, row: Mapping[str, str], *, where: str = "quality.csv") -> QualityTruth:
        """Parse one ``quality.csv`` row (a mapping with the :data:`QUALITY_COLUMNS` keys).

        Raises :class:`QualityError` naming ``where`` (e.g. ``"DIR/quality.csv:12"``) for a missing column,
        a gradable flag other than 0/1, an unknown reason, a strength outside ``[0, 1]``, or a gradable flag
        that contradicts the reasons.
        """
        missing = [c for c in QUALITY_COLUMNS if c not in row]
        if missing:
            raise QualityError(f"{where}: missing column(s) {', '.join(missing)}")
        flag = row["gradable"].strip()
        if flag not in ("0", "1"):
            raise QualityError(f"{where}: gradable must be 0 or 1, got {flag!r}")
        reasons = tuple(r for r in row["reasons"].strip().split(";") if r)
        bad = [r for r in reasons if r not in ARTEFACTS]
        if bad:
            raise QualityError(f"{where}: unknown reason(s) {bad}; known: {', '.join(ARTEFACTS)}")
        if (flag == "1") != (not reasons):
            raise QualityError(f"{where}: gradable={flag} contradicts reasons {list(reasons)}")
        strengths: dict[str, float] = {}
        for name in ARTEFACTS:
            try:
                value = float(row[name])
            except ValueError:
                raise QualityError(f"{where}: {name} must be a number, got {row[name]!r}") from None
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise QualityError(f"{where}: {name} must be in [0, 1], got {value}")
            strengths[name] = value
        return cls(gradable=flag == "1", reasons=reasons, strengths=strengths)


def judge(plan: ArtefactPlan) -> QualityTruth:
    """Gradability implied by ``plan``: ungradable iff some strength ``>= THRESHOLDS[name]`` (a reason)."""
    reasons = tuple(name for name in ARTEFACTS if plan.strengths[name] >= THRESHOLDS[name])
    return QualityTruth(gradable=not reasons, reasons=reasons, strengths=dict(plan.strengths))


def sample_plan(
    rng: np.random.Generator,
    *,
    p_degraded: float = 0.25,
    force: str | None = None,
    strength: float | None = None,
) -> ArtefactPlan:
    """Draw a plan: clean with probability ``1 - p_degraded``, else 1 artefact (70 %) or 2 (30 %).

    Artefacts are chosen by their relative frequency in screening (defocus and exposure commonest), never
    under- and over-exposure together; each strength is uniform in [0.1, 1] rounded to 3 decimals, so about
    56 % of the drawn artefacts reach the threshold and the rest are visible but gradable.
    ``force=name`` returns a plan with only that artefact, at ``strength`` if given, else uniform in
    ``[THRESHOLDS[name], 1]`` (ungradable; for contact sheets and tests). Raises :class:`QualityError` for an
    unknown ``force``, a ``strength`` without ``force``, or ``p_degraded`` outside ``[0, 1]``.
    """
    if not 0.0 <= p_degraded <= 1.0:
        raise QualityError(f"p_degraded must be in [0, 1], got {p_degraded}")
    if force is not None:
        if force not in ARTEFACTS:
            raise QualityError(f"unknown artefact {force!r}; known: {', '.join(ARTEFACTS)}")
        if strength is None:
            strength = round(float(rng.uniform(THRESHOLDS[force], 1.0)), _DECIMALS)
        return ArtefactPlan({force: strength})
    if strength is not None:
        raise QualityError("strength is only meaningful with force=<artefact>")
    if rng.random() >= p_degraded:
        return ArtefactPlan({})
    k = 1 if rng.random() < 0.7 else 2
    weights = np.array([_WEIGHTS[n] for n in ARTEFACTS])
    picks = rng.choice(len(ARTEFACTS), size=k, replace=False, p=weights / weights.sum())
    chosen = [ARTEFACTS[i] for i in picks]
    if "underexposed" in chosen and "overexposed" in chosen:
        chosen.remove("overexposed")
    lo, hi = _STRENGTH_RANGE
    return ArtefactPlan({name: round(float(rng.uniform(lo, hi)), _DECIMALS) for name in chosen})


def jpeg_quality(plan: ArtefactPlan, *, default: int = CLEAN_JPEG_QUALITY) -> int:
    """JPEG quality the writer must encode with: ``round(25 - 20 s)`` for ``jpeg_artefacts`` of strength
    ``s > 0`` (25 ... 5), else ``default``."""
    s = plan.strengths["jpeg_artefacts"]
    return int(round(25 - 20 * s)) if s > 0 else int(default)


def recompress(image: np.ndarray, quality: int) -> np.ndarray:
    """``image`` (H, W, 3) uint8 RGB after a JPEG round trip at ``quality`` (1-100), e.g. for DICOM copies."""
    _check_image(image)
    ok, buf = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 BGR array
        raise QualityError("JPEG encoding failed")
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])


# ------------------------------------------------------------------------------------------------------------
# Geometry
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChordCut:
    """A straight mask edge: hides the points with ``nx * x + ny * y > c`` (output pixel coordinates)."""

    nx: float
    ny: float
    c: float

    def hides(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return x * self.nx + y * self.ny > self.c


@dataclass(frozen=True)
class NotchCut:
    """A round occluder (iris edge): hides the points closer than ``r`` to ``(cx, cy)`` (output pixels)."""

    cx: float
    cy: float
    r: float

    def hides(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (x - self.cx) ** 2 + (y - self.cy) ** 2 < self.r * self.r


Cut = ChordCut | NotchCut


@dataclass(frozen=True)
class Geometry:
    """How :func:`apply` moved and hid content, in pixels (pixel ``(i, j)`` has its centre at ``x=j, y=i``).

    ``dx``, ``dy``: integer translation of the content (``off_centre``): input ``(x, y)`` -> ``(x + dx,
    y + dy)``.
    ``field``: the field of view ``(cx, cy, radius)`` in the output. ``cuts``: regions of the output masked to
    the surround (``cut_field``). ``width``/``height``: the image size (unchanged by :func:`apply`).
    """

    width: int
    height: int
    field: tuple[float, float, float]
    dx: int = 0
    dy: int = 0
    cuts: tuple[Cut, ...] = ()

    @property
    def identity(self) -> bool:
        """True when nothing moved or was hidden: every box and mask maps to itself."""
        return self.dx == 0 and self.dy == 0 and not self.cuts

    def visible(self, x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
        """Whether output points lie in the closed image rectangle ``[0, width] x [0, height]`` and no cut."""
        xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        ok = (xa >= 0) & (xa <= self.width) & (ya >= 0) & (ya <= self.height)
        for cut in self.cuts:
            ok &= ~cut.hides(xa, ya)
        return ok

    def map_box(self, box: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
        """Translate ``(x0, y0, x1, y1)`` (x1/y1 exclusive); ``None`` if a corner leaves the image or is cut.

        The writer drops a lesion whose box maps to ``None`` (a partly hidden lesion is not annotated).
        """
        x0, y0, x1, y1 = (int(v) for v in box)
        if self.identity:
            return (x0, y0, x1, y1)
        out = (x0 + self.dx, y0 + self.dy, x1 + self.dx, y1 + self.dy)
        xs = np.array([out[0], out[2], out[0], out[2]], dtype=np.float64)
        ys = np.array([out[1], out[1], out[3], out[3]], dtype=np.float64)
        return out if bool(self.visible(xs, ys).all()) else None

    @cached_property
    def visible_mask(self) -> np.ndarray:
        """``(height, width)`` bool: output pixels not hidden by a cut (computed once)."""
        ok = np.ones((self.height, self.width), dtype=bool)
        if self.cuts:
            xs = np.arange(self.width, dtype=np.float64)[None, :]
            ys = np.arange(self.height, dtype=np.float64)[:, None]
            for cut in self.cuts:
                ok &= ~cut.hides(xs, ys)
        return ok

    def map_mask(self, mask: np.ndarray) -> np.ndarray:
        """Move a full-image mask ``(height, width)`` like the pixels; zero where content left or was cut.

        Returns a new array of the same dtype (the input itself for the identity geometry). Raises
        :class:`QualityError` for a mask of another shape.
        """
        if mask.shape[:2] != (self.height, self.width):
            raise QualityError(
                f"mask shape {mask.shape} does not match the image ({self.height}, {self.width})"
            )
        if self.identity:
            return mask
        out = _translate(mask, self.dx, self.dy, 0)
        if self.cuts:
            out[~self.visible_mask] = 0
        return out


# ------------------------------------------------------------------------------------------------------------
# Applying a plan
# ------------------------------------------------------------------------------------------------------------

_PIXEL_ARTEFACTS = tuple(a for a in ARTEFACTS if a != "jpeg_artefacts")
#: Read noise (grey levels, std) added back where an artefact removed or swamped the sensor noise.
_READ_NOISE = 1.6


def apply(
    image: np.ndarray, plan: ArtefactPlan, rng: np.random.Generator, *, field: tuple[float, float, float]
) -> tuple[np.ndarray, Geometry]:
    """Paint ``plan``'s pixel artefacts onto ``image``; return the new image and the :class:`Geometry`.

    ``image``: (H, W, 3) uint8 RGB, any aspect ratio, at least 16 px a side. ``field``: ``(cx, cy, radius)``
    of the circular field of view in pixels (pixel centres at integer coordinates; the field may extend beyond
    the image). The output has the input's shape and dtype and is a new array unless no pixel artefact is
    present, in which case the input itself is returned with the identity geometry. ``jpeg_artefacts`` is left
    to the writer (:func:`jpeg_quality`). Raises :class:`QualityError` for a malformed image or field.

    Order (physical): defocus blurs the retinal image; the field is translated; the light is then shaped in
    the camera's frame (media haze, uneven light, lid shadow, exposure); the mask is cut; read noise is added.
    """
    _check_image(image)
    cx, cy, radius = (float(v) for v in field)
    if not (math.isfinite(cx) and math.isfinite(cy) and math.isfinite(radius) and radius > 0):
        raise QualityError(f"field must be finite (cx, cy, radius) with radius > 0, got {field}")
    h, w = image.shape[:2]
    s = plan.strengths
    if not any(s[name] > 0 for name in _PIXEL_ARTEFACTS):
        return image, Geometry(width=w, height=h, field=(cx, cy, radius))

    frame = _Frame(h, w, (cx, cy, radius))
    surround = _surround_level(image, frame)
    img = np.ascontiguousarray(image)  # OpenCV needs positive strides (e.g. after a mirroring view)
    if s["blur"] > 0:
        img = _defocus(img, frame, s["blur"])
    dx = dy = 0
    if s["off_centre"] > 0:
        dx, dy = _off_centre_shift(rng, frame, s["off_centre"])
        img = _translate(img, dx, dy, surround)
        frame = _Frame(h, w, (cx + dx, cy + dy, radius))

    light: np.ndarray | None = None  # coarse RGB illumination map, in the camera's frame
    if s["uneven_illumination"] > 0:
        light = _uneven(rng, frame, s["uneven_illumination"])
    if s["lid_shadow"] > 0:
        shadow = _lid_shadow(rng, frame, s["lid_shadow"])
        light = shadow if light is None else light * shadow
    exposure = 1.0
    if s["underexposed"] > 0:
        exposure *= 2.0 ** (-4.0 * s["underexposed"])
    if s["overexposed"] > 0:
        exposure *= _overexposure_gain(img, frame, s["overexposed"])
    gain, add = light, None
    if s["haze"] > 0:
        keep, veil = _veil(rng, img, frame, s["haze"])
        gain = keep if light is None else light * keep
        add = veil if light is None else veil * light  # lit and shadowed like the retina behind it
    img = _compose(img, frame, gain, exposure, add)

    cuts: tuple[Cut, ...] = ()
    if s["cut_field"] > 0:
        img, cuts = _cut_field(rng, img, frame, s["cut_field"], surround)
    if s["blur"] > 0 or s["haze"] > 0 or s["underexposed"] > 0:
        img = _add_read_noise(rng, img)
    return img, Geometry(width=w, height=h, field=frame.field, dx=dx, dy=dy, cuts=cuts)


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise QualityError(f"image must be an (H, W, 3) uint8 RGB array, got {got}")
    if min(image.shape[:2]) < 16:
        raise QualityError(f"image must be at least 16 px a side, got {image.shape[:2]}")


class _Frame:
    """Image size, field, and a coarse grid (factor ``f``) on which smooth fields are computed.

    Coarse pixel ``j`` has its centre at full-resolution ``x = (j + 0.5) * w / lw - 0.5``, the convention of
    ``cv2.resize``, so a coarse map upsampled with ``cv2.resize`` lines up with the image.
    """

    def __init__(self, h: int, w: int, field: tuple[float, float, float]) -> None:
        self.h, self.w = h, w
        self.field = field
        self.cx, self.cy, self.r = field
        self.f = max(1, min(h, w) // 256)
        self.lw, self.lh = -(-w // self.f), -(-h // self.f)
        self.gx = ((np.arange(self.lw, dtype=np.float32) + 0.5) * np.float32(w / self.lw) - 0.5)[None, :]
        self.gy = ((np.arange(self.lh, dtype=np.float32) + 0.5) * np.float32(h / self.lh) - 0.5)[:, None]

    @cached_property
    def dist(self) -> np.ndarray:
        """Coarse distance to the field centre, in full-resolution pixels."""
        return np.sqrt((self.gx - np.float32(self.cx)) ** 2 + (self.gy - np.float32(self.cy)) ** 2)

    def downsample(self, img: np.ndarray) -> np.ndarray:
        """``img`` area-averaged onto the coarse grid."""
        if img.shape[:2] == (self.lh, self.lw):
            return img
        return cv2.resize(img, (self.lw, self.lh), interpolation=cv2.INTER_AREA)

    def upsample(self, low: np.ndarray) -> np.ndarray:
        if low.shape[:2] == (self.h, self.w):
            return low
        return cv2.resize(low, (self.w, self.h), interpolation=cv2.INTER_LINEAR)

    def field_points(self) -> tuple[np.ndarray, np.ndarray]:
        """Fixed, evenly spread points of the field disc (pixels), for area fractions."""
        return self.cx + self.r * _UNIT_X, self.cy + self.r * _UNIT_Y


def _sunflower(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points evenly covering the unit disc (Vogel's spiral): deterministic area sampling."""
    k = np.arange(n, dtype=np.float64)
    rho = np.sqrt((k + 0.5) / n)
    theta = k * math.pi * (3.0 - math.sqrt(5.0))
    return rho * np.cos(theta), rho * np.sin(theta)


_UNIT_X, _UNIT_Y = _sunflower(4096)


def _bisect(fn: Callable[[float], float], target: float, lo: float, hi: float, iters: int = 40) -> float:
    """A root of ``fn(x) = target`` on ``[lo, hi]`` for ``fn`` non-decreasing there (clamped to the ends)."""
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if fn(mid) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _segment_fraction(t: float) -> float:
    """Fraction of a unit disc beyond the chord at signed distance ``t`` (in [-1, 1]) from the centre."""
    t = min(1.0, max(-1.0, t))
    return (math.acos(t) - t * math.sqrt(1.0 - t * t)) / math.pi


def _chord_offset(fraction: float) -> float:
    """Signed distance ``t`` (unit radius) of the chord cutting off ``fraction`` of the disc."""
    return _bisect(lambda t: -_segment_fraction(t), -fraction, -1.0, 1.0)


def _surround_level(image: np.ndarray, frame: _Frame) -> float:
    """Mean grey level of the dark surround (sparse sample outside the field), 2.0 when there is none."""
    step = max(1, min(frame.h, frame.w) // 64)
    sub = image[::step, ::step]
    ys, xs = np.mgrid[0 : frame.h : step, 0 : frame.w : step]
    outside = (xs - frame.cx) ** 2 + (ys - frame.cy) ** 2 > (frame.r + 3) ** 2
    if not outside.any():
        return 2.0
    return float(sub[outside].mean())


def _translate(img: np.ndarray, dx: int, dy: int, fill: float) -> np.ndarray:
    """``img`` moved by ``(dx, dy)`` pixels; uncovered pixels get ``fill``."""
    h, w = img.shape[:2]
    out = np.empty_like(img)
    out[...] = np.asarray(fill).astype(img.dtype)
    if abs(dx) < w and abs(dy) < h:
        out[max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)] = img[
            max(0, -dy) : h + min(0, -dy), max(0, -dx) : w + min(0, -dx)
        ]
    return out


# --- defocus ------------------------------------------------------------------------------------------------


def _disc_kernel(radius: float) -> np.ndarray:
    """Anti-aliased pillbox of ``radius`` pixels, normalised to sum 1."""
    half = int(math.ceil(radius))
    c = np.arange(-half, half + 1, dtype=np.float32)
    d = np.sqrt(c[None, :] ** 2 + c[:, None] ** 2)
    k = np.clip(np.float32(radius + 0.5) - d, 0.0, 1.0)
    return k / k.sum()


def _filter_field(img: np.ndarray, frame: _Frame, k: int, kernel: np.ndarray) -> np.ndarray:
    """Convolve the retina (only) with ``kernel`` on a grid ``k`` times coarser; surround and rim stay sharp.

    The result is smooth at the coarse scale anyway (callers pick ``k`` well below the kernel's reach),
    so area-downsampling, filtering and linear upsampling cost a fraction of a full-resolution convolution.
    The coarse grid covers the largest multiple of ``k`` pixels (OpenCV's fast integer area path); the last
    ``< k`` columns/rows, at the image border, keep their original pixels. Normalised convolution (divide by
    the convolved field mask) keeps the dark surround out of the field's edge.
    """
    h, w = frame.h, frame.w
    hk, wk = h // k, w // k
    ring = np.zeros((hk * k, wk * k), dtype=np.uint8)  # field mask, 1/16 px precision
    centre = (int(round(frame.cx * 16)), int(round(frame.cy * 16)))
    cv2.circle(ring, centre, int(round(frame.r * 16)), 255, -1, cv2.LINE_AA, 4)
    src = img[: hk * k, : wk * k]
    if k == 1:
        low, mask = src.astype(np.float32), ring.astype(np.float32)
    else:
        low = cv2.resize(src, (wk, hk), interpolation=cv2.INTER_AREA).astype(np.float32)
        mask = cv2.resize(ring, (wk, hk), interpolation=cv2.INTER_AREA).astype(np.float32)
    mask *= np.float32(1.0 / 255.0)
    cv2.multiply(low, cv2.merge([mask, mask, mask]), dst=low)
    num = cv2.filter2D(low, -1, kernel, borderType=cv2.BORDER_REFLECT)
    den = np.maximum(cv2.filter2D(mask, -1, kernel, borderType=cv2.BORDER_REFLECT), np.float32(1e-3))
    blurred = cv2.divide(num, cv2.merge([den, den, den]), dtype=cv2.CV_8U)
    if k > 1:
        blurred = cv2.resize(blurred, (wk * k, hk * k), interpolation=cv2.INTER_LINEAR)
    if blurred.shape[:2] == (h, w):
        out = blurred
    else:
        out = img.copy()
        out[: hk * k, : wk * k] = blurred
    # The rim pixel (partly covered) and the surround come from the original: the field stop is in focus.
    cv2.copyTo(img, cv2.bitwise_not(_disc_mask(frame, frame.r - 1)), out)
    return out


def _defocus(img: np.ndarray, frame: _Frame, s: float) -> np.ndarray:
    """Pillbox blur of radius ``R = 0.024 * D * s`` (computed on a grid ``k ~ R / 2.5`` coarser).

    Area-down and linear-up resampling by ``k`` is itself a blur of variance about ``k**2 / 4``; the pillbox
    (variance ``R**2 / 4``) is shrunk to radius ``sqrt(R**2 - k**2)`` so that the total variance is the
    pillbox's own.
    """
    radius = 0.024 * 2 * frame.r * s
    if radius < 0.5:
        return img
    k = max(1, int(round(radius / 2.5)))
    inner = math.sqrt(radius * radius - k * k) if k > 1 else radius
    return _filter_field(img, frame, k, _disc_kernel(inner / k))


# --- illumination maps (coarse grid) ------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, frame: _Frame, cells: int) -> np.ndarray:
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (frame.lw, frame.lh), interpolation=cv2.INTER_CUBIC)


def _field_mean(img: np.ndarray, frame: _Frame) -> np.ndarray:
    """Mean RGB inside the central 80 % of the field (sparse sample)."""
    step = max(1, min(frame.h, frame.w) // 128)
    sub = img[::step, ::step].astype(np.float32)
    ys, xs = np.mgrid[0 : frame.h : step, 0 : frame.w : step]
    inside = (xs - frame.cx) ** 2 + (ys - frame.cy) ** 2 < (0.8 * frame.r) ** 2
    return sub[inside].mean(axis=0) if inside.any() else sub.reshape(-1, 3).mean(axis=0)


def _veil(
    rng: np.random.Generator, img: np.ndarray, frame: _Frame, s: float
) -> tuple[np.ndarray, np.ndarray]:
    """Media opacity as coarse maps ``(keep, add)``, applied as ``out = img * keep + add``.

    The light reaching the sensor is split like a hazy eye's point-spread function: a veil of weight
    ``v = 0.8 s`` (wide-angle scatter of the flash: a milky, warm white mixed with the fundus colour, brighter
    centrally where the flash enters, a little patchy); of the rest, a fraction ``b = 0.5 s`` is forward
    scattered (the image on the coarse grid, i.e. blurred over about ``f`` pixels) and the remainder passes
    unscattered. Fine-detail contrast falls to ``(1 - v)(1 - b)`` of the original before the veil's own
    brightness lowers it further.
    """
    v, b = 0.8 * s, 0.5 * s
    mean = _field_mean(img, frame)
    lum = float(mean.max())
    milky = np.array([1.0, 0.93, 0.80], dtype=np.float32) * np.float32(lum * rng.uniform(1.0, 1.2))
    colour = np.float32(0.35) * mean + np.float32(0.65) * milky
    rho2 = (frame.dist / np.float32(frame.r)) ** 2
    profile = np.float32(0.75) + np.float32(0.25) * np.exp(-rho2 / np.float32(0.6))
    profile *= np.float32(1.0) + np.float32(0.12) * _smooth_noise(rng, frame, 5)
    alpha = np.clip(profile * np.float32(v), 0.0, 0.95)[..., None]
    # Forward-scattered image: the coarse image, renormalised by the field's coverage so the rim stays lit.
    coarse = frame.downsample(img).astype(np.float32)
    cover = np.clip((np.float32(frame.r + 0.5 * frame.f) - frame.dist) / np.float32(frame.f), 0.0, 1.0)
    coarse /= np.maximum(cover, np.float32(0.25))[..., None]
    direct = np.float32(1.0) - alpha
    keep = np.repeat(direct * np.float32(1.0 - b), 3, axis=2)
    add = alpha * colour[None, None, :] + direct * np.float32(b) * coarse
    return keep, add


def _ramp(t: np.ndarray) -> np.ndarray:
    """0 for t <= 0, t^2 on [0, 1], then 2t - 1: a smooth start, then a straight descent."""
    t = np.maximum(t, np.float32(0.0))
    return np.where(t <= 1.0, t * t, np.float32(2.0) * t - np.float32(1.0))


def _uneven(rng: np.random.Generator, frame: _Frame, s: float) -> np.ndarray:
    """Coarse gain map: a fraction ``s / 2`` of the field ends below 1/4 of its brightness.

    70 %: one dark side (camera decentred on the pupil): iso-brightness arcs centred beyond the bright side,
    so the dark part is a crescent, with a faint bright crescent opposite; 30 %: a dark periphery around a lit
    centre (small pupil). Gain ``2 ** (-2 * ramp)`` of the depth into the dark part, capped at 7 stops down.
    """
    target = s / 2
    d_field = 2 * frame.r
    r = frame.r
    px, py = frame.field_points()
    if rng.random() < 0.7:
        theta = rng.uniform(0, 2 * math.pi)
        nx, ny = math.cos(theta), math.sin(theta)
        far = rng.uniform(0.8, 2.5)  # contours are circles about a point `far` radii beyond the bright rim
        ox, oy = frame.cx - nx * (far + 1) * r, frame.cy - ny * (far + 1) * r
        reach = (far + 2) * r  # distance from that point to the dark rim

        def depth_of(x: np.ndarray, y: np.ndarray) -> np.ndarray:  # 0 at the dark rim, grows inwards
            return reach - np.sqrt((x - ox) ** 2 + (y - oy) ** 2)

        pu = depth_of(px, py)
        depth = _bisect(lambda d: float(np.mean(pu < d)), target, 0.0, 2 * r)
        u = depth_of(frame.gx, frame.gy).astype(np.float32)
        width = d_field * (0.15 + 0.3 * s)
        stops = -2.0 * _ramp((np.float32(depth + width) - u) / np.float32(width))
        crescent = np.clip((u - np.float32(2 * r - 0.2 * d_field)) / np.float32(0.2 * d_field), 0.0, 1.0)
        stops += np.float32(0.6 * s) * crescent * crescent
    else:
        rho = frame.dist / np.float32(r)
        rho0 = math.sqrt(1.0 - target)  # rho > rho0 holds `target` of the field
        width = 0.15 + 0.3 * s
        stops = -2.0 * _ramp((rho - np.float32(rho0 - width)) / np.float32(width))
    gain = np.exp2(np.maximum(stops, np.float32(-7.0))).astype(np.float32)
    return cv2.merge([gain, gain, gain])


def _lid_shadow(rng: np.random.Generator, frame: _Frame, s: float) -> np.ndarray:
    """Coarse RGB gain: an eyelid shadow from the top (70 %) or bottom covering ``s / 2`` of the field.

    The lid is far out of focus: its shadow is a dark band with a very soft, slightly wavy arc for an edge,
    and the lashes are blurred, curved, tapering dark strands that cross into the field from the lid margin.
    """
    r, d_field = frame.r, 2 * frame.r
    flip = rng.random() >= 0.7
    curve = rng.uniform(0.0, 0.7)  # 0.5 follows the field's rim: an even crescent
    x_mid = frame.cx + rng.uniform(-0.2, 0.2) * r
    wave = rng.standard_normal(6)  # smooth waviness of the lid margin, along x

    def margin(x: np.ndarray) -> np.ndarray:
        """Canonical (top) lid margin for offset 0: the shadow is where ``y < margin(x) + offset``."""
        xn = np.clip((x - frame.cx) / r, -1.5, 1.5)
        wobble = 0.015 * d_field * np.polynomial.chebyshev.chebval(xn / 1.5, wave) / 3.0
        return frame.cy - r + curve * (x - x_mid) ** 2 / r + wobble

    def canon(y: np.ndarray) -> np.ndarray:  # mirror the bottom case onto the top
        return 2 * frame.cy - y if flip else y

    px, py = frame.field_points()
    below = canon(py) - margin(px)  # a point is shadowed when below < offset
    offset = _bisect(lambda o: float(np.mean(below < o)), s / 2, -2 * r, 3 * r)

    soft = 0.05 * d_field
    t = (margin(frame.gx) + np.float32(offset) - canon(frame.gy)) / np.float32(soft)  # > 0 inside the shadow
    band = np.clip(0.5 + 0.5 * t, 0.0, 1.0)
    band = (band * band * (3 - 2 * band)).astype(np.float32) * np.float32(rng.uniform(0.9, 0.98))

    lashes = np.zeros((frame.lh, frame.lw), dtype=np.uint8)
    sx, sy = frame.lw / frame.w, frame.lh / frame.h
    for _ in range(int(rng.integers(12, 36))):
        x0 = frame.cx + rng.uniform(-1.1, 1.1) * r
        y0 = float(margin(np.float64(x0))) + offset - rng.uniform(-0.01, 0.06) * d_field
        length = rng.uniform(0.05, 0.2) * d_field
        angle = rng.normal(0.0, 0.45) + 0.6 * (x0 - frame.cx) / r  # lashes fan out towards the sides
        bend = rng.uniform(-0.5, 0.5) * length
        tt = np.linspace(0.0, 1.0, 16)
        bx = x0 + length * math.sin(angle) * tt + bend * math.cos(angle) * tt * tt
        by = y0 + length * math.cos(angle) * tt - bend * math.sin(angle) * tt * tt
        by = 2 * frame.cy - by if flip else by
        pts = np.round(np.stack([(bx + 0.5) * sx - 0.5, (by + 0.5) * sy - 0.5], axis=1) * 16).astype(np.int32)
        thick = rng.uniform(0.006, 0.016) * d_field * sx
        shade = int(255 * rng.uniform(0.4, 0.85))
        for i, taper in enumerate((1.0, 0.7, 0.4)):  # root to tip
            run = pts[i * 5 : i * 5 + 6]
            cv2.polylines(lashes, [run], False, shade, max(1, int(round(thick * taper))), cv2.LINE_AA, 4)
    lash = cv2.GaussianBlur(lashes, (0, 0), max(0.8, 0.007 * d_field * sx)).astype(np.float32)
    lash *= np.float32(1.0 / 255.0)
    opacity = np.maximum(band, lash)
    # The lid transmits a little reddish-brown light; the shadow is not pure black.
    transmit = np.array([0.12, 0.07, 0.06], dtype=np.float32)
    return np.float32(1.0) - opacity[..., None] * (np.float32(1.0) - transmit)


def _overexposure_gain(img: np.ndarray, frame: _Frame, s: float) -> float:
    """Display gain ``E ** (2 s)``, where ``E`` clips the green channel on a quarter of the field.

    So ``s = 0`` is no change, ``s = 0.5`` clips exactly the brightest quarter of the field's green (the
    threshold) and ``s = 1`` squares that gain (a white-out). ``E`` is measured on a sparse sample.
    """
    step = max(1, min(frame.h, frame.w) // 128)
    ys, xs = np.mgrid[0 : frame.h : step, 0 : frame.w : step]
    inside = (xs - frame.cx) ** 2 + (ys - frame.cy) ** 2 < frame.r**2
    green = img[::step, ::step, 1][inside] if inside.any() else img[..., 1].ravel()
    level = float(np.quantile(green, 0.75))
    return max(1.0, 255.0 / max(level, 1.0)) ** (2.0 * s)


def _compose(
    img: np.ndarray, frame: _Frame, gain: np.ndarray | None, exposure: float, add: np.ndarray | None
) -> np.ndarray:
    """``(img * up(gain) + up(add)) * exposure`` inside the field, rounded and saturated to uint8.

    ``gain``/``add`` are coarse RGB maps (or ``None``). The surround (pixels the field does not cover at all)
    is copied from ``img``: no light reaches it, and the coarse maps never soften the field's edge.
    """
    if gain is None and add is None and exposure == 1.0:
        return img
    if gain is None:
        out = cv2.convertScaleAbs(img, alpha=exposure)
    else:
        out = cv2.multiply(img, frame.upsample(gain * np.float32(exposure)), dtype=cv2.CV_8U)
    if add is not None:
        out = cv2.add(out, frame.upsample(cv2.convertScaleAbs(add, alpha=exposure)))
    cv2.copyTo(img, cv2.bitwise_not(_disc_mask(frame, frame.r + 0.5)), out)
    return out


def _disc_mask(frame: _Frame, radius: float) -> np.ndarray:
    """``(h, w)`` uint8, 255 on the pixels whose centres lie within ``radius`` of the field centre."""
    mask = np.zeros((frame.h, frame.w), dtype=np.uint8)
    centre = (int(round(frame.cx * 16)), int(round(frame.cy * 16)))
    cv2.circle(mask, centre, max(0, int(round(radius * 16))), 255, -1, cv2.LINE_8, 4)
    return mask


# --- geometry artefacts -------------------------------------------------------------------------------------


def _off_centre_shift(rng: np.random.Generator, frame: _Frame, s: float) -> tuple[int, int]:
    """Integer translation moving a further ``s / 2`` of the field's area out of the image."""
    theta = rng.uniform(0, 2 * math.pi)
    ux, uy = math.cos(theta), math.sin(theta)
    px, py = frame.field_points()

    def lost(m: float) -> float:
        x, y = px + m * ux, py + m * uy
        return float(np.mean((x < -0.5) | (x > frame.w - 0.5) | (y < -0.5) | (y > frame.h - 0.5)))

    before = lost(0.0)
    m = _bisect(lambda v: lost(v) - before, s / 2, 0.0, 2 * frame.r + frame.w + frame.h)
    return int(round(m * ux)), int(round(m * uy))


def _cut_field(
    rng: np.random.Generator, img: np.ndarray, frame: _Frame, s: float, surround: float
) -> tuple[np.ndarray, tuple[Cut, ...]]:
    """Mask ``s / 2`` of the field to the surround: a camera-mask chord, a top-and-bottom crop, or an iris
    notch (the aperture not filled: a round, slightly soft dark intrusion). Returns the image and the cuts."""
    r = frame.r
    target = s / 2
    roll = rng.random()
    cuts: list[Cut] = []
    if roll < 0.6:
        if roll < 0.3:  # one chord on any side
            theta = rng.uniform(0, 2 * math.pi)
            parts = [(theta, target)]
        else:  # a symmetric crop, as a camera's rectangular mask: top/bottom or left/right
            theta = (math.pi / 2 if rng.random() < 0.7 else 0.0) + rng.normal(0.0, 0.03)
            parts = [(theta, target / 2), (theta + math.pi, target / 2)]
        for angle, frac in parts:
            nx, ny = math.cos(angle), math.sin(angle)
            t = _chord_offset(frac)
            cuts.append(ChordCut(nx, ny, nx * frame.cx + ny * frame.cy + t * r))
        soft = 0.0  # chords are in-focus mask edges: anti-aliased polygons
    else:
        theta = rng.uniform(0, 2 * math.pi)
        ux, uy = math.cos(theta), math.sin(theta)
        occ = r * rng.uniform(0.8, 1.5)
        px, py = frame.field_points()

        def covered(dist: float) -> float:  # decreasing in dist: negate for the bisection
            ox, oy = frame.cx + dist * ux, frame.cy + dist * uy
            return -float(np.mean((px - ox) ** 2 + (py - oy) ** 2 < occ * occ))

        dist = _bisect(covered, -target, 0.0, r + occ)
        cuts.append(NotchCut(frame.cx + dist * ux, frame.cy + dist * uy, occ))
        soft = 0.012 * 2 * r  # the iris edge is out of focus
    out = img.copy()
    for cut in cuts:
        alpha = _cut_alpha(frame, cut, soft)
        x, y, bw, bh = cv2.boundingRect(alpha)
        if bw == 0 or bh == 0:
            continue
        a = alpha[y : y + bh, x : x + bw].astype(np.float32)[..., None] * np.float32(1.0 / 255.0)
        roi = out[y : y + bh, x : x + bw].astype(np.float32)
        roi += (np.float32(surround) - roi) * a
        out[y : y + bh, x : x + bw] = cv2.convertScaleAbs(roi)
    return out, tuple(cuts)


def _cut_alpha(frame: _Frame, cut: Cut, soft: float) -> np.ndarray:
    """``(h, w)`` uint8 opacity of a cut (255 = hidden), 50 % on its boundary.

    A chord is filled as an anti-aliased polygon (its edge is in focus; ``soft`` is ignored); a notch's ramp,
    ``2 * soft`` px wide, is computed on the coarse grid and upsampled.
    """
    if isinstance(cut, ChordCut):
        alpha = np.zeros((frame.h, frame.w), dtype=np.uint8)
        big = 4.0 * (frame.w + frame.h + frame.r)
        # Foot of the perpendicular from the field centre onto the chord; a large quad on the hidden side.
        t = cut.c - (cut.nx * frame.cx + cut.ny * frame.cy)
        fx, fy = frame.cx + cut.nx * t, frame.cy + cut.ny * t
        ax, ay = -cut.ny * big, cut.nx * big  # along the chord
        quad = np.array(
            [[fx + ax, fy + ay], [fx - ax, fy - ay], [fx - ax + cut.nx * big, fy - ay + cut.ny * big],
             [fx + ax + cut.nx * big, fy + ay + cut.ny * big]]
        )
        cv2.fillPoly(alpha, [np.round(quad * 16).astype(np.int32)], 255, cv2.LINE_AA, 4)
        return alpha
    ox, oy = frame.gx - np.float32(cut.cx), frame.gy - np.float32(cut.cy)
    depth = np.float32(cut.r) - np.sqrt(ox * ox + oy * oy)
    low = np.clip(depth / np.float32(2 * soft) + np.float32(0.5), 0.0, 1.0)
    return cv2.convertScaleAbs(frame.upsample(low), alpha=255.0)


# --- noise --------------------------------------------------------------------------------------------------


def _noise_table(sigma: float) -> np.ndarray:
    """Lookup table: a uniform byte -> 128 + a rounded N(0, sigma) draw (inverse CDF at its quantile)."""
    q = np.array([NormalDist(0.0, sigma).inv_cdf((k + 0.5) / 256) for k in range(256)])
    return np.clip(128 + np.rint(q), 0, 255).astype(np.uint8)


_NOISE_LUT = _noise_table(_READ_NOISE)


def _add_read_noise(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Add luminance read noise (std :data:`_READ_NOISE` grey levels), saturated to uint8."""
    u = np.frombuffer(rng.bytes(img.shape[0] * img.shape[1]), dtype=np.uint8).reshape(img.shape[:2])
    n = cv2.LUT(u, _NOISE_LUT)
    return cv2.addWeighted(img, 1.0, cv2.merge([n, n, n]), 1.0, -128.0)  # exact: integers throughout


# ------------------------------------------------------------------------------------------------------------
# Field estimate
# ------------------------------------------------------------------------------------------------------------


def estimate_field(image: np.ndarray, *, threshold: int = 20) -> tuple[float, float, float]:
    """``(cx, cy, radius)`` of a bright circular field on a dark surround, from the area and centroid of the
    pixels whose red channel exceeds ``threshold``. Exact to about a pixel for a field wholly inside the image
    (as :func:`~datasets.synthetic.fundus.render_fundus` draws it); underestimates a field cut by the border.
    Raises :class:`QualityError` when no pixel is bright enough.
    """
    _check_image(image)
    inside = (image[..., 0] > threshold).astype(np.uint8)
    m = cv2.moments(inside, binaryImage=True)
    if m["m00"] == 0:
        raise QualityError(f"no pixel brighter than {threshold} in the red channel: cannot locate the field")
    return m["m10"] / m["m00"], m["m01"] / m["m00"], math.sqrt(m["m00"] / math.pi)
