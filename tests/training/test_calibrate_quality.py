"""training.calibrate_quality on a tiny sample: rules fitted, scored, coverage capped, report written."""

from __future__ import annotations

import json
from pathlib import Path

from analysis.quality import QualityRules
from training.calibrate_quality import COVERAGE_CAP, fit_rules, main, make_samples, score


def test_fit_and_score_small_sample() -> None:
    samples = make_samples(24, seed=3, size=256, p_degraded=0.6)
    assert any(not s.gradable for s in samples) and any(s.gradable for s in samples)
    rules = fit_rules(samples)
    assert isinstance(rules, QualityRules) and rules.coverage_min <= COVERAGE_CAP
    report = score(samples, rules)
    assert 0.0 <= report["sensitivity"] <= 1.0 and 0.0 <= report["auc"] <= 1.0 and report["n"] == 24


def test_cli_writes_a_report(tmp_path: Path) -> None:
    assert main(["--count", "20", "--size", "256", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report) == {"rules", "held_out", "default_rules_held_out"}


def test_sharpness_never_falls_below_the_real_graders_line() -> None:
    from training.calibrate_quality import REAL_SHARPNESS_MIN

    rules = fit_rules(make_samples(24, seed=3, size=256, p_degraded=0.6))
    assert rules.sharpness_min >= REAL_SHARPNESS_MIN
    assert QualityRules().sharpness_min >= REAL_SHARPNESS_MIN
