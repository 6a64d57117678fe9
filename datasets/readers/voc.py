"""Pascal VOC annotation XML, parsed safely and with line numbers.

Security: annotation files come from downloads. The parser is the standard library's expat driven directly,
and any document type declaration is refused before it is processed — no DTD means no entity can be declared,
so neither "billion laughs" expansion nor external entities (file or network reads) are possible. VOC files
never need a DTD.

Coordinates: VOC ``bndbox`` values are 1-based inclusive pixel indices (the PASCAL VOC devkit's convention,
also assumed by Detectron2's VOC loader), so ``xmin=1, xmax=W`` is the whole width. They become 0-based
exclusive boxes as ``(xmin - 1, ymin - 1, xmax, ymax)``; a 0 written by a tool that counts from 0 is clipped
to 0 rather than rejected.
"""

from __future__ import annotations

import math
import xml.parsers.expat
from collections.abc import Set
from dataclasses import dataclass, field
from pathlib import Path

from datasets.readers.errors import Problems
from datasets.readers.lesions import NON_LESIONS, canonical_lesion, normalise_name
from datasets.readers.record import LesionBox

__all__ = ["VocAnnotation", "parse_voc"]

#: Pixels a box may overhang the declared image size before it counts as wrong.
BOX_TOLERANCE = 1.0


@dataclass
class _Node:
    tag: str
    line: int
    text: str = ""
    children: list[_Node] = field(default_factory=list)

    def find(self, tag: str) -> _Node | None:
        return next((c for c in self.children if c.tag == tag), None)

    def findtext(self, tag: str) -> str:
        node = self.find(tag)
        return node.text.strip() if node is not None else ""


class _RefusedDtd(Exception):
    pass


class _XmlProblem(Exception):
    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where, self.message = where, message


def _parse_tree(path: Path) -> _Node:
    """The element tree of ``path`` with line numbers; :class:`_XmlProblem` for malformed XML or any DTD."""
    parser = xml.parsers.expat.ParserCreate()
    stack: list[_Node] = []
    roots: list[_Node] = []

    def refuse(*_args: object) -> None:
        # Security: refuse every DTD, so no entity can be declared or expanded (see the module docstring).
        raise _RefusedDtd

    def start(tag: str, _attrs: dict[str, str]) -> None:
        node = _Node(tag, parser.CurrentLineNumber)
        (stack[-1].children if stack else roots).append(node)
        stack.append(node)

    def end(_tag: str) -> None:
        stack.pop()

    def text(data: str) -> None:
        if stack:
            stack[-1].text += data

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse  # type: ignore[assignment]
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    try:
        parser.Parse(path.read_bytes(), True)
    except _RefusedDtd:
        raise _XmlProblem(f"{path}:{parser.CurrentLineNumber}",
                          "document type declarations (DTD) are refused in annotation files; "
                          "remove the <!DOCTYPE ...> block") from None
    except xml.parsers.expat.ExpatError as exc:
        raise _XmlProblem(f"{path}:{exc.lineno}",
                          f"not well-formed XML ({xml.parsers.expat.errors.messages[exc.code]})") from None
    return roots[0]


@dataclass(frozen=True)
class VocAnnotation:
    """One VOC file: the image ``filename`` it annotates (the XML's stem + ``.jpg`` when absent), the declared
    ``width``/``height`` (``None`` when absent) and its canonical lesion boxes."""

    filename: str
    width: int | None
    height: int | None
    lesions: tuple[LesionBox, ...]


def _int(text: str) -> int | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() and value > 0 else None


def parse_voc(path: Path, problems: Problems, *, ignore: Set[str] = NON_LESIONS) -> VocAnnotation | None:
    """Parse the VOC file ``path``; problems (malformed XML, a DTD, unknown object names, bad boxes) go to
    ``problems`` with the line of the offending element, and the file then yields ``None``."""
    try:
        root = _parse_tree(path)
    except _XmlProblem as exc:
        problems.add(exc.where, exc.message)
        return None
    if root.tag != "annotation":
        problems.add(f"{path}:{root.line}", f"root element is <{root.tag}>, expected <annotation> (Pascal VOC)")
        return None
    size = root.find("size")
    width = _int(size.findtext("width")) if size is not None else None
    height = _int(size.findtext("height")) if size is not None else None
    ignored = {normalise_name(n) for n in ignore}
    lesions: list[LesionBox] = []
    bad = False
    for obj in (c for c in root.children if c.tag == "object"):
        where = f"{path}:{obj.line}"
        name = obj.findtext("name")
        kind = canonical_lesion(name)
        if kind is None:
            if normalise_name(name) not in ignored:
                problems.add(where, f"unknown lesion name {name!r} (expected ma, he, ex or se; see "
                                    f"datasets/readers/lesions.py)")
                bad = True
            continue
        box = obj.find("bndbox")
        values = [box.findtext(k) if box is not None else "" for k in ("xmin", "ymin", "xmax", "ymax")]
        try:
            xmin, ymin, xmax, ymax = (float(v) for v in values)
        except ValueError:
            problems.add(where, f"<bndbox> of {name!r} needs numeric xmin, ymin, xmax, ymax, got {values}")
            bad = True
            continue
        x0, y0, x1, y1 = max(xmin - 1, 0.0), max(ymin - 1, 0.0), xmax, ymax
        limit_x = width if width is not None else math.inf
        limit_y = height if height is not None else math.inf
        if not all(map(math.isfinite, (x0, y0, x1, y1))) or not (x0 < x1 and y0 < y1) \
                or x1 > limit_x + BOX_TOLERANCE or y1 > limit_y + BOX_TOLERANCE:
            problems.add(where, f"<bndbox> {values} of {name!r} is empty or outside the {width}x{height} image")
            bad = True
            continue
        lesions.append(LesionBox(kind, (x0, y0, min(x1, limit_x), min(y1, limit_y))))
    if bad:
        return None
    return VocAnnotation(root.findtext("filename") or f"{path.stem}.jpg", width, height, tuple(lesions))
