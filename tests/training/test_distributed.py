"""Two training processes under torchrun (gloo on CPU): they cooperate, rank 0 alone writes a normal checkpoint,
and the run matches one process on the same config within noise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="training extras (torch) are not installed")

REPO = Path(__file__).resolve().parents[2]


def test_torchrun_two_processes(tiny_config: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "training", "train", "--config", str(tiny_config), "--out", str(run), "--epochs", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "Traceback" not in r.stderr
    ck = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert ck["epoch"] == 1 and len(json.loads(ck["history"])) == 2
    # The saved weights are the bare model's (no DistributedDataParallel "module." prefix): export loads them.
    assert not any(k.startswith("module.") for k in ck["model"])
    # Each process took half of the global batch of 8 from its own shard: 14 training images -> 1 step/epoch.
    assert ck["scheduler"]["last_epoch"] == 2
    # Only rank 0 logs epochs.
    assert r.stderr.count("epoch 1: loss") == 1

    # One process, same config and epochs: the same metrics within noise.
    from training.__main__ import main

    single = tmp_path / "single"
    assert main(["train", "--config", str(tiny_config), "--out", str(single), "--epochs", "2"]) == 0
    one = torch.load(single / "last.pt", map_location="cpu", weights_only=True)
    h1, h2 = json.loads(one["history"]), json.loads(ck["history"])
    assert one["scheduler"]["last_epoch"] == ck["scheduler"]["last_epoch"]  # same steps, same schedule
    for a, b in zip(h1, h2):
        # Measured here: losses 2.49 vs 2.44 and 2.21 vs 2.21, ECE 0.124 vs 0.125, accuracy equal. Rank 0's
        # loss is that of its shard only, hence the 10 % allowance. The referable AUC is left out: after two
        # steps the tiny model's outputs are nearly constant, and the ranking of near-ties is noise.
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.10)
        assert abs(b["val_accuracy"] - a["val_accuracy"]) <= 1 / 6 + 1e-6  # one validation image of six
        assert abs(b["val_expected_calibration_error"] - a["val_expected_calibration_error"]) <= 0.05
        assert abs(b["val_quadratic_weighted_kappa"] - a["val_quadratic_weighted_kappa"]) <= 0.25
    # The weights moved alike: updates of the same size (measured 2.90 vs 2.92) and a shared direction far
    # above chance (cosine 0.12 measured; two unrelated directions in ~1.5 M parameters give ~0.001). The
    # initial weights are rebuilt as training builds them (seed, then the model).
    from models.architectures import build

    cfg = json.loads(one["config"])
    torch.manual_seed(cfg["seed"])
    init = build(cfg["architecture"], num_classes=cfg["num_classes"], dropout=cfg["dropout"]).state_dict()
    keys = [k for k, v in init.items() if v.is_floating_point() and "running" not in k]
    d1 = torch.cat([(one["model"][k] - init[k]).flatten() for k in keys])
    d2 = torch.cat([(ck["model"][k] - init[k]).flatten() for k in keys])
    assert 0.8 <= float(d2.norm() / d1.norm()) <= 1.25
    assert float(torch.nn.functional.cosine_similarity(d1, d2, dim=0)) > 0.05
