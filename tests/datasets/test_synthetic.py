"""Synthetic fundus generator: determinism, layout, grade-dependent lesions, geometry, CLI."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets.synthetic.fundus import LESION_TYPES, SyntheticFundus, render_fundus
from datasets.synthetic.writer import LESION_COLUMNS, generate, image_name, read_lesions

REPO = Path(__file__).resolve().parents[2]
SIZE = 128


def _render(seed: int, grade: int, laterality: str = "R", size: int = SIZE) -> SyntheticFundus:
    return render_fundus(np.random.default_rng([seed, grade]), grade=grade, laterality=laterality, size=size)


def _read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, path
    return bgr[..., ::-1]


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


def _generate(out: Path, **kw: object) -> Path:
    args: dict[str, object] = {"count": 6, "seed": 7, "size": SIZE, "progress": False}
    args.update(kw)
    return generate(out, **args)  # type: ignore[arg-type]


def _dataset_equal(a: Path, b: Path) -> bool:
    if (a / "trainLabels.csv").read_bytes() != (b / "trainLabels.csv").read_bytes():
        return False
    if (a / "lesions.csv").read_bytes() != (b / "lesions.csv").read_bytes():
        return False
    names = sorted(p.name for p in a.glob("*.jpeg"))
    if names != sorted(p.name for p in b.glob("*.jpeg")):
        return False
    return all(np.array_equal(_read_rgb(a / n), _read_rgb(b / n)) for n in names)


# --- renderer -------------------------------------------------------------------------------------------------


def test_render_contract_and_determinism() -> None:
    a, b, c = _render(1, 3), _render(1, 3), _render(2, 3)
    assert a.image.shape == (SIZE, SIZE, 3) and a.image.dtype == np.uint8 and a.image.flags.c_contiguous
    assert a.grade == 3 and a.laterality == "R"
    assert np.array_equal(a.image, b.image) and a.lesions == b.lesions
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("kwargs", [{"grade": 5}, {"grade": -1}, {"laterality": "X"}, {"size": 32}])
def test_render_rejects_bad_arguments(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"grade": 0, "laterality": "L", "size": SIZE}
    args.update(kwargs)
    with pytest.raises(ValueError):
        render_fundus(np.random.default_rng(0), **args)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(4))
def test_lesions_follow_grade(seed: int) -> None:
    kinds = {g: [les.type for les in _render(seed, g, size=256).lesions] for g in range(5)}
    assert kinds[0] == []
    assert set(kinds[1]) == {"microaneurysm"} and 2 <= len(kinds[1]) <= 8
    assert {"haemorrhage", "hard_exudate"} & set(kinds[2])
    for g in (3, 4):  # severe NPDR: > 20 haemorrhages, plus exudates and cotton-wool spots
        assert kinds[g].count("haemorrhage") > 20
        assert "hard_exudate" in kinds[g] and "cotton_wool_spot" in kinds[g]
    assert all(t in LESION_TYPES for g in kinds for t in kinds[g])


def _disc_centre(image: np.ndarray) -> tuple[int, int]:
    """``(x, y)`` of the brightest smoothed spot: the optic disc in a lesion-free photograph."""
    lum = image.astype(np.float32).mean(axis=2)
    blurred = cv2.GaussianBlur(lum, (0, 0), image.shape[0] * 0.04)
    y, x = np.unravel_index(int(np.argmax(blurred)), blurred.shape)
    return int(x), int(y)


@pytest.mark.parametrize("laterality", ["L", "R"])
def test_boxes_inside_image_field_and_off_disc(laterality: str) -> None:
    size = 256
    for seed in range(3):
        # The anatomy (field, disc, fovea) is drawn before anything grade-dependent, so the grade-0 picture
        # from the same generator state shows the field and disc of the graded one without lesions on top.
        clean = render_fundus(np.random.default_rng(seed), grade=0, laterality=laterality, size=size).image
        disc_x, disc_y = _disc_centre(clean)
        assert (disc_x > size / 2) == (laterality == "R")
        for grade in (2, 3, 4):
            f = render_fundus(np.random.default_rng(seed), grade=grade, laterality=laterality, size=size)
            assert f.lesions
            for les in f.lesions:
                x0, y0, x1, y1 = les.box
                assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size, les
                # Every corner pixel of the box is inside the bright field of view, not the dark surround.
                for x, y in ((x0, y0), (x1 - 1, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)):
                    assert clean[y, x].max() > 20, (les, clean[y, x])
                assert not (x0 <= disc_x < x1 and y0 <= disc_y < y1), (les, (disc_x, disc_y))


def test_microaneurysms_are_visible_dots() -> None:
    f = _render(3, 1, size=512)
    for les in f.lesions:
        x0, y0, x1, y1 = les.box
        assert min(x1 - x0, y1 - y0) >= 3  # radius >= 1.5 px at 512
        patch = f.image[y0:y1, x0:x1].astype(int)
        ring = f.image[max(0, y0 - 6) : y1 + 6, max(0, x0 - 6) : x1 + 6].astype(int)
        assert patch[..., 1].min() < np.median(ring[..., 1]) - 10  # darker than its surroundings in green


@pytest.mark.parametrize("laterality", ["L", "R"])
def test_surround_dark_and_field_red(laterality: str) -> None:
    for grade in range(5):
        img = _render(5, grade, laterality).image
        k = 6
        for corner in (img[:k, :k], img[:k, -k:], img[-k:, :k], img[-k:, -k:]):
            assert corner.max() < 20
        c = SIZE // 2
        centre = img[c - 12 : c + 12, c - 12 : c + 12].reshape(-1, 3).astype(float).mean(axis=0)
        assert centre[0] > 80 and centre[0] > centre[1] > centre[2], centre


def test_left_is_mirrored_right() -> None:
    right = render_fundus(np.random.default_rng(11), grade=4, laterality="R", size=SIZE)
    left = render_fundus(np.random.default_rng(11), grade=4, laterality="L", size=SIZE)
    assert np.array_equal(left.image, right.image[:, ::-1])
    mirrored = [(SIZE - x1, y0, SIZE - x0, y1) for x0, y0, x1, y1 in (les.box for les in right.lesions)]
    assert [les.box for les in left.lesions] == mirrored
    assert _disc_centre(_render(4, 0, "R").image)[0] > SIZE / 2 > _disc_centre(_render(4, 0, "L").image)[0]


# --- writer -----------------------------------------------------------------------------------------------------


def test_generate_layout(tmp_path: Path) -> None:
    labels = _generate(tmp_path / "ds", count=7)
    assert labels == tmp_path / "ds" / "trainLabels.csv"
    rows = _rows(labels)
    assert rows[0] == ["image", "level"]
    names = [r[0] for r in rows[1:]]
    assert names == [image_name(i) for i in range(7)]
    assert names[:3] == ["00000_left", "00000_right", "00001_left"]
    assert all(re.fullmatch(r"\d{5}_(left|right)", n) for n in names)
    grades = {r[0]: int(r[1]) for r in rows[1:]}
    assert set(grades.values()) <= set(range(5))
    for n in names:
        assert _read_rgb(tmp_path / "ds" / f"{n}.jpeg").shape == (SIZE, SIZE, 3)

    lesion_rows = _rows(tmp_path / "ds" / "lesions.csv")
    assert tuple(lesion_rows[0]) == LESION_COLUMNS
    by_image = read_lesions(tmp_path / "ds")
    assert sum(len(v) for v in by_image.values()) == len(lesion_rows) - 1
    for name, lesions in by_image.items():
        assert name in grades and grades[name] > 0
        for les in lesions:
            assert les.type in LESION_TYPES
            assert 0 <= les.box[0] < les.box[2] <= SIZE and 0 <= les.box[1] < les.box[3] <= SIZE
    assert all(name in by_image for name, g in grades.items() if g > 0)


def test_generate_deterministic_and_worker_independent(tmp_path: Path) -> None:
    _generate(tmp_path / "a")
    _generate(tmp_path / "b")
    _generate(tmp_path / "w2", workers=2)
    _generate(tmp_path / "other", seed=8)
    assert _dataset_equal(tmp_path / "a", tmp_path / "b")
    assert _dataset_equal(tmp_path / "a", tmp_path / "w2")
    assert not _dataset_equal(tmp_path / "a", tmp_path / "other")


def test_generate_grade_weights(tmp_path: Path) -> None:
    labels = _generate(tmp_path / "g", count=4, size=64, grade_weights=(0, 0, 0, 0, 1))
    assert [r[1] for r in _rows(labels)[1:]] == ["4"] * 4


@pytest.mark.parametrize(
    "kwargs",
    [{"count": 0}, {"size": 32}, {"seed": -1}, {"workers": 0}, {"grade_weights": (1, 1)}, {"grade_weights": (0,) * 5}],
)
def test_generate_rejects_bad_arguments(tmp_path: Path, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        _generate(tmp_path / "bad", **kwargs)


# --- command line -------------------------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "datasets.synthetic", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_cli_writes_dataset(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    res = _cli("--out", str(out), "--count", "3", "--seed", "1", "--size", "96", "--grade-weights", "1,0,0,0,1")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    rows = _rows(out / "trainLabels.csv")
    assert rows[0] == ["image", "level"] and len(rows) == 4
    assert {r[1] for r in rows[1:]} <= {"0", "4"}
    assert (out / "lesions.csv").is_file() and (out / "00001_left.jpeg").is_file()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--count", "0"], "--count"),
        (["--count", "2", "--size", "32"], "--size"),
        (["--count", "2", "--grade-weights", "1,2,x,4,5"], "--grade-weights"),
        (["--count", "2", "--grade-weights", "1,1,1"], "--grade-weights"),
        (["--count", "2", "--out-is-file"], "not a directory"),
    ],
)
def test_cli_rejects_bad_arguments(tmp_path: Path, args: list[str], needle: str) -> None:
    out = tmp_path / "out"
    if "--out-is-file" in args:
        args = [a for a in args if a != "--out-is-file"]
        out.write_text("I am a file")
    res = _cli("--out", str(out), "--seed", "0", *args)
    assert res.returncode != 0
    assert needle in res.stderr
    assert "Traceback" not in res.stderr
    assert not (out.is_dir() and any(out.iterdir()))
