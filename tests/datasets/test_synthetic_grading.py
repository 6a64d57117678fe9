"""ICDR / DME / referable rules of the synthetic ground truth (datasets/synthetic/grading.py)."""

from __future__ import annotations

import pytest

from datasets.synthetic.grading import Findings, has_dme, icdr_grade, is_referable, is_severe_npdr


def test_grades_from_findings() -> None:
    assert icdr_grade(Findings()) == 0
    assert icdr_grade(Findings(microaneurysms=3)) == 1
    assert icdr_grade(Findings(microaneurysms=3, haemorrhages_per_quadrant=(1, 0, 0, 0))) == 2
    assert icdr_grade(Findings(hard_exudates=1)) == 2
    assert icdr_grade(Findings(cotton_wool_spots=1)) == 2
    assert icdr_grade(Findings(venous_beading_quadrants=("superonasal",))) == 2  # one quadrant is not severe


@pytest.mark.parametrize(
    ("findings", "severe"),
    [
        (Findings(haemorrhages_per_quadrant=(21, 21, 21, 21)), True),
        (Findings(haemorrhages_per_quadrant=(21, 21, 21, 20)), False),  # "more than 20" in *each* quadrant
        (Findings(haemorrhages_per_quadrant=(80, 0, 0, 0)), False),
        (Findings(venous_beading_quadrants=("superotemporal", "inferonasal")), True),
        (Findings(venous_beading_quadrants=("superotemporal", "superotemporal")), False),  # the same quadrant twice
        (Findings(irma_quadrants=("inferotemporal",)), True),
    ],
)
def test_4_2_1_rule(findings: Findings, severe: bool) -> None:
    assert is_severe_npdr(findings) is severe
    assert icdr_grade(findings) == (3 if severe else 2)


@pytest.mark.parametrize(
    "findings",
    [
        Findings(neovascularisation=("disc",)),
        Findings(neovascularisation=("elsewhere",), microaneurysms=2),
        Findings(preretinal_haemorrhages=1),
        Findings(vitreous_haemorrhage=True),
        Findings(laser_scars=40),  # treated proliferative disease
        Findings(neovascularisation=("disc",), haemorrhages_per_quadrant=(25, 25, 25, 25)),
    ],
)
def test_proliferative(findings: Findings) -> None:
    assert icdr_grade(findings) == 4


def test_dme_and_referable() -> None:
    assert not has_dme(Findings())
    assert has_dme(Findings(hard_exudates=1, exudate_fovea_dd=1.0))
    assert not has_dme(Findings(hard_exudates=1, exudate_fovea_dd=1.01))
    assert not is_referable(1, False) and is_referable(1, True) and is_referable(2, False)


@pytest.mark.parametrize(
    "kwargs",
    [{"irma_quadrants": ("north",)}, {"neovascularisation": ("iris",)}, {"haemorrhages_per_quadrant": (1, 2, 3)}],
)
def test_bad_findings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Findings(**kwargs)  # type: ignore[arg-type]
