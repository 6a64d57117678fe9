"""Training data: graded records only (skips counted), patient-grouped split, DICOM decoded like serving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="training extras (torch) are not installed")

from datasets.readers import DatasetError, FundusRecord  # noqa: E402
from tests.datasets.readers.helpers import write_dicom, write_text  # noqa: E402
from training.data import (FundusDataset, held_out_split, load_graded, load_rgb, select_graded,  # noqa: E402
                           split_by_patient)


def _r(name: str, grade: int | None, *, gradable: bool | None = None, patient: str | None = None) -> FundusRecord:
    return FundusRecord(image=Path(f"/d/{name}.png"), grade=grade, gradable=gradable, patient=patient, source="t")


def test_select_graded_counts_what_it_skips() -> None:
    records = [_r("a", 0), _r("b", 3, gradable=False), _r("c", None, gradable=False), _r("d", None), _r("e", 4, gradable=True)]
    sel = select_graded(records)
    assert [r.image.stem for r in sel.graded] == ["a", "e"]
    assert (sel.ungradable, sel.unlabelled) == (2, 1)


def test_load_graded_reports_skips_and_refuses_nothing_graded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_text(tmp_path / "DR_grading" / "train.txt", "a.jpg 5\nb.jpg 1\n")
    for n in ("a.jpg", "b.jpg"):
        write_text(tmp_path / "DR_grading" / "train" / n, "")
    [r] = load_graded(tmp_path, "ddr")
    assert r.image.name == "b.jpg"
    assert "1 graded images; skipped 1 ungradable and 0 without a grade" in capsys.readouterr().err
    write_text(tmp_path / "DR_grading" / "train.txt", "a.jpg 5\n")
    with pytest.raises(DatasetError, match=r"none of its 1 images has a grade the grader can use \(1 ungradable"):
        load_graded(tmp_path, "ddr")


def test_split_by_patient_keeps_patients_together_and_falls_back_to_stem() -> None:
    records = [_r(f"{p}_{eye}", 1, patient=str(p)) for p in range(20) for eye in ("left", "right")]
    records += [_r(f"solo{i}", 2) for i in range(10)]  # no patient: each image is its own group
    train, val = split_by_patient(records, 0.3, seed=1)
    assert len(train) + len(val) == len(records) and val and train
    assert not {r.group for r in train} & {r.group for r in val}
    assert {r.group for r in val} >= {r.patient for r in val if r.patient is not None}
    assert split_by_patient(records, 0.3, seed=1) == (train, val)  # deterministic


def test_train_fraction_keeps_nested_training_patients_and_the_same_validation() -> None:
    records = [_r(f"{p}_{eye}", p % 5, patient=str(p)) for p in range(40) for eye in ("left", "right")]
    full, val = split_by_patient(records, 0.25, seed=3)
    half, val_half = split_by_patient(records, 0.25, seed=3, train_fraction=0.5)
    quarter, val_quarter = split_by_patient(records, 0.25, seed=3, train_fraction=0.25)
    assert val_half == val_quarter == val  # the validation patients do not depend on the fraction
    patients = [{r.group for r in part} for part in (full, half, quarter)]
    assert [len(p) for p in patients] == [30, 15, 8]  # 30 training patients: half, and a quarter rounded
    assert patients[0] > patients[1] > patients[2]  # nested: a smaller share keeps a subset of a larger one's
    assert all(len([r for r in half if r.group == g]) == 2 for g in patients[1])  # both eyes kept together
    [only] = {r.group for r in split_by_patient(records, 0.25, seed=3, train_fraction=0.001)[0]}  # at least one
    assert only in patients[2]
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match=f"train_fraction must be in \\(0, 1\\], not {bad}"):
            split_by_patient(records, 0.25, seed=3, train_fraction=bad)


def test_dataset_refuses_ungraded_records() -> None:
    with pytest.raises(ValueError, match="1 records have no grade"):
        FundusDataset([_r("a", None)], 32, train=False)


def test_held_out_split() -> None:
    assert (held_out_split("idrid"), held_out_split("ddr"), held_out_split("eyepacs")) == ("test", "test", None)


def test_load_rgb_decodes_dicom_exactly(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    path = write_dicom(tmp_path / "IM0001", sop_instance_uid="1.2.3", rgb=rgb)  # DICOM recognised by content
    assert np.array_equal(load_rgb(path), rgb)
    write_text(tmp_path / "bad.dcm", "")
    with pytest.raises(ValueError, match="cannot read image .*bad.dcm"):
        load_rgb(tmp_path / "bad.dcm")
    with pytest.raises(ValueError, match="cannot read image .*absent.png"):
        load_rgb(tmp_path / "absent.png")


def test_balanced_weights_draw_rare_grades_by_the_square_root_of_their_rarity() -> None:
    from training.data import balanced_weights

    labels = np.array([0] * 900 + [2] * 100)
    w = balanced_weights(labels)
    assert w.sum() == pytest.approx(1.0)
    share = w[labels == 2].sum()
    assert share == pytest.approx(0.1 * 3 / (0.9 + 0.1 * 3))  # 10 % of the photographs, drawn 3x as often


def test_epoch_sampler_is_deterministic_per_epoch_and_shards_without_overlap() -> None:
    from training.data import EpochSampler, balanced_weights

    w = balanced_weights(np.array([0] * 90 + [1] * 10))
    one = EpochSampler(w, seed=3)
    first, again = list(one), list(one)
    assert first == again and len(first) == 100
    one.set_epoch(1)
    assert list(one) != first
    one.set_epoch(0)
    ranks = [EpochSampler(w, seed=3, rank=r, world=2) for r in (0, 1)]
    assert sorted(list(ranks[0]) + list(ranks[1])) == sorted(first)
    assert sum(i >= 90 for i in first) > 20  # the rare class: 10 % of items, ~25 % of draws


def test_augment_fills_what_rotation_uncovers_with_the_recipes_surround() -> None:
    from training.data import augment

    crop = np.full((64, 64, 3), 200, np.uint8)
    rng = np.random.default_rng(0)
    out = augment(crop, rng, max_angle=45, border=128)
    corner_values = {int(out[0, 0, 0]), int(out[0, -1, 0]), int(out[-1, 0, 0]), int(out[-1, -1, 0])}
    assert all(abs(v - 128) < 60 for v in corner_values)  # mid-grey after the photometric jitter, not black
