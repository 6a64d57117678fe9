"""Resuming a run from ``last.pt``: one helper for the trainers that share the checkpoint layout."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch


def resume_from(last: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any, best_key: str
                ) -> tuple[int, float, int, list[dict[str, Any]]]:
    """Load model, optimizer and scheduler state from ``last`` (weights only, no pickle) and return
    ``(start epoch, best metric under best_key, epochs without improvement, history)``."""
    ck = torch.load(last, map_location="cpu", weights_only=True)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    print(f"resumed from {last} at epoch {ck['epoch'] + 1}", file=sys.stderr)
    return ck["epoch"] + 1, ck[best_key], ck["stale"], json.loads(ck["history"])
