"""training.ema: the weight average, and a training run that validates, keeps, resumes and exports it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from training.ema import make_ema, warmup_decay


def test_decay_warms_up_to_its_ceiling() -> None:
    assert warmup_decay(0.998, 0) == pytest.approx(0.1)
    assert warmup_decay(0.998, 90) == pytest.approx(0.91)
    assert warmup_decay(0.998, 100_000) == 0.998


def test_average_moves_by_one_minus_decay_and_copies_integer_buffers() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = make_ema(net, 0.5)
    ema.update_parameters(net)  # the first update copies
    start = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
        net[1].running_mean.add_(2.0)
        net[1].num_batches_tracked.fill_(7)
    ema.update_parameters(net)  # update 1: decay min(0.5, 2 / 11)
    d = 2 / 11
    assert torch.allclose(ema.module[0].weight, start + (1 - d))
    assert torch.allclose(ema.module[1].running_mean, torch.full((2,), 2 * (1 - d)))  # buffers are averaged too
    assert int(ema.module[1].num_batches_tracked) == 7


@pytest.mark.parametrize("decay", [0.0, 1.0, 1.5])
def test_a_decay_outside_0_1_is_refused(decay: float) -> None:
    with pytest.raises(ValueError, match="ema_decay"):
        make_ema(torch.nn.Linear(1, 1), decay)
    from training.config import TrainConfig

    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=decay)


def test_a_run_with_an_average_keeps_exports_and_resumes_it(tiny_config: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from training.__main__ import main

    cfg = tmp_path / "ema.yaml"
    run = tmp_path / "run"
    text = tiny_config.read_text().replace(f"out: {tiny_config.parent / 'run'}", f"out: {run}")
    text = text.replace("batch_size: 8", "batch_size: 4")  # several steps an epoch: an average of several weights
    cfg.write_text(text + "ema_decay: 0.9\n")
    assert main(["train", "--config", str(cfg)]) == 0
    ck = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert ck["ema_updates"] > 1 and json.loads(ck["config"])["ema_decay"] == 0.9
    # "model" (what is validated and exported) is the average, not the trained weights.
    differs = [k for k, v in ck["model"].items() if v.is_floating_point() and not torch.equal(v, ck["trained_model"][k])]
    assert differs
    # Resuming continues both: the trained weights from trained_model, the average with its update count.
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    assert main(["train", "--config", str(cfg), "--out", str(resumed), "--epochs", "2", "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().err
    after = torch.load(resumed / "last.pt", map_location="cpu", weights_only=True)
    assert after["ema_updates"] == 2 * ck["ema_updates"]
    out = tmp_path / "export"
    assert main(["export", "--config", str(cfg), "--out", str(out)]) == 0
    assert (out / "tiny-grader.onnx").is_file()
