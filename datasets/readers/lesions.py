"""Lesion names and masks → the canonical :class:`~datasets.readers.record.LesionBox` types and boxes.

Alias table
-----------
Category names (COCO ``categories[].name``, Pascal VOC ``object/name``) are matched after normalisation —
lower case, ``_`` and ``-`` read as spaces, runs of spaces collapsed — against :data:`LESION_ALIASES`:

==================  ======================================================================================
canonical type      accepted names
==================  ======================================================================================
microaneurysm       microaneurysm, microaneurysms, ma, mas
haemorrhage         haemorrhage, haemorrhages, hemorrhage, hemorrhages, he, hem, hemo, intraretinal
                    haemorrhage / hemorrhage (and plurals), retinal haemorrhage / hemorrhage (and plurals)
hard_exudate        hard exudate, hard exudates, ex, exudate, exudates
cotton_wool_spot    cotton wool spot, cotton wool spots, cotton wool, cws, se, soft exudate, soft exudates
==================  ======================================================================================

``exudate(s)`` alone means hard exudates, as in IDRiD, e-ophtha EX and DDR (which call cotton-wool spots
"soft exudates"). :data:`NON_LESIONS` (optic disc / cup, fovea, macula) are anatomy, ignored by default.
"""

from __future__ import annotations

import re

import cv2
import numpy as np

__all__ = ["LESION_ALIASES", "NON_LESIONS", "canonical_lesion", "mask_boxes", "normalise_name"]

LESION_ALIASES: dict[str, str] = {
    **dict.fromkeys(("microaneurysm", "microaneurysms", "ma", "mas"), "microaneurysm"),
    **dict.fromkeys(("haemorrhage", "haemorrhages", "hemorrhage", "hemorrhages", "he", "hem", "hemo",
                     "intraretinal haemorrhage", "intraretinal haemorrhages", "intraretinal hemorrhage",
                     "intraretinal hemorrhages", "retinal haemorrhage", "retinal haemorrhages",
                     "retinal hemorrhage", "retinal hemorrhages"), "haemorrhage"),
    **dict.fromkeys(("hard exudate", "hard exudates", "ex", "exudate", "exudates"), "hard_exudate"),
    **dict.fromkeys(("cotton wool spot", "cotton wool spots", "cotton wool", "cws", "se", "soft exudate",
                     "soft exudates"), "cotton_wool_spot"),
}

#: Anatomical categories some lesion datasets also annotate; readers skip them unless told otherwise.
NON_LESIONS: frozenset[str] = frozenset({"optic disc", "optic disk", "od", "optic cup", "oc", "fovea", "macula"})

def normalise_name(name: str) -> str:
    """Lower case, ``_``/``-`` as spaces, single spaces, stripped: the form :data:`LESION_ALIASES` uses."""
    return re.sub(r"\s+", " ", re.sub(r"[_\-]", " ", name)).strip().lower()


def canonical_lesion(name: str) -> str | None:
    """The canonical lesion type for a category ``name``, or ``None`` when the name is not a known lesion."""
    return LESION_ALIASES.get(normalise_name(name))


def mask_boxes(mask: np.ndarray) -> list[tuple[float, float, float, float]]:
    """Boxes ``(x0, y0, x1, y1)`` (x1/y1 exclusive) of the 8-connected components of ``mask``'s non-zero
    pixels, in scan order of their first pixel (OpenCV's labelling order). A colour mask counts a pixel as
    set when any channel is non-zero."""
    if mask.ndim == 3:
        channels = cv2.split(mask)  # OpenCV's per-channel max: ~10x faster than ndarray.max(axis=2) here
        mask = channels[0]
        for channel in channels[1:]:
            mask = cv2.max(mask, channel)
    binary = (mask > 0).view(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    return [(float(x), float(y), float(x + w), float(y + h))
            for x, y, w, h, _area in stats[1:n].tolist()]  # label 0 is the background
