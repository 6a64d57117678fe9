"""training.config: YAML loading, overrides, unknown keys."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from training.config import load_config

REPO = Path(__file__).resolve().parents[2]


def test_default_grader_config_loads() -> None:
    cfg = load_config(REPO / "training/configs/grader.yaml")
    assert cfg.architecture == "mobilenet_v3_large_rt" and cfg.num_classes == 5
    assert cfg.data.synthetic_train is not None and cfg.data.synthetic_train.count > 0
    assert cfg.to_dict()["data"]["format"] == "synthetic" and cfg.objective == "ce+emd" and cfg.version == "0.2.0"


def test_overrides_and_unknown_keys(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("epochs: 3\ndata: {train: a, test: b}\n")
    cfg = load_config(p, {"epochs": 1, "train": "x", "out": None})
    assert cfg.epochs == 1 and cfg.data.train == "x" and cfg.data.test == "b"
    p.write_text("epochz: 3\n")
    with pytest.raises(ValueError, match="unknown TrainConfig keys: epochz"):
        load_config(p)
    p.write_text("- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(p)


def test_objective_defaults_to_ce_emd_and_is_checked(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("data: {train: a, test: b}\n")
    assert load_config(p).objective == "ce+emd"
    assert load_config(p, {"objective": "sord"}).to_dict()["objective"] == "sord"
    p.write_text("objective: coral\ndata: {train: a, test: b}\n")
    with pytest.raises(ValueError, match="unknown objective 'coral'; known: ce, ce\\+emd, sord"):
        load_config(p)


def test_test_time_views_are_checked_and_only_graders_take_them(tmp_path: Path) -> None:
    from training.tasks import get_task

    p = tmp_path / "c.yaml"
    p.write_text("test_time_views: 3\ndata: {train: a, test: b}\n")
    with pytest.raises(ValueError, match="test_time_views must be one of 1, 2, 4, 8, not 3"):
        load_config(p)
    p.write_text("test_time_views: 2\ndata: {train: a, test: b}\n")
    get_task("dr-grading").check_config(load_config(p))
    detector = load_config(REPO / "training/configs/detector.yaml", {"out": None})
    with pytest.raises(ValueError, match="DR grader only"):
        get_task("lesion-detection").check_config(dataclasses.replace(detector, test_time_views=2))


def test_frozen_layers_is_a_count(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("frozen_layers: 6\ndata: {train: a, test: b}\n")
    assert load_config(p).frozen_layers == 6
    p.write_text("frozen_layers: -1\ndata: {train: a, test: b}\n")
    with pytest.raises(ValueError, match="frozen_layers must be 0 or more, not -1"):
        load_config(p)


def test_train_fraction_is_a_share_of_the_patients(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("data: {train: a, test: b, train_fraction: 0.25}\n")
    assert load_config(p).data.train_fraction == 0.25
    assert load_config(REPO / "training/configs/real-grader.yaml", {"out": None}).data.train_fraction == 1.0
    p.write_text("data: {train: a, test: b, train_fraction: 0}\n")
    with pytest.raises(ValueError, match="data.train_fraction must be above 0 and at most 1, not 0"):
        load_config(p)
