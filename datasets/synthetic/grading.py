"""Clinical rules of the synthetic ground truth: ICDR grade, diabetic macular oedema, referable DR.

Contract
--------
The grade is *derived* from what was drawn (:class:`Findings`), never the other way round, so the label and
the picture cannot disagree. :func:`icdr_grade` implements the International Clinical Diabetic Retinopathy
scale (Wilkinson et al., Ophthalmology 2003):

* **4 proliferative DR**: neovascularisation (at the disc or elsewhere), a pre-retinal or a vitreous
  haemorrhage, or pan-retinal laser photocoagulation scars (treated proliferative disease);
* **3 severe NPDR**, the 4-2-1 rule: more than 20 intraretinal haemorrhages in each of the 4 quadrants, OR
  definite venous beading in 2 or more quadrants, OR prominent IRMA in 1 or more quadrant;
* **2 moderate NPDR**: more than microaneurysms only, less than severe (any intraretinal haemorrhage, hard
  exudate, cotton-wool spot or venous beading in one quadrant);
* **1 mild NPDR**: microaneurysms only;
* **0** no apparent retinopathy.

:func:`has_dme` is the photographic surrogate of clinically significant macular oedema used by screening
programmes: a hard exudate within one disc diameter of the centre of the fovea. :func:`is_referable` is
"more than mild DR, or DME" (grade >= 2 or DME).
"""

from __future__ import annotations

from dataclasses import dataclass

from datasets.synthetic.anatomy import QUADRANTS

NV_SITES: tuple[str, ...] = ("disc", "elsewhere")


@dataclass(frozen=True)
class Findings:
    """Everything drawn in one photograph that the grade depends on.

    ``haemorrhages_per_quadrant`` counts intraretinal (dot, blot, flame) haemorrhages, in :data:`QUADRANTS`
    order; pre-retinal ones are counted apart. Quadrant lists hold names from :data:`QUADRANTS`;
    ``neovascularisation`` names from :data:`NV_SITES`. ``exudate_fovea_dd`` is the distance, in disc
    diameters, from the fovea to the nearest hard-exudate pixel (``None`` without exudates).
    """

    microaneurysms: int = 0
    haemorrhages_per_quadrant: tuple[int, int, int, int] = (0, 0, 0, 0)
    preretinal_haemorrhages: int = 0
    hard_exudates: int = 0
    cotton_wool_spots: int = 0
    venous_beading_quadrants: tuple[str, ...] = ()
    irma_quadrants: tuple[str, ...] = ()
    neovascularisation: tuple[str, ...] = ()
    vitreous_haemorrhage: bool = False
    laser_scars: int = 0
    exudate_fovea_dd: float | None = None

    def __post_init__(self) -> None:
        for name in (*self.venous_beading_quadrants, *self.irma_quadrants):
            if name not in QUADRANTS:
                raise ValueError(f"unknown quadrant {name!r} (expected one of {', '.join(QUADRANTS)})")
        for site in self.neovascularisation:
            if site not in NV_SITES:
                raise ValueError(f"unknown neovascularisation site {site!r} (expected disc or elsewhere)")
        if len(self.haemorrhages_per_quadrant) != 4:
            raise ValueError("haemorrhages_per_quadrant needs 4 counts")


def is_severe_npdr(f: Findings) -> bool:
    """The 4-2-1 rule (see the module docstring)."""
    return (
        all(n > 20 for n in f.haemorrhages_per_quadrant)
        or len(set(f.venous_beading_quadrants)) >= 2
        or len(set(f.irma_quadrants)) >= 1
    )


def is_proliferative(f: Findings) -> bool:
    """Neovascularisation, pre-retinal/vitreous haemorrhage, or pan-retinal laser scars (treated PDR)."""
    return bool(f.neovascularisation) or f.preretinal_haemorrhages > 0 or f.vitreous_haemorrhage or f.laser_scars > 0


def icdr_grade(f: Findings) -> int:
    """ICDR grade 0-4 of the findings (module docstring)."""
    if is_proliferative(f):
        return 4
    if is_severe_npdr(f):
        return 3
    if sum(f.haemorrhages_per_quadrant) or f.hard_exudates or f.cotton_wool_spots or f.venous_beading_quadrants:
        return 2
    return 1 if f.microaneurysms else 0


def has_dme(f: Findings) -> bool:
    """A hard exudate within one disc diameter of the fovea."""
    return f.exudate_fovea_dd is not None and f.exudate_fovea_dd <= 1.0


def is_referable(grade: int, dme: bool) -> bool:
    """Referable diabetic retinopathy: moderate NPDR or worse, or DME."""
    return grade >= 2 or dme
