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
(2) take the square circumscribing that field (padding with black where the field is cut by the image
border); (3) resize to ``size`` with area interpolation. The model card records :data:`NAME` and
:data:`VERSION`; serving refuses a model whose preprocessing version differs. Change the numbers here and
you must bump :data:`VERSION` and retrain.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

NAME = "fovea.fundus-disc-crop"
VERSION = "1"

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

    ``x_orig = x0 + x_model * scale`` and likewise for ``y``; ``scale`` is original pixels per model pixel.
    """

    x0: float
    y0: float
    scale: float
    size: int
    original_width: int
    original_height: int

    def to_original(self, points: np.ndarray) -> np.ndarray:
        """Map ``(..., 2)`` model-input ``(x, y)`` points to original-image coordinates."""
        pts = np.asarray(points, dtype=np.float64)
        return pts * self.scale + np.array([self.x0, self.y0])

    def box_to_original(self, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        """Map an ``(x0, y0, x1, y1)`` box from model input to original pixels, clipped to the image."""
        (a, b), (c, d) = self.to_original(np.array([[box[0], box[1]], [box[2], box[3]]]))
        w, h = self.original_width, self.original_height
        return (float(np.clip(a, 0, w)), float(np.clip(b, 0, h)), float(np.clip(c, 0, w)), float(np.clip(d, 0, h)))

    def matrix_to_original(self) -> np.ndarray:
        """The 2×3 affine matrix model→original (for ``cv2.warpAffine``)."""
        return np.array([[self.scale, 0.0, self.x0], [0.0, self.scale, self.y0]], dtype=np.float64)

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
    """Output of :func:`preprocess`: see the module docstring."""

    tensor: np.ndarray
    crop: np.ndarray
    transform: FundusTransform


def locate_field(rgb: np.ndarray) -> tuple[float, float, float]:
    """Return ``(cx, cy, radius)`` of the fundus field of view in original pixels.

    Thresholds the brightest channel against the dark surround on a reduced copy and fits the enclosing
    circle of the largest bright component. With no dark surround the whole image is the field.
    """
    h, w = rgb.shape[:2]
    f = min(1.0, _DETECT_SIDE / max(h, w))
    small = cv2.resize(rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA) if f < 1 else rgb
    bright = small.max(axis=2)
    ref = float(np.percentile(bright, 99))
    whole = (w / 2.0, h / 2.0, max(w, h) / 2.0)
    if ref <= 0:
        return whole
    mask = (bright > ref * _FIELD_THRESHOLD).astype(np.uint8)
    # Opening removes text/labels burned into the surround, closing fills dark lesions and vessels.
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    mask = cv2.morphologyEx(cv2.morphologyEx(mask, cv2.MORPH_OPEN, k), cv2.MORPH_CLOSE, k)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return whole
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[largest, cv2.CC_STAT_AREA] < _MIN_FIELD_FRACTION * mask.size:
        return whole
    x, y, bw, bh = (int(v) for v in stats[largest, :4])
    # The field may be cut by the image border (top/bottom on many cameras): the circle's radius is
    # half the larger extent of the visible part, its centre the middle of the bounding box.
    cx, cy, r = x + bw / 2.0, y + bh / 2.0, max(bw, bh) / 2.0
    return cx / f, cy / f, r / f


def preprocess(rgb: np.ndarray, size: int) -> Preprocessed:
    """Crop the fundus field, resize to ``size``×``size`` and normalise (see module docstring)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected (H, W, 3) uint8 RGB, got shape {rgb.shape} dtype {rgb.dtype}")
    h, w = rgb.shape[:2]
    cx, cy, r = locate_field(rgb)
    scale = 2.0 * r / size
    x0, y0 = cx - r, cy - r
    transform = FundusTransform(x0=x0, y0=y0, scale=scale, size=size, original_width=w, original_height=h)
    # Inverse map original→model; INTER_AREA only applies to cv2.resize, so downscale in two steps when the
    # reduction is large, to avoid aliasing (vessels and microaneurysms are thin).
    src = rgb
    pre = 1.0
    if scale > 2.0:
        pre = 1.0 / np.floor(scale)  # integer-factor area reduction first
        src = cv2.resize(rgb, (max(1, round(w * pre)), max(1, round(h * pre))), interpolation=cv2.INTER_AREA)
    s = scale * pre  # source pixels per model pixel after the pre-reduction
    m = np.array([[1.0 / s, 0.0, -x0 * pre / s], [0.0, 1.0 / s, -y0 * pre / s]], dtype=np.float64)
    crop = cv2.warpAffine(src, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return Preprocessed(tensor=normalize(crop), crop=crop, transform=transform)


def normalize(crop: np.ndarray) -> np.ndarray:
    """``(S, S, 3)`` uint8 RGB → ``(3, S, S)`` float32 normalised with :data:`MEAN`/:data:`STD`."""
    x = crop.astype(np.float32) * np.float32(1.0 / 255.0)
    x -= MEAN
    x /= STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))
