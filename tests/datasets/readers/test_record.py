"""FundusRecord / LesionBox: the contract is enforced on construction."""

from __future__ import annotations

from pathlib import Path

import pytest

from datasets.readers.record import FundusRecord, LesionBox
from datasets.synthetic.fundus import LESION_TYPES


def test_lesion_box_normalises_to_floats() -> None:
    box = LesionBox("microaneurysm", (1, 2, 3, 4))
    assert box.box == (1.0, 2.0, 3.0, 4.0) and all(isinstance(v, float) for v in box.box)


@pytest.mark.parametrize(("kind", "box", "message"), [
    ("drusen", (0, 0, 1, 1), "not one of"),
    ("haemorrhage", (5, 0, 5, 1), "x0 < x1"),
    ("haemorrhage", (0, 3, 1, 2), "y0 < y1"),
    ("haemorrhage", (-1, 0, 1, 1), "0 <= x0"),
    ("haemorrhage", (0, 0, float("nan"), 1), "finite"),
    ("haemorrhage", (0, 0, 1), "4 finite"),
])
def test_lesion_box_rejects(kind: str, box: tuple, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=message):
        LesionBox(kind, box)


def test_record_defaults_mean_not_given() -> None:
    r = FundusRecord(image="a/b.png", grade=2, source="aptos")  # type: ignore[arg-type]
    assert r.image == Path("a/b.png")
    assert (r.dme, r.gradable, r.laterality, r.patient, r.lesions) == (None, None, None, None, None)
    assert r.group == "b"  # no patient: the file stem keeps the image on its own
    assert FundusRecord(image=Path("x.png"), grade=None, patient="p1", source="s").group == "p1"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"grade": 5}, "grade"),
    ({"grade": True}, "grade"),
    ({"grade": 1, "laterality": "left"}, "laterality"),
    ({"grade": 1, "dme": 1}, "dme"),
    ({"grade": 1, "lesions": ("microaneurysm",)}, "LesionBox"),
    ({"grade": 1, "source": ""}, "source"),
])
def test_record_rejects(kwargs: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=message):
        FundusRecord(image=Path("x.png"), **{"source": "t", **kwargs})


def test_canonical_types_are_the_generator_s() -> None:
    from datasets.readers import record

    assert record.LESION_TYPES is LESION_TYPES
