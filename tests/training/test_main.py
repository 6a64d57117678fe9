"""The training CLI: --format choices come from the reader registry; dataset errors are messages, not tracebacks."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch", reason="training extras (torch) are not installed")

from datasets.readers import READERS  # noqa: E402
from tests.datasets.readers.helpers import write_image, write_text  # noqa: E402
from training.__main__ import main  # noqa: E402


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"out: {tmp_path / 'run'}\ndata: {{train: {tmp_path / 'none'}, test: {tmp_path / 'none'}}}\n")
    return cfg


@pytest.mark.parametrize("cmd", ["train", "evaluate", "export"])
def test_unknown_format_exits_2_with_the_choices(cmd: str, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([cmd, "--config", str(config), "--data", "x", "--format", "kaggle"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'kaggle'" in err and all(name in err for name in READERS)


def test_dataset_error_exits_2_with_the_message(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "aptos"
    write_text(data / "train.csv", "id_code,diagnosis\na,1\nb,9\nc,2\nd,0\n")
    write_image(data / "train_images" / "a.png")
    write_image(data / "train_images" / "b.png")
    assert main(["train", "--config", str(config), "--data", str(data), "--format", "aptos"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: APTOS 2019 (train.csv + train_images/) at")
    assert "train.csv:3: diagnosis 9 of image 'b' is outside 0-4" in err
    assert "train.csv:4: image 'c' not found" in err and "train.csv:5: image 'd' not found" in err
    assert "Traceback" not in err


def test_missing_dataset_and_bad_split(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--config", str(config), "--format", "messidor2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: no dataset at {tmp_path / 'none'}: ") and "messidor_data.csv not found" in err
    (tmp_path / "run").mkdir(exist_ok=True)
    (tmp_path / "run" / "best.pt").write_bytes(b"")  # evaluate reads the data before the checkpoint's weights
    assert main(["evaluate", "--config", str(config), "--data", str(tmp_path), "--format", "aptos", "--split", "test"]) == 2
    assert "'aptos' has no published splits" in capsys.readouterr().err


def test_a_corrupt_checkpoint_is_a_clear_error(tiny_config: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "best.pt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    assert main(["export", "--config", str(tiny_config), "--checkpoint", str(bad), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cannot read checkpoint" in err and "Traceback" not in err
