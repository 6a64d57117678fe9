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

from datasets.synthetic.fundus import LESION_TYPES
from datasets.synthetic.writer import LESION_COLUMNS, generate, image_name, read_lesions

REPO = Path(__file__).resolve().parents[2]
SIZE = 128


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
