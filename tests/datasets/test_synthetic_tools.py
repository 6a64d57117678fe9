"""The synthetic generator's tools: statistics table and contact sheet (small sizes; the real sheet is in docs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datasets.synthetic import contact_sheet, stats
from datasets.synthetic.quality import ARTEFACTS
from datasets.synthetic.writer import generate


def test_stats_table(tmp_path: Path) -> None:
    generate(tmp_path, count=10, seed=4, size=96, grade_weights=(1, 0, 0, 1, 1), progress=False)
    report = stats.summarise(tmp_path)
    rows = [line for line in report.splitlines() if line.startswith("| ") and line[2].isdigit()]
    grades = {line.split("|")[1].strip() for line in rows}
    assert grades <= {"0", "3", "4"} and grades & {"3", "4"}
    assert "| grade | images | MA |" in report and "laser scars" in report
    assert stats.main([str(tmp_path)]) == 0


def test_stats_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        stats.main([str(tmp_path)])
    assert exc.value.code == 2 and "lesions.json" in capsys.readouterr().err
    (tmp_path / "lesions.json").write_text("[1, 2]")
    with pytest.raises(SystemExit) as exc:
        stats.main([str(tmp_path)])
    assert exc.value.code == 2


def test_contact_sheet_rows(tmp_path: Path) -> None:
    sheet = contact_sheet.build_sheet(thumb=64, per_row=1, size=96)
    rows = 5 + len(ARTEFACTS)
    assert sheet.dtype == np.uint8 and sheet.shape[2] == 3
    assert sheet.shape[0] == rows * (64 + 16) + (rows - 1) * 4  # tile + caption per row, 4 px gaps
    path = tmp_path / "sheet.png"
    contact_sheet.write_sheet(sheet, path)
    assert path.stat().st_size > 0


@pytest.mark.parametrize("args", [["--out", "x.jpg"], ["--out", "x.png", "--thumb", "8"], ["--out", "no/such/dir/x.png"]])
def test_contact_sheet_bad_arguments(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        contact_sheet.main(args)
    assert exc.value.code == 2 and "--" in capsys.readouterr().err
