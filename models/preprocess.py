"""The one fundus preprocessing, shared by training and serving (numpy + OpenCV, no torch).

Contract
--------
``preprocess(rgb, size)`` takes an ``(H, W, 3)`` uint8 RGB photograph and returns a :class:`Preprocessed`:

* ``tensor``: ``(3, size, size)`` float32, channel-first, normalised with :data:`MEAN`/:data:`STD` — the
  exact input of every Fovea model;
* ``crop``: ``(size, size, 3)`` uint8 RGB of the same pixels before normalisation (for augmentation in
  training and for rendering);
* ``transform``: the :class:`FundusTransform` that maps model-input pixels back to original-image pixels.

Steps: (1) locate the circular field of view by thresholding the dark surround on a reduced copy;
(2) take the integer square circumscribing that field (padding with black where the field is cut by the
image border); (3) resize it to ``size`` in one step (area averaging when reducing). The model card records :data:`NAME` and
:data:`VERSION`; serving refuses a model whose preprocessing version differs. Change the numbers here and
you must bump :data:`VERSION` and retrain.

Serving feeds several consumers from one photograph (the quality gate, the quality model, the grader, the
detector): :func:`crop_pyramid` gives all their steps 1-3 crops with one field and one cut of its square, each
with :func:`crop_field`'s transform, and :func:`from_crop` the steps after the crop.

Two recipes share steps 1-3 (:data:`RECIPES`, looked up by the card's preprocessing name):

* ``fovea.fundus-disc-crop`` (:data:`DISC_CROP`): the crop as photographed, ImageNet mean/std — the
  synthetic-trained models;
* ``fovea.fundus-contrast`` (:data:`CONTRAST`): step (4) *local contrast normalisation inside the field*
  (:func:`normalise_contrast`): subtract the field-masked local mean (Gaussian, σ = size/30), scale each
  channel to a fixed contrast, set everything outside the field to mid-grey; then ``(x - 0.5) / 0.5``. It
  brings raw camera photographs (dark surround, uneven light, colour casts, low contrast) and publisher-
  enhanced copies (the 256-px EyePACS set) to one appearance: what is left is vessels, lesions, disc and
  macula at a standard contrast. The real-photograph models use it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

NAME = "fovea.fundus-disc-crop"
VERSION = "2"  # 2: exact integer-square crop + one resize (v1 shifted up to 1 model px)

#: ImageNet statistics: the backbones' conventional normalisation, kept for weight reuse.
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

#: The field of view is where the brightest channel exceeds this fraction of the image's robust maximum.
_FIELD_THRESHOLD = 0.08
#: Field detection runs on a copy whose longest side is at most this (speed; the circle is large).
_DETECT_SIDE = 256
#: Below this fraction of the image covered by the field we assume no dark surround (e.g. a cropped photo).
_MIN_FIELD_FRACTION = 0.05


@dataclass(frozen=True)
class FundusTransform:
    """Affine map between model-input pixels and original-image pixels.

    The crop is the square ``[x0, x0 + scale * size) × [y0, y0 + scale * size)`` of the original image (in
    continuous coordinates where pixel ``i`` covers ``[i, i + 1)``); model pixel ``u`` covers
    ``[x0 + u * scale, x0 + (u + 1) * scale)``. Hence for pixel *indices* (centres)
    ``x = x0 + (u + 0.5) * scale - 0.5``, and for box *edges* ``X = x0 + U * scale``.
    """

    x0: float
    y0: float
    scale: float
    size: int
    original_width: int
    original_height: int

    def to_original(self, points: np.ndarray) -> np.ndarray:
        """Map ``(..., 2)`` model pixel indices ``(u, v)`` to original pixel indices ``(x, y)``."""
        pts = np.asarray(points, dtype=np.float64)
        return (pts + 0.5) * self.scale - 0.5 + np.array([self.x0, self.y0])

    def box_to_original(self, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        """Map an ``(x0, y0, x1, y1)`` box (edges) from model input to original pixels, clipped to the image."""
        s, w, h = self.scale, self.original_width, self.original_height
        # Built-in min/max: np.clip's result on Python floats (NaN and ±0.0 included), a tenth of its cost (up
        # to 400 detector boxes per photograph).
        return (float(min(max(self.x0 + box[0] * s, 0), w)), float(min(max(self.y0 + box[1] * s, 0), h)),
                float(min(max(self.x0 + box[2] * s, 0), w)), float(min(max(self.y0 + box[3] * s, 0), h)))

    def matrix_to_original(self) -> np.ndarray:
        """The 2×3 affine matrix from model pixel indices to original pixel indices (for ``cv2.warpAffine``)."""
        s = self.scale
        return np.array([[s, 0.0, self.x0 + 0.5 * s - 0.5], [0.0, s, self.y0 + 0.5 * s - 0.5]], dtype=np.float64)

    def map_to_original(self, image: np.ndarray, *, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
        """Warp a ``(size, size[, C])`` map (heatmap, overlay) onto the original image grid (zeros outside)."""
        return cv2.warpAffine(
            image,
            self.matrix_to_original(),
            (self.original_width, self.original_height),
            flags=interpolation,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )


@dataclass(frozen=True)
class Preprocessed:
    """Output of :func:`preprocess`: see the module docstring. ``image`` is what the model sees before
    mean/std (``crop`` itself for :data:`DISC_CROP`, the contrast-normalised crop for :data:`CONTRAST`)."""

    tensor: np.ndarray
    crop: np.ndarray
    transform: FundusTransform
    image: np.ndarray


def locate_field(rgb: np.ndarray) -> tuple[float, float, float]:
    """Return ``(cx, cy, radius)`` of the fundus field of view in original pixels (continuous coordinates).

    Thresholds the brightest channel against the dark surround on a reduced copy and takes the bounding box
    of the largest bright component. With no dark surround the whole image is the field.
    """
    h, w = rgb.shape[:2]
    f = min(1.0, _DETECT_SIDE / max(h, w))
    small = cv2.resize(rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA) if f < 1 else rgb
    fx, fy = small.shape[1] / w, small.shape[0] / h  # the factors cv2.resize actually applied
    bright = cv2.max(cv2.max(small[:, :, 0], small[:, :, 1]), small[:, :, 2])  # = max(axis=2), ~15x faster
    ref = float(np.percentile(bright, 99))
    whole = (w / 2.0, h / 2.0, max(w, h) / 2.0)
    if ref <= 0:
        return whole
    mask = (bright > ref * _FIELD_THRESHOLD).astype(np.uint8)
    # Opening removes text/labels burned into the surround, closing fills dark lesions and vessels.
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    mask = cv2.morphologyEx(cv2.morphologyEx(mask, cv2.MORPH_OPEN, k), cv2.MORPH_CLOSE, k)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return whole
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[largest, cv2.CC_STAT_AREA] < _MIN_FIELD_FRACTION * mask.size:
        return whole
    x, y, bw, bh = (int(v) for v in stats[largest, :4])
    # The field may be cut by the image border (top/bottom on many cameras): the circle's diameter is the
    # larger extent of the visible part, its centre the middle of the bounding box.
    return (x + bw / 2.0) / fx, (y + bh / 2.0) / fy, max(bw / fx, bh / fy) / 2.0


def preprocess(rgb: np.ndarray, size: int, *, field: tuple[float, float, float] | None = None,
               recipe: Recipe | None = None) -> Preprocessed:
    """Crop the fundus field, resize to ``size``×``size``, apply ``recipe``'s appearance step and normalise
    (see module docstring; default :data:`DISC_CROP`).

    ``field`` is a ``(cx, cy, radius)`` already found by :func:`locate_field` on this image (several crops of
    one image then share one detection); by default it is located here.
    """
    crop, transform = crop_field(rgb, size, field=field)
    return from_crop(crop, transform, recipe=recipe)


def from_crop(crop: np.ndarray, transform: FundusTransform, *, recipe: Recipe | None = None) -> Preprocessed:
    """Steps after the crop: ``recipe``'s appearance step and normalisation of a ``(size, size, 3)`` uint8 field
    crop (from :func:`crop_field` or :func:`crop_pyramid`) and its transform (default :data:`DISC_CROP`)."""
    recipe = recipe or DISC_CROP
    image = recipe.model_image(crop)
    return Preprocessed(tensor=recipe.to_tensor(image), crop=crop, transform=transform, image=image)


def field_square(field: tuple[float, float, float]) -> tuple[int, int, int]:
    """``(x0, y0, side)``: the integer square of original pixels circumscribing ``field`` (``(cx, cy, radius)``),
    which every crop of it resizes (an integer square keeps the map exact: ``cv2.resize`` maps the whole square
    onto the whole output)."""
    cx, cy, r = field
    side = max(1, int(np.ceil(2.0 * r)))
    return int(round(cx - side / 2.0)), int(round(cy - side / 2.0)), side


def _check_rgb(rgb: np.ndarray) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected (H, W, 3) uint8 RGB, got shape {rgb.shape} dtype {rgb.dtype}")


def _resize(square: np.ndarray, size: int) -> np.ndarray:
    """``square`` to ``size``×``size``: area averaging when reducing (vessels and microaneurysms are thin: no
    aliasing), bilinear when enlarging."""
    interp = cv2.INTER_AREA if square.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(square, (size, size), interpolation=interp)


def crop_field(rgb: np.ndarray, size: int, *, field: tuple[float, float, float] | None = None
               ) -> tuple[np.ndarray, FundusTransform]:
    """Steps 1-3 of :func:`preprocess` without normalisation: the ``(size, size, 3)`` uint8 crop and its
    transform (for measures taken on the photograph itself, such as the quality gate's)."""
    _check_rgb(rgb)
    h, w = rgb.shape[:2]
    x0, y0, side = field_square(locate_field(rgb) if field is None else field)
    crop = _resize(_padded_square(rgb, x0, y0, side), size)
    transform = FundusTransform(x0=float(x0), y0=float(y0), scale=side / size, size=size,
                                original_width=w, original_height=h)
    return crop, transform


def crop_pyramid(rgb: np.ndarray, sizes: Iterable[int], *, field: tuple[float, float, float] | None = None,
                 exact: Collection[int] = ()) -> dict[int, tuple[np.ndarray, FundusTransform]]:
    """``{size: (crop, transform)}`` for every size in ``sizes``: what :func:`crop_field` gives for each, for one
    photograph whose field square is cut once, and read as few times as exactness allows.

    Every transform is exactly ``crop_field(rgb, size, field=field)[1]``. Sizes are made largest first; a size
    not in ``exact`` that divides a crop already resized from the square (an integer multiple of it; the
    smallest such) is area-averaged from that crop, a few hundred pixels across, instead of from the whole
    square again. Such a derived crop covers the same square pixels with the same weights as the direct one, so
    it differs from :func:`crop_field`'s by at most 1 grey level (the larger crop's rounding). Every other size
    is resized from the square, bit-identical to :func:`crop_field`: averaging twice at a non-integer ratio
    blurs by a fraction of a pixel, which moved the grader's probabilities and the quality gate's measures
    measurably (docs/performance.md). Name in ``exact`` the sizes of consumers that amplify a grey level (the
    :data:`CONTRAST` recipe scales a low-contrast photograph's detail several-fold). ``field`` as for
    :func:`preprocess`; located here by default.
    """
    _check_rgb(rgb)
    h, w = rgb.shape[:2]
    x0, y0, side = field_square(locate_field(rgb) if field is None else field)
    square = _padded_square(rgb, x0, y0, side)
    out: dict[int, tuple[np.ndarray, FundusTransform]] = {}
    reduced: list[np.ndarray] = []  # crops area-averaged from the square, largest first
    for size in sorted(set(sizes), reverse=True):
        if size < 1:
            raise ValueError(f"crop sizes must be positive, not {size}")
        source = None if size in exact else next((c for c in reversed(reduced) if c.shape[0] % size == 0), None)
        if source is not None:  # an integer ratio: OpenCV's exact block mean
            crop = cv2.resize(source, (size, size), interpolation=cv2.INTER_AREA)
        else:
            crop = _resize(square, size)
            if size < side:
                reduced.append(crop)
        out[size] = crop, FundusTransform(x0=float(x0), y0=float(y0), scale=side / size, size=size,
                                          original_width=w, original_height=h)
    return out


def _padded_square(rgb: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
    """``rgb[y0:y0+side, x0:x0+side]`` with black where the square leaves the image (a view when it fits)."""
    h, w = rgb.shape[:2]
    if x0 >= 0 and y0 >= 0 and x0 + side <= w and y0 + side <= h:
        return rgb[y0:y0 + side, x0:x0 + side]
    out = np.zeros((side, side, 3), np.uint8)
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x0 + side), min(h, y0 + side)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
    return out


def normalize(crop: np.ndarray, mean: np.ndarray = MEAN, std: np.ndarray = STD) -> np.ndarray:
    """``(S, S, 3)`` uint8 RGB → ``(3, S, S)`` float32 normalised with ``mean``/``std`` (default ImageNet's):
    ``(float32(v) * float32(1/255) - mean) / std``."""
    if crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3:  # not what the recipes pass: per pixel
        x = crop.astype(np.float32) * np.float32(1.0 / 255.0)
        x -= mean
        x /= std
        return np.ascontiguousarray(x.transpose(2, 0, 1))
    mean, std = np.broadcast_to(np.asarray(mean), (3,)), np.broadcast_to(np.asarray(std), (3,))
    lut = _normalize_lut(mean.dtype.str, tuple(mean.tolist()), std.dtype.str, tuple(std.tolist()))
    out = np.empty((3, *crop.shape[:2]), np.float32)
    # A uint8 has 256 values: each channel is looked up in a table made by the same float32 arithmetic
    # (bit-identical to computing it per pixel, ~10x faster), straight into the channel-first planes.
    for c, plane in enumerate(cv2.split(np.ascontiguousarray(crop))):
        out[c] = cv2.LUT(plane, lut[c])
    return out


@lru_cache(maxsize=8)
def _normalize_lut(mean_dtype: str, mean: tuple[float, ...], std_dtype: str, std: tuple[float, ...]) -> np.ndarray:
    """``(3, 256)`` float32: :func:`normalize` of every uint8 value in each channel, by the very operations it
    would apply per pixel (read-only)."""
    x = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1).astype(np.float32) * np.float32(1.0 / 255.0)
    x -= np.array(mean, dtype=mean_dtype)
    x /= np.array(std, dtype=std_dtype)
    lut = np.ascontiguousarray(x.T)
    lut.flags.writeable = False
    return lut


