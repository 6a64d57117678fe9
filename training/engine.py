"""The training step and the inference pass every task shares: ``train_one_epoch``, ``predict``, the learning
rate schedule and the optimizer's parameter groups.

A loader yields ``(images, targets)``: ``images`` a float tensor ``(N, 3, H, W)``, ``targets`` whatever the
task's loss reads (a tensor, or a dict of tensors and per-image lists); tensors are moved to the model's
device, anything else is passed through.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from training.precision import AmpMode, autocast, make_scaler

#: A task's loss: the model's outputs and the batch's targets -> a scalar tensor.
LossFn = Callable[[Any, Any], torch.Tensor]


def warmup_cosine(total_steps: int, warmup: float = 0.1) -> Callable[[int], float]:
    """LR factor: linear warm-up over ``warmup`` of the steps, then cosine decay to 2 %. A pure function of the
    step, so a resumed run with more epochs simply continues on the longer schedule."""
    w = max(1, round(total_steps * warmup))

    def factor(step: int) -> float:
        if step < w:
            return (step + 1) / w
        t = min(1.0, (step - w) / max(1, total_steps - w))
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t))

    return factor


def param_groups(model: nn.Module, lr: float, backbone_scale: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: the trunk (``model.features``) at ``lr * backbone_scale``, the rest (the head)
    at ``lr``; one group when the scale is 1 or the model has no ``features``."""
    features = getattr(model, "features", None)
    if backbone_scale == 1.0 or not isinstance(features, nn.Module):
        return [{"params": list(model.parameters()), "lr": lr}]
    trunk = {id(p) for p in features.parameters()}
    return [{"params": list(features.parameters()), "lr": lr * backbone_scale},
            {"params": [p for p in model.parameters() if id(p) not in trunk], "lr": lr}]


#: Set on modules :func:`freeze_prefix` froze: :func:`train_one_epoch` puts them back in eval mode.
FROZEN = "fovea_frozen"


def freeze_prefix(model: nn.Module, count: int) -> None:
    """Freeze the first ``count`` modules of ``model.features`` (the trunk): no gradients (the optimizer skips
    them), and in eval mode whenever :func:`train_one_epoch` trains, so their BatchNorm normalises with its
    running statistics and never updates them. Raises ``ValueError`` when the model has no sequential trunk or
    ``count`` would freeze all of it."""
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential):
        raise ValueError(f"frozen_layers needs a model with a sequential trunk (features); "
                         f"{type(model).__name__} has none")
    if count >= len(features):
        raise ValueError(f"frozen_layers {count} would freeze the whole trunk of {len(features)} modules")
    for module in features[:count]:
        module.requires_grad_(False)
        setattr(module, FROZEN, True)
        module.eval()


def is_channels_last(model: nn.Module) -> bool:
    """Whether ``model``'s first 4-D weight is stored channels-last (inputs should then be too)."""
    for p in model.parameters():
        if p.dim() == 4:
            return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    return False


def to_device(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor in it (also inside dicts, lists and tuples) on ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value


def train_one_epoch(model: nn.Module, loader: DataLoader, opt: torch.optim.Optimizer,
                    sched: torch.optim.lr_scheduler.LRScheduler, loss_fn: LossFn, epoch: int,
                    progress: bool = True, scaler: torch.amp.GradScaler | None = None,
                    amp: AmpMode = "auto", after_step: Callable[[], None] | None = None) -> float:
    """One pass over ``loader`` on the device of ``model``'s parameters, autocast per ``amp``
    (:mod:`training.precision`); returns the mean training loss (of this process's shard). ``scaler``: see
    :func:`training.precision.make_scaler` (made here when not given). ``after_step`` runs after every optimizer
    step (e.g. a weight average's update)."""
    model.train()
    for module in model.modules():
        if getattr(module, FROZEN, False):
            module.eval()  # a frozen prefix (freeze_prefix) keeps its BatchNorm statistics
    device = next(model.parameters()).device
    memory_format = torch.channels_last if is_channels_last(model) else torch.contiguous_format
    scaler = scaler if scaler is not None else make_scaler(device, amp)
    total, n = 0.0, 0
    bar = tqdm(loader, desc=f"epoch {epoch}", unit="batch", leave=False, disable=not progress)
    for images, targets in bar:
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        targets = to_device(targets, device)
        opt.zero_grad(set_to_none=True)
        with autocast(device, amp):
            loss = loss_fn(model(images), targets)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        if after_step is not None:
            after_step()
        total += float(loss.detach()) * len(images)
        n += len(images)
        bar.set_postfix(loss=f"{total / n:.3f}")
    return total / max(n, 1)


@torch.inference_mode()
def predict(module: nn.Module, loader: DataLoader, head: Callable[[Any], Any]) -> tuple[list[Any], list[Any]]:
    """``module`` in eval mode over ``loader`` (on its parameters' device and memory format, float32): per
    batch ``head(outputs)`` (e.g. probabilities as numpy) and the batch's targets, as two lists."""
    module.eval()
    device = next(module.parameters()).device
    memory_format = torch.channels_last if is_channels_last(module) else torch.contiguous_format
    outputs, targets = [], []
    for images, batch_targets in loader:
        outputs.append(head(module(images.to(device).contiguous(memory_format=memory_format))))
        targets.append(batch_targets)
    return outputs, targets
