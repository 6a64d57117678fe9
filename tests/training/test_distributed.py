"""Two training processes under torchrun (gloo on CPU): they cooperate, rank 0 alone writes a normal checkpoint."""

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