#: Local contrast normalisation (:func:`normalise_contrast`): σ of the local-mean Gaussian as a fraction of
#: the crop side (Graham's Kaggle-DR recipe used radius/30 at radius 300: vessels and lesions pass, the
#: illumination gradient and the colour cast do not) ...
_CONTRAST_SIGMA = 1.0 / 30.0
#: ... and the standard deviation (grey levels) each channel's detail is scaled to inside the field.
_CONTRAST_TARGET_STD = 40.0
#: The level the field's detail is centred on and the surround is set to (mid-grey: 0 after (x - 0.5) / 0.5).
_CONTRAST_SURROUND = 128
#: The field's rim is dropped by this fraction of the side (the lens edge's bright ring and the blur's
#: boundary are not retina).
_CONTRAST_RIM = 1.0 / 64.0


def field_mask(crop: np.ndarray) -> np.ndarray:
    """``(S, S)`` uint8 0/1 mask of the imaged field in a field crop: everything but the dark surround
    connected to the crop's border (dark lesions and a dark macula inside the field stay in), its rim eroded
    by :data:`_CONTRAST_RIM`."""
    s = crop.shape[0]
    bright = cv2.max(cv2.max(crop[:, :, 0], crop[:, :, 1]), crop[:, :, 2])
    ref = float(np.percentile(bright, 99))
    dark = (bright <= max(ref * _FIELD_THRESHOLD, 4.0)).astype(np.uint8)
    n, labels = cv2.connectedComponents(dark, connectivity=4)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    surround = np.isin(labels, border[border > 0]) if n > 1 else np.zeros(dark.shape, bool)
    mask = (~surround).astype(np.uint8)
    e = max(1, round(s * _CONTRAST_RIM))
    return cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * e + 1, 2 * e + 1)))


