"""Training checkpoints: written atomically, resumed from ``last.pt``, read back for export and evaluation.

A checkpoint is a ``torch.save`` dict of tensors and strings only (``weights_only`` loading, no pickle): the
bare model's ``model`` state, ``optimizer``, ``scheduler``, ``scaler``, ``epoch``, the task's best selection
metric under its :attr:`~training.tasks.base.Task.best_key`, ``stale``, and JSON strings ``history``,
``config`` (the resolved :class:`~training.config.TrainConfig`), ``val_metrics`` and, for tasks with one,
``operating_point``; with a weight average (:mod:`training.ema`), ``model`` is the average, and
``trained_model`` and ``ema_updates`` what resuming needs; plus ``command``, ``code_commit``,
``torch_version`` and ``seconds``.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel

from models.architectures import build
from training.config import TrainConfig, config_from_dict


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """Write a checkpoint so that a crash mid-write never leaves a truncated file under ``path``."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def resume_from(last: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any, best_key: str,
                scaler: torch.amp.GradScaler | None = None, ema: AveragedModel | None = None
                ) -> tuple[int, float, int, list[dict[str, Any]]]:
    """Load model, optimizer, scheduler (and, when the checkpoint has one, loss-scaler) state from ``last``
    (weights only, no pickle) and return ``(start epoch, best metric under best_key, epochs without
    improvement, history)``. A run with a weight average (:mod:`training.ema`) keeps the average under
    ``model`` and the weights being trained under ``trained_model``; ``ema`` gets the average back (a run
    resumed with an average that had none starts one)."""
    ck = torch.load(last, map_location="cpu", weights_only=True)
    model.load_state_dict(ck.get("trained_model", ck["model"]))
    if ema is not None and "trained_model" in ck:
        ema.module.load_state_dict(ck["model"])
        ema.n_averaged.fill_(int(ck["ema_updates"]))
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    if scaler is not None and ck.get("scaler"):  # an AMP run's loss scale; empty for float32 runs
        scaler.load_state_dict(ck["scaler"])
    print(f"resumed from {last} at epoch {ck['epoch'] + 1}", file=sys.stderr)
    return ck["epoch"] + 1, ck[best_key], ck["stale"], json.loads(ck["history"])


def load_checkpoint(path: Path) -> tuple[torch.nn.Module, TrainConfig, dict[str, Any]]:
    """Rebuild the model (in eval mode) from a checkpoint of :func:`training.train.main`, with its config and
    the raw checkpoint dict. ``ValueError`` naming the file when it is not such a checkpoint (truncated,
    another format, foreign)."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except (EOFError, RuntimeError, pickle.UnpicklingError, OSError) as exc:
        raise ValueError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0][:200]}") from exc
    if not isinstance(ck, dict) or "config" not in ck or "model" not in ck:
        raise ValueError(f"{path} is not a Fovea training checkpoint (no config/model entries)")
    cfg = config_from_dict(json.loads(ck["config"]))
    model = build(cfg.architecture, num_classes=cfg.num_classes, dropout=cfg.dropout)
    model.load_state_dict(ck["model"])
    return model.eval(), cfg, ck
