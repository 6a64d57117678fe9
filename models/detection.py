"""Decode the lesion detector's ONNX outputs into lesions (numpy + OpenCV only: serving imports this).

Contract
--------
The detector (:mod:`models.architectures.detector`) returns, for a ``(N, 3, S, S)`` input, ``heatmap``
``(N, K, S/r, S/r)`` probabilities, ``size`` ``(N, 2, S/r, S/r)`` (box width, height in cells) and ``offset``
``(N, 2, S/r, S/r)`` (sub-cell centre, in cells), where the stride ``r = S / heatmap width``.

:func:`decode` keeps, per image and class, the cells that are the maximum of their 3×3 neighbourhood (the
CenterNet replacement for non-maximum suppression), at most ``top_k`` of them with score ≥ the class's
threshold, and turns each into a box in model-input pixels (edges): centre ``((i + offset) * r)``, size
``size * r``, clipped to ``[0, S]``. :func:`to_original` maps those boxes to original-image pixels with
:meth:`models.preprocess.FundusTransform.box_to_original`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from models.preprocess import FundusTransform

#: Lesion classes in heatmap channel order (the same names as :data:`datasets.synthetic.fundus.LESION_TYPES`).
LESION_CLASSES: tuple[str, ...] = ("microaneurysm", "haemorrhage", "hard_exudate", "cotton_wool_spot")
#: Default cap on detections per class and image.
TOP_K = 100

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Lesion:
    """One detected lesion: ``type`` (a class name), ``score`` in [0, 1], ``box`` ``(x0, y0, x1, y1)``."""

    type: str
    score: float
    box: Box


def _peaks(heat: np.ndarray) -> np.ndarray:
    """Boolean mask of cells equal to the maximum of their 3×3 neighbourhood (one class map ``(h, w)``)."""
    dilated = cv2.dilate(heat, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return heat >= dilated


def decode_image(heatmap: np.ndarray, size: np.ndarray, offset: np.ndarray, *, input_size: int,
                 classes: Sequence[str] = LESION_CLASSES, thresholds: Mapping[str, float] | float = 0.3,
                 top_k: int = TOP_K) -> list[Lesion]:
    """Lesions of one image from its ``heatmap`` ``(K, h, w)``, ``size`` and ``offset`` ``(2, h, w)``, with
    boxes in model-input pixels; sorted by descending score. ``thresholds``: one score floor for all classes
    or one per class name (a class missing from the mapping is not reported)."""
    k, h, w = heatmap.shape
    if len(classes) != k:
        raise ValueError(f"heatmap has {k} channels but {len(classes)} classes were given")
    if size.shape != (2, h, w) or offset.shape != (2, h, w):
        raise ValueError(f"size {size.shape} and offset {offset.shape} must be (2, {h}, {w})")
    stride = input_size / w
    out: list[Lesion] = []
    for c, name in enumerate(classes):
        floor = thresholds if isinstance(thresholds, (int, float)) else thresholds.get(name)
        if floor is None:
            continue
        heat = np.ascontiguousarray(heatmap[c], dtype=np.float32)
        ys, xs = np.nonzero(_peaks(heat) & (heat >= floor))
        if ys.size > top_k:
            keep = np.argpartition(-heat[ys, xs], top_k - 1)[:top_k]
            ys, xs = ys[keep], xs[keep]
        for y, x in zip(ys.tolist(), xs.tolist()):
            cx = (x + float(offset[0, y, x])) * stride
            cy = (y + float(offset[1, y, x])) * stride
            bw, bh = float(size[0, y, x]) * stride, float(size[1, y, x]) * stride
            box = (max(0.0, cx - bw / 2), max(0.0, cy - bh / 2), min(float(input_size), cx + bw / 2),
                   min(float(input_size), cy + bh / 2))
            out.append(Lesion(type=name, score=float(heat[y, x]), box=box))
    out.sort(key=lambda lesion: -lesion.score)
    return out


def decode(outputs: Mapping[str, np.ndarray], *, input_size: int, classes: Sequence[str] = LESION_CLASSES,
           thresholds: Mapping[str, float] | float = 0.3, top_k: int = TOP_K) -> list[list[Lesion]]:
    """:func:`decode_image` for each image of a batch of ONNX outputs ``{"heatmap", "size", "offset"}``."""
    heat, size, offset = outputs["heatmap"], outputs["size"], outputs["offset"]
    return [decode_image(heat[i], size[i], offset[i], input_size=input_size, classes=classes,
                         thresholds=thresholds, top_k=top_k) for i in range(heat.shape[0])]


def to_original(lesions: Sequence[Lesion], transform: FundusTransform) -> list[Lesion]:
    """The same lesions with boxes mapped from model-input to original-image pixels (clipped to the image)."""
    return [Lesion(type=l.type, score=l.score, box=transform.box_to_original(l.box)) for l in lesions]