def masked_local_mean(x: np.ndarray, mask: np.ndarray, sigma: float, *, reduce: int = 4) -> np.ndarray:
    """Gaussian local mean (σ = ``sigma`` px) of ``x`` (``(H, W)`` or ``(H, W, C)`` float32) over the pixels
    where ``mask`` (``(H, W)`` float32 0/1) is set — ``blur(x·m) / blur(m)`` — so a dark surround does not pull
    the mean down near the field's edge. The mean is smooth, so it is computed on a copy reduced ``reduce``×
    and enlarged back: the same to well under 1 % and several times cheaper than a full-size blur."""
    h, w = mask.shape
    rw, rh = max(8, w // reduce), max(8, h // reduce)
    small_sigma = max(0.5, sigma * rw / w)
    xm = x * (mask[:, :, None] if x.ndim == 3 else mask)
    weight = cv2.GaussianBlur(cv2.resize(mask, (rw, rh), interpolation=cv2.INTER_AREA), (0, 0), small_sigma)
    total = cv2.GaussianBlur(cv2.resize(xm, (rw, rh), interpolation=cv2.INTER_AREA), (0, 0), small_sigma)
    weight = np.maximum(weight, 1e-3)
    local = total / (weight[:, :, None] if total.ndim == 3 else weight)
    return cv2.resize(local, (w, h), interpolation=cv2.INTER_LINEAR)


def normalise_contrast(crop: np.ndarray) -> np.ndarray:
    """Step (4) of :data:`CONTRAST`: ``(S, S, 3)`` uint8 field crop → uint8 image of the same shape where,
    inside the field, each channel is ``128 + k_c (x - local mean)`` with ``k_c`` chosen so the channel's
    standard deviation is :data:`_CONTRAST_TARGET_STD`, and the surround is mid-grey (128).

    The local mean is a Gaussian average over the field only (``blur(x·m) / blur(m)``), so the dark surround
    does not pull the rim down into a bright ring. Illumination, vignetting, colour cast and exposure vanish;
    per-channel contrast scaling makes a low-contrast raw photograph and a strongly enhanced copy alike.
    """
    s = crop.shape[0]
    m = field_mask(crop).astype(np.float32)
    x = crop.astype(np.float32)
    local = masked_local_mean(x, m, s * _CONTRAST_SIGMA)
    detail = (x - local) * m[:, :, None]
    n = max(float(m.sum()), 1.0)
    std = np.sqrt((detail * detail).sum(axis=(0, 1)) / n) + 1.0  # +1: a flat channel is not amplified to noise
    out = _CONTRAST_SURROUND + detail * (_CONTRAST_TARGET_STD / std)
    out[m == 0] = _CONTRAST_SURROUND
    return np.clip(out, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Recipe:
    """One named, versioned preprocessing: steps 1-3, an optional appearance step, then ``mean``/``std``.
    A model card names one (``preprocessing.name``/``version``, ``input.mean``/``std``); serving looks it up
    with :func:`recipe_for` and refuses a model whose recipe or version this code does not implement."""

    name: str
    version: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    contrast: bool = False

    @property
    def surround(self) -> int:
        """The grey level outside the field in :meth:`model_image` (what augmentation fills uncovered corners
        with): black as photographed, mid-grey after contrast normalisation."""
        return _CONTRAST_SURROUND if self.contrast else 0

    def model_image(self, crop: np.ndarray) -> np.ndarray:
        """The uint8 image the model sees (before mean/std) from a :func:`crop_field` crop."""
        return normalise_contrast(crop) if self.contrast else crop

    def to_tensor(self, image: np.ndarray) -> np.ndarray:
        """:meth:`model_image` output → ``(3, S, S)`` float32 model input."""
        return normalize(image, np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32))


#: The crop as photographed, ImageNet statistics: the synthetic-trained models.
DISC_CROP = Recipe(name=NAME, version=VERSION, mean=tuple(MEAN.tolist()), std=tuple(STD.tolist()))
#: Crop + local contrast normalisation inside the field, ``(x - 0.5) / 0.5`` (EfficientNet-Lite's convention):
#: the real-photograph models. Version 1.
CONTRAST = Recipe(name="fovea.fundus-contrast", version="1", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                  contrast=True)
#: Every recipe this code implements, by name (one version each).
RECIPES: dict[str, Recipe] = {r.name: r for r in (DISC_CROP, CONTRAST)}


def recipe_for(name: str) -> Recipe:
    """The recipe called ``name``; ``KeyError`` naming the known ones otherwise."""
    try:
        return RECIPES[name]
    except KeyError:
        raise KeyError(f"unknown preprocessing {name!r}; this code implements {', '.join(RECIPES)}") from None
