"""COCO "instances" JSON for any lesion dataset (boxes; segmentations are not needed and not read).

Layout
------
One COCO JSON — ``images`` [{``id``, ``file_name``, ``width``, ``height``}], ``categories`` [{``id``,
``name``}], ``annotations`` [{``id``, ``image_id``, ``category_id``, ``bbox`` ``[x, y, w, h]`` in pixels}] —
given as ``root`` itself, or the only ``*.json`` in ``root`` or ``root/annotations/``. ``file_name`` is
resolved against the JSON's folder, then the dataset folder (``root``; for a JSON given directly, its folder,
or the folder above when that is ``annotations/``), then the dataset folder's ``images/``.

Category names map to the canonical lesion types through
:data:`~datasets.readers.lesions.LESION_ALIASES` (``MA``, ``hemorrhage``, ``hard exudates``, ``soft
exudates``, ``cotton wool spots``, ...). Categories named in ``ignore`` (default
:data:`~datasets.readers.lesions.NON_LESIONS`: optic disc, fovea, ...) are skipped with their annotations; any
other unknown category is a :class:`DatasetError` that lists them all.

Every image in ``images`` gives one record with ``grade=None`` and ``lesions`` = its boxes, ``()`` when it has
no annotation (COCO lists an image only when it was annotated). A box is ``(x, y, x + w, y + h)``; boxes may
overhang the declared image size by at most :data:`BOX_TOLERANCE` pixels (rounding in annotation tools) and
are then clipped to it; more than that, a non-positive size or a non-numeric box is a problem reported with
the annotation's index.
"""

from __future__ import annotations

import json
import math
from collections.abc import Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets.readers.common import locate, searched
from datasets.readers.errors import DatasetError, Problems
from datasets.readers.lesions import NON_LESIONS, canonical_lesion, normalise_name
from datasets.readers.record import FundusRecord, LesionBox

#: Pixels a box may overhang the declared image size before it counts as wrong.
BOX_TOLERANCE = 1.0


@dataclass(frozen=True)
class CocoImage:
    """One entry of ``images`` with its boxes (``width``/``height`` ``None`` when the JSON omits them)."""

    file_name: str
    width: int | None
    height: int | None
    lesions: tuple[LesionBox, ...]


def load_json(path: Path) -> Any:
    """Parse the JSON file ``path``; :class:`DatasetError` naming the line of a syntax error."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason})") from None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _box(bbox: Any, width: int | None, height: int | None) -> tuple[float, float, float, float] | str:
    """The clipped ``(x0, y0, x1, y1)`` of a COCO ``bbox``, or a description of what is wrong with it."""
    values = [_number(v) for v in bbox] if isinstance(bbox, list) else []
    if len(values) != 4 or any(v is None for v in values):
        return f"bbox {bbox!r} is not [x, y, width, height] numbers"
    x, y, w, h = (float(v) for v in values)  # type: ignore[arg-type]
    if w <= 0 or h <= 0:
        return f"bbox {bbox!r} has a non-positive width or height"
    x1, y1 = x + w, y + h
    limit_x = width if width is not None else math.inf
    limit_y = height if height is not None else math.inf
    if x < -BOX_TOLERANCE or y < -BOX_TOLERANCE or x1 > limit_x + BOX_TOLERANCE or y1 > limit_y + BOX_TOLERANCE:
        return f"bbox {bbox!r} lies outside the {width}x{height} image"
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x1, limit_x), min(y1, limit_y)
    if not (x0 < x1 and y0 < y1):
        return f"bbox {bbox!r} is empty once clipped to the {width}x{height} image"
    return x0, y0, x1, y1


def _is_id(value: Any) -> bool:
    """COCO ids are integers (strings are tolerated); anything else cannot key a lookup."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _list(data: dict[str, Any], key: str, path: Path) -> list[Any]:
    value = data.get(key)
    if not isinstance(value, list):
        raise DatasetError(f"{path}: {key!r} must be a list (a COCO instances file has images, annotations and "
                           f"categories)")
    return value


