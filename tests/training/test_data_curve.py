"""training.data_curve: a grader's learning curve against the amount of training data, and its extrapolation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="training extras (torch) are not installed")

from training.data_curve import CurvePoint, PowerLaw, curve, fit_power_law, main  # noqa: E402


def test_fit_power_law_recovers_a_learning_curve_and_extrapolates_it() -> None:
    truth = PowerLaw(log_a=math.log(2.0), exponent=-0.3)
    sizes = [1_000, 2_000, 4_000]
    law = fit_power_law(sizes, [truth.metric_at(n) for n in sizes])
    assert law.exponent == pytest.approx(-0.3) and law.log_a == pytest.approx(math.log(2.0))
    need = law.photographs_for(0.88)
    assert law.metric_at(need) == pytest.approx(0.88)
    assert need == pytest.approx((0.12 / 2.0) ** (1 / -0.3))
    assert PowerLaw(0.0, 0.1).photographs_for(0.88) == math.inf  # worse with more data: never
    assert PowerLaw(0.0, -1e-12).photographs_for(0.88) == math.inf  # too flat to say
    assert truth.photographs_for(1.0) == math.inf


def test_fit_power_law_refuses_what_has_no_curve() -> None:
    with pytest.raises(ValueError, match="at least two amounts of data"):
        fit_power_law([1_000, 1_000], [0.8, 0.82])
    with pytest.raises(ValueError, match="a metric of 1 or more"):
        fit_power_law([1_000, 2_000], [0.8, 1.0])


def _point(n: int, kappa: float, auc: float) -> CurvePoint:
    return CurvePoint(checkpoint=f"ck{n}", train_fraction=1.0, train_photographs=n, train_patients=n // 2, views=1,
                      quadratic_weighted_kappa=kappa, quadratic_weighted_kappa_ci=(kappa - 0.1, kappa + 0.1),
                      referable_auc=auc, referable_auc_ci=(auc - 0.05, auc + 0.05), grade_rule_kappa_cv=kappa)


def test_a_flattening_curve_is_also_extrapolated_from_its_last_stretch() -> None:
    # the error halves from the first amount to the second, then falls by a tenth: the curve flattens
    points = [_point(1_000, 0.2, 0.6), _point(2_000, 0.6, 0.8), _point(4_000, 0.64, 0.82)]
    fits = curve(points)
    last = fits.last["referable_auc"]
    assert last.exponent == pytest.approx(math.log(0.18 / 0.2) / math.log(2))  # through the two largest only
    assert last.photographs_for(0.88) > fits.all["referable_auc"].photographs_for(0.88)  # the cautious one
    assert set(fits.all) == set(fits.last) == {"quadratic_weighted_kappa", "referable_auc", "grade_rule_kappa_cv"}
    assert curve(points[1:]).last == {}  # two amounts: one law


def _train(tiny_config: Path, tmp_path: Path, name: str, *, seed: int = 0, train_fraction: float = 1.0) -> Path:
    """The tiny grader trained again with another seed or share of its training patients; its checkpoint."""
    import yaml

    from training.__main__ import main as training

    values = yaml.safe_load(tiny_config.read_text())
    values.update(out=str(tmp_path / name), seed=seed)
    values["data"]["train_fraction"] = train_fraction
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(values))
    assert training(["train", "--config", str(cfg)]) == 0
    return tmp_path / name / "last.pt"


def test_the_command_puts_checkpoints_on_one_curve(tiny_export: Path, tiny_config: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    full = Path(yaml.safe_load(tiny_config.read_text())["out"]) / "last.pt"  # trained by tiny_export
    half = _train(tiny_config, tmp_path, "half", train_fraction=0.5)
    out, js = tmp_path / "curve.png", tmp_path / "curve.json"
    assert main([str(full), str(half), "--out", str(out), "--json", str(js)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(js.read_text())
    small, large = report["points"]  # sorted by the amount of data, whatever the order given
    assert (small["checkpoint"], large["checkpoint"]) == (str(half), str(full))
    assert (small["train_fraction"], large["train_fraction"]) == (0.5, 1.0)
    assert small["train_photographs"] < large["train_photographs"]
    assert small["train_patients"] == round(large["train_patients"] * 0.5)
    assert set(report["fits"]) == {"quadratic_weighted_kappa", "referable_auc", "grade_rule_kappa_cv"}
    assert report["fits_two_largest"] == {}  # two amounts of data: one law
    assert report["targets"]["referable_auc"] == 0.88
    printed = capsys.readouterr().out
    assert "referable-DR AUC, all points: error ∝ n^" in printed and "0.88 extrapolates to" in printed

    other_split = _train(tiny_config, tmp_path, "seed1", seed=1, train_fraction=0.5)
    assert main([str(full), str(other_split)]) == 2
    assert "validated on different photographs" in capsys.readouterr().err
    assert main([str(full), str(tmp_path / "missing.pt")]) == 2
    assert f"checkpoint {tmp_path / 'missing.pt'} does not exist" in capsys.readouterr().err
