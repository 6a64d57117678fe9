"""COCO instance annotations of synthetic lesions: compressed RLE masks via pycocotools.

Contract
--------
:func:`encode_mask` turns a :class:`~datasets.synthetic.lesions.LesionMask` (a binary mask cropped to its box)
into COCO's compressed RLE ``{"size": [h, w], "counts": str}`` of the whole ``h`` x ``w`` image, without
building the full-image mask: the run lengths of the column-major (Fortran order) image are computed from the
crop, and pycocotools compresses them (``frPyObjects`` of an uncompressed RLE). :func:`annotation` adds the
bbox ``[x, y, w, h]`` (the crop, which is tight: every border row and column of the mask holds a pixel) and the
area (its pixel count), which are what pycocotools' ``toBbox``/``area`` give for the RLE (tested). :func:`categories` lists the four lesion categories with ids 1-4 in
:data:`~datasets.synthetic.lesions.LESION_TYPES` order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from datasets.synthetic.lesions import LESION_TYPES, LesionMask


def categories() -> list[dict[str, Any]]:
    """``[{"id": 1, "name": "microaneurysm", "supercategory": "lesion"}, ...]`` (ids 1-4)."""
    return [{"id": i + 1, "name": name, "supercategory": "lesion"} for i, name in enumerate(LESION_TYPES)]


def category_id(lesion_type: str) -> int:
    """COCO category id of a lesion type (``ValueError`` for an unknown one)."""
    return LESION_TYPES.index(lesion_type) + 1


def encode_mask(mask: LesionMask, height: int, width: int) -> dict[str, Any]:
    """Compressed RLE of ``mask`` placed in a ``height`` x ``width`` image (``ValueError`` if it sticks out or
    is empty)."""
    h, w = mask.bits.shape
    if mask.x0 < 0 or mask.y0 < 0 or mask.x0 + w > width or mask.y0 + h > height:
        raise ValueError(f"mask at ({mask.x0}, {mask.y0}) size {w}x{h} is not inside the {width}x{height} image")
    cols, rows = np.nonzero(mask.bits.T)  # column-major order: by column, then row
    if cols.size == 0:
        raise ValueError("empty mask")
    idx = (cols.astype(np.int64) + mask.x0) * height + (rows.astype(np.int64) + mask.y0)
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    starts = idx[np.r_[0, breaks]]
    ends = idx[np.r_[breaks - 1, idx.size - 1]] + 1
    counts = np.empty(2 * starts.size + 1, dtype=np.int64)
    counts[0] = starts[0]
    counts[1::2] = ends - starts
    counts[2:-1:2] = starts[1:] - ends[:-1]
    counts[-1] = height * width - ends[-1]
    if counts[-1] == 0:  # a mask reaching the last pixel: pycocotools' own encoder writes no trailing 0
        counts = counts[:-1]
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts.tolist()}, height, width)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def annotation(ann_id: int, image_id: int, lesion_type: str, mask: LesionMask, height: int, width: int,
               **attributes: Any) -> dict[str, Any]:
    """One COCO annotation (``iscrowd`` 0) with bbox/area from the RLE; extra ``attributes`` kept under that key."""
    kind = category_id(lesion_type)
    rle = encode_mask(mask, height, width)
    bh, bw = mask.bits.shape
    ann: dict[str, Any] = {
        "id": ann_id,
        "image_id": image_id,
        "category_id": kind,
        "bbox": [mask.x0, mask.y0, bw, bh],
        "area": int(np.count_nonzero(mask.bits)),
        "iscrowd": 0,
        "segmentation": rle,
    }
    if attributes:
        ann["attributes"] = attributes
    return ann