def parse_coco(path: Path, *, ignore: Set[str] = NON_LESIONS) -> list[CocoImage]:
    """The images of the COCO file ``path`` with their canonical lesion boxes, in ``images`` order.

    ``ignore``: category names (compared after :func:`~datasets.readers.lesions.normalise_name`) whose
    annotations are dropped. Raises :class:`DatasetError` listing every problem of the file.
    """
    data = load_json(path)
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: not a COCO instances file (the top level must be an object)")
    images, annotations, categories = (_list(data, k, path) for k in ("images", "annotations", "categories"))
    problems = Problems(f"COCO annotations {path}")
    ignored = {normalise_name(n) for n in ignore}

    category: dict[Any, str | None] = {}  # id -> canonical type, None for an ignored category
    unknown: list[str] = []
    for i, c in enumerate(categories):
        if not isinstance(c, dict) or not _is_id(c.get("id")) or not isinstance(c.get("name"), str):
            problems.add(f"{path}: categories[{i}]", "needs an id and a name")
            continue
        kind = canonical_lesion(c["name"])
        if kind is None and normalise_name(c["name"]) not in ignored:
            problems.add(f"{path}: categories[{i}]", f"unknown lesion category {c['name']!r}")
            unknown.append(c["name"])
            continue
        category[c["id"]] = kind
    if unknown:
        problems.note("known lesion names: see datasets/readers/lesions.py LESION_ALIASES; pass "
                      f"ignore={{{', '.join(repr(u) for u in unknown)}}} to skip categories that are not lesions")

    sizes: dict[Any, tuple[int | None, int | None]] = {}
    names: dict[Any, str] = {}
    seen_names: dict[str, int] = {}
    for i, im in enumerate(images):
        where = f"{path}: images[{i}]"
        if not isinstance(im, dict) or not _is_id(im.get("id")) or not isinstance(im.get("file_name"), str) \
                or not im["file_name"]:
            problems.add(where, "needs an id and a file_name")
            continue
        if im["id"] in names:
            problems.add(where, f"image id {im['id']!r} already used by {names[im['id']]!r}")
            continue
        if im["file_name"] in seen_names:
            first = seen_names[im["file_name"]]
            problems.add(where, f"file_name {im['file_name']!r} already listed at images[{first}]")
            continue
        w, h = im.get("width"), im.get("height")
        if any(v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0) for v in (w, h)):
            problems.add(where, f"width/height {w!r}x{h!r} are not positive integers")
            continue
        names[im["id"]] = im["file_name"]
        seen_names[im["file_name"]] = i
        sizes[im["id"]] = (w, h)

    boxes: dict[Any, list[LesionBox]] = {k: [] for k in names}
    for i, a in enumerate(annotations):
        where = f"{path}: annotations[{i}]" + (f" (id {a['id']})" if isinstance(a, dict) and "id" in a else "")
        if not isinstance(a, dict) or not _is_id(a.get("category_id")) or not _is_id(a.get("image_id")):
            problems.add(where, "needs an image_id and a category_id")
            continue
        if a["category_id"] not in category:
            if not any(c.get("id") == a["category_id"] for c in categories if isinstance(c, dict)):
                problems.add(where, f"category_id {a.get('category_id')!r} is not in categories")
            continue  # an ignored (or already reported unknown) category
        if a["image_id"] not in names:
            problems.add(where, f"image_id {a['image_id']!r} is not in images")
            continue
        kind = category[a["category_id"]]
        if kind is None:
            continue
        box = _box(a.get("bbox"), *sizes[a["image_id"]])
        if isinstance(box, str):
            problems.add(where, box)
            continue
        boxes[a["image_id"]].append(LesionBox(kind, box))
    problems.raise_if_any()
    return [CocoImage(names[k], *sizes[k], tuple(v)) for k, v in boxes.items()]


def find_coco_json(root: Path) -> Path:
    """``root`` when it is a file, else the only ``*.json`` in ``root`` or ``root/annotations``."""
    if root.is_file():
        return root
    if not root.is_dir():
        raise DatasetError(f"no dataset at {root}: no such file or directory (expected a COCO instances JSON)")
    found = sorted(root.glob("*.json")) + sorted((root / "annotations").glob("*.json"))
    if len(found) != 1:
        listed = ", ".join(str(p) for p in found) or "none"
        raise DatasetError(f"{root}: expected exactly one COCO JSON in it or in annotations/, found {listed}; "
                           f"pass the JSON file itself as the data path")
    return found[0]


def read_coco(root: Path, *, ignore: Set[str] = NON_LESIONS) -> list[FundusRecord]:
    """One record per image of the COCO JSON found by :func:`find_coco_json` (see the module docstring)."""
    root = Path(root)
    path = find_coco_json(root)
    if root.is_dir():
        base = root
    else:  # the JSON itself: its folder, or the dataset folder above a COCO-style annotations/
        base = path.parent.parent if path.parent.name == "annotations" else path.parent
    dirs = list(dict.fromkeys([path.parent, base, base / "images"]))
    problems = Problems(f"COCO dataset {path}")
    records: list[FundusRecord] = []
    for i, entry in enumerate(parse_coco(path, ignore=ignore)):
        image = locate(dirs, entry.file_name)
        if image is None:
            problems.missing(f"{path}: images[{i}]", entry.file_name, searched(dirs))
            continue
        records.append(FundusRecord(image=image, grade=None, lesions=entry.lesions, source="coco"))
    problems.raise_if_any()
    return records
