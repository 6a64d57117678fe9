"""service.settings: defaults, environment over file, and clear errors for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis.quality import QualityRules
from service.settings import Settings, SettingsError, load_settings


def test_defaults_need_no_configuration() -> None:
    s = load_settings({})
    assert s == Settings() and s.referable_threshold is None and s.quality.rules() == QualityRules()


@pytest.mark.parametrize(("value", "expected"), [("false", False), ("0", False), ("true", True), ("1", True)])
def test_concurrent_stages_can_be_turned_off(value: str, expected: bool) -> None:
    assert Settings().concurrent_stages is True
    assert load_settings({"FOVEA_CONCURRENT_STAGES": value}).concurrent_stages is expected


def test_file_then_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "fovea.yaml"
    cfg.write_text("referable_threshold: 0.4\nmax_frames: 3\nquality: {sharpness_min: 0.5}\n")
    s = load_settings({"FOVEA_CONFIG": str(cfg), "FOVEA_MAX_FRAMES": "5"})
    assert s.referable_threshold == 0.4 and s.max_frames == 5
    assert s.quality.rules().sharpness_min == 0.5
    assert s.quality.rules().coverage_min == QualityRules().coverage_min


@pytest.mark.parametrize(("env", "needle"), [
    ({"FOVEA_REFERABLE_THRESHOLD": "1.7"}, "referable_threshold"),
    ({"FOVEA_MAX_FRAMES": "many"}, "max_frames"),
    ({"FOVEA_CONFIG": "/nonexistent/fovea.yaml"}, "cannot read"),
    ({"FOVEA_INFERENCE": "gpu"}, "inference"),
    ({"FOVEA_CONCURRENT_STAGES": "sometimes"}, "concurrent_stages"),
])
def test_bad_settings_name_the_problem(env: dict[str, str], needle: str) -> None:
    with pytest.raises(SettingsError, match=needle):
        load_settings(env)


def test_quality_overrides_must_be_positive(tmp_path: Path) -> None:
    cfg = tmp_path / "fovea.yaml"
    cfg.write_text("quality: {sharpness_min: 0}\n")
    with pytest.raises(SettingsError, match="quality.sharpness_min"):
        load_settings({"FOVEA_CONFIG": str(cfg)})
    with pytest.raises(ValueError, match="positive"):
        QualityRules(contrast_min=-1.0)


def test_unknown_keys_are_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "fovea.yaml"
    cfg.write_text("referable_treshold: 0.4\n")
    with pytest.raises(SettingsError, match="referable_treshold"):
        load_settings({"FOVEA_CONFIG": str(cfg)})
