"""Train the DR grader: ``train_one_epoch``, ``evaluate``, ``main`` (torchvision reference-script style)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from models.architectures import build
from models.preprocess import recipe_for
from training.config import SyntheticSpec, TrainConfig
from training.distributed import World, barrier, broadcast, setup, teardown
from training.data import EpochSampler, FundusDataset, balanced_weights, load_graded, split_by_patient
from training.losses import build_loss
from training.report import plot_history
from training.metrics import choose_operating_point, grader_metrics, referable_probability


def ensure_data(root: Path, spec: SyntheticSpec | None) -> None:
    """Generate a synthetic split at ``root`` if the config says how (``spec``) and ``root`` has no
    ``trainLabels.csv`` yet. Without ``spec`` nothing happens: the dataset reader reports a missing dataset."""
    if spec is None or (root / "trainLabels.csv").is_file():
        return
    from datasets.synthetic.writer import generate

    print(f"generating {spec.count} synthetic images into {root} (seed {spec.seed})", file=sys.stderr)
    generate(root, count=spec.count, seed=spec.seed, size=spec.size, p_degraded=spec.p_degraded)


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


def training_device() -> torch.device:
    """This process's GPU (``torchrun`` sets it in :func:`training.distributed.setup`) if CUDA is available,
    else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def use_amp(device: torch.device) -> bool:
    """Mixed precision (float16 autocast + loss scaling) on CUDA only: on these CPUs bfloat16 autocast is
    slower than float32 (no AVX-512 BF16), so the CPU path stays exactly float32."""
    return device.type == "cuda"


def make_scaler(device: torch.device) -> torch.amp.GradScaler:
    """A gradient scaler that is active when :func:`use_amp` is (float16 gradients underflow without it) and a
    pass-through otherwise, so the training step has one code path."""
    return torch.amp.GradScaler(device.type, enabled=use_amp(device))


def train_one_epoch(model: nn.Module, loader: DataLoader, opt: torch.optim.Optimizer,
                    sched: torch.optim.lr_scheduler.LRScheduler, loss_fn: nn.Module, epoch: int,
                    progress: bool = True, scaler: torch.amp.GradScaler | None = None) -> float:
    """One pass over ``loader`` on the device of ``model``'s parameters (autocast there when :func:`use_amp`);
    returns the mean training loss (of this process's shard). ``scaler``: see :func:`make_scaler`."""
    model.train()
    device = next(model.parameters()).device
    channels_last = _is_channels_last(model)
    amp = use_amp(device)
    scaler = scaler if scaler is not None else make_scaler(device)
    total, n = 0.0, 0
    bar = tqdm(loader, desc=f"epoch {epoch}", unit="batch", leave=False, disable=not progress)
    for x, y in bar:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=amp):
            loss = loss_fn(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        total += float(loss.detach()) * len(y)
        n += len(y)
        bar.set_postfix(loss=f"{total / n:.3f}")
    return total / max(n, 1)


def param_groups(model: nn.Module, lr: float, backbone_scale: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: the trunk (``model.features``) at ``lr * backbone_scale``, the rest (the head)
    at ``lr``; one group when the scale is 1 or the model has no ``features``."""
    features = getattr(model, "features", None)
    if backbone_scale == 1.0 or not isinstance(features, nn.Module):
        return [{"params": list(model.parameters()), "lr": lr}]
    trunk = {id(p) for p in features.parameters()}
    return [{"params": list(features.parameters()), "lr": lr * backbone_scale},
            {"params": [p for p in model.parameters() if id(p) not in trunk], "lr": lr}]


def _is_channels_last(model: nn.Module) -> bool:
    """Whether ``model``'s first 4-D weight is stored channels-last (inputs should then be too)."""
    for p in model.parameters():
        if p.dim() == 4:
            return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    return False


@torch.inference_mode()
def predict(model: nn.Module, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities ``(N, C)`` and labels ``(N,)`` over ``loader``."""
    model.eval()
    device = next(model.parameters()).device
    probs, labels = [], []
    memory_format = torch.channels_last if _is_channels_last(model) else torch.contiguous_format
    for x, y in loader:
        x = x.to(device).contiguous(memory_format=memory_format)
        probs.append(torch.softmax(model(x).float(), dim=1).cpu().numpy())
        labels.append(y.numpy())
    return np.concatenate(probs), np.concatenate(labels)


def evaluate(model: nn.Module, loader: DataLoader, threshold: float | None = None) -> dict[str, float]:
    """Grader metrics (see :func:`training.metrics.grader_metrics`) on ``loader``."""
    probs, labels = predict(model, loader)
    return grader_metrics(probs, labels, threshold)


def _save_atomic(obj: dict[str, Any], path: Path) -> None:
    """Write a checkpoint so that a crash mid-write never leaves a truncated file under ``path``."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def code_commit() -> str:
    """The git commit of the code (with ``-dirty`` if the tree has changes), or ``unknown``."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(cfg: TrainConfig, *, resume: bool = False, command: str = "") -> Path:
    """Train per ``cfg``; write ``last.pt``/``best.pt`` (with the resolved config) and ``history.json`` into
    ``cfg.out``; return the path of ``best.pt``.

    Under ``torchrun`` each process trains on its shard of every epoch (``DistributedSampler``) with
    ``batch_size / world size`` images, so the global batch and the schedule match a single-process run;
    gradients are averaged by ``DistributedDataParallel``. Rank 0 validates, decides early stopping for all,
    and alone writes files.
    """
    world = setup()
    try:
        return _train(cfg, world, resume=resume, command=command)
    finally:
        teardown(world)


def _train(cfg: TrainConfig, world: World, *, resume: bool, command: str) -> Path:
    torch.manual_seed(cfg.seed)
    # Denormal floats make x86 CPUs crawl; flushing them halved a MobileNetV3 training step here.
    torch.set_flush_denormal(True)
    out = Path(cfg.out)
    train_root = Path(cfg.data.train)
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        ensure_data(train_root, cfg.data.synthetic_train)
    barrier(world)
    items = load_graded(train_root, cfg.data.format, verbose=world.is_main)
    train_items, val_items = split_by_patient(items, cfg.data.val_fraction, cfg.seed)
    if not train_items or not val_items:
        raise ValueError(f"need images for both training and validation; got {len(train_items)} and {len(val_items)}")
    recipe = recipe_for(cfg.preprocessing)
    train_ds = FundusDataset(train_items, cfg.input_size, train=True, seed=cfg.seed, desc="preprocess train",
                             recipe=recipe, max_angle=cfg.max_rotation)
    batch = max(1, cfg.batch_size // world.size)
    g = torch.Generator().manual_seed(cfg.seed)
    sampler: DistributedSampler | EpochSampler | None
    if cfg.sampler == "sqrt-balanced":
        sampler = EpochSampler(balanced_weights(train_ds.labels), seed=cfg.seed, rank=world.rank, world=world.size)
    elif world.distributed:
        sampler = DistributedSampler(train_ds, num_replicas=world.size, rank=world.rank, shuffle=True, seed=cfg.seed,
                                     drop_last=True)
    else:
        sampler = None
    train_dl = DataLoader(train_ds, batch_size=batch, shuffle=sampler is None, sampler=sampler, generator=g,
                          num_workers=cfg.workers, drop_last=len(train_ds) // world.size > batch)
    val_dl = None
    if world.is_main:
        val_ds = FundusDataset(val_items, cfg.input_size, train=False, desc="preprocess val", recipe=recipe)
        val_dl = DataLoader(val_ds, batch_size=cfg.batch_size * 2, num_workers=cfg.workers)

    device = training_device()
    core = build(cfg.architecture, num_classes=cfg.num_classes, dropout=cfg.dropout).to(device)
    if cfg.channels_last:
        core = core.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(param_groups(core, cfg.lr, cfg.backbone_lr_scale), lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.epochs * len(train_dl)))
    scaler = make_scaler(device)
    loss_fn = build_loss(cfg.objective, label_smoothing=cfg.label_smoothing)
    start, best_kappa, stale, history = 0, -2.0, 0, []
    last = out / "last.pt"
    if resume and last.is_file():
        ck = torch.load(last, map_location="cpu", weights_only=True)
        core.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        if ck.get("scaler"):  # an AMP run's loss scale; empty for CPU runs
            scaler.load_state_dict(ck["scaler"])
        start, best_kappa, stale, history = ck["epoch"] + 1, ck["best_kappa"], ck["stale"], json.loads(ck["history"])
        if world.is_main:
            print(f"resumed from {last} at epoch {start}", file=sys.stderr)
    ddp_devices = [device.index] if device.type == "cuda" else None
    model: nn.Module = DistributedDataParallel(core, device_ids=ddp_devices) if world.distributed else core

    t0, cpu0 = time.perf_counter(), time.process_time()
    for epoch in range(start, cfg.epochs):
        # Shuffle order and augmentation are functions of (seed, epoch): a resumed run replays the same epochs.
        g.manual_seed(cfg.seed + epoch)
        torch.manual_seed(cfg.seed + epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        train_ds.set_epoch(epoch)
        loss = train_one_epoch(model, train_dl, opt, sched, loss_fn, epoch, progress=world.is_main, scaler=scaler)
        stop = False
        if world.is_main:
            assert val_dl is not None
            stop, best_kappa, stale = _validate_and_save(cfg, core, opt, sched, scaler, val_dl, epoch, loss,
                                                         history, best_kappa, stale, command, t0, cpu0)
        if broadcast(stop, world):
            break
    if world.is_main:
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    return out / "best.pt"


def _validate_and_save(cfg: TrainConfig, core: nn.Module, opt: torch.optim.Optimizer,
                       sched: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
                       val_dl: DataLoader, epoch: int, loss: float,
                       history: list[dict[str, float]], best_kappa: float, stale: int, command: str, t0: float,
                       cpu0: float = 0.0) -> tuple[bool, float, int]:
    """Rank 0's end of epoch: metrics, checkpoints, history; returns ``(stop, best_kappa, stale)``."""
    out = Path(cfg.out)
    probs, labels = predict(core, val_dl)
    op = choose_operating_point(referable_probability(probs), (labels >= 2).astype(np.int64),
                                cfg.referable_min_sensitivity)
    metrics = grader_metrics(probs, labels, op.threshold)
    # Wall minutes and CPU minutes (this process, all threads): on a shared machine the CPU time divided by the
    # cores is what the run would have taken alone, which learning curves against time should show.
    history.append({"epoch": epoch, "train_loss": loss, "minutes": (time.perf_counter() - t0) / 60,
                    "cpu_minutes": (time.process_time() - cpu0) / 60, "threads": torch.get_num_threads(),
                    **{f"val_{k}": v for k, v in metrics.items()}})
    kappa = metrics["quadratic_weighted_kappa"]
    if not math.isfinite(kappa):  # e.g. a validation split with one grade only
        kappa = -1.0
    improved = kappa > best_kappa
    print(f"epoch {epoch}: loss {loss:.4f} val kappa {kappa:.3f} acc {metrics['accuracy']:.3f} "
          f"ref-AUC {metrics.get('referable_auc', float('nan')):.3f}{' *' if improved else ''}", file=sys.stderr)
    if improved:
        best_kappa, stale = kappa, 0
    else:
        stale += 1
    ck: dict[str, Any] = {
        "model": core.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch, "best_kappa": best_kappa, "stale": stale, "history": json.dumps(history),
        "config": json.dumps(cfg.to_dict()), "command": command, "code_commit": code_commit(),
        "torch_version": str(torch.__version__), "seconds": time.perf_counter() - t0,
        "val_metrics": json.dumps(metrics),
        "operating_point": json.dumps({"threshold": op.threshold, "sensitivity": op.sensitivity,
                                       "specificity": op.specificity}),
    }
    _save_atomic(ck, out / "last.pt")
    if improved:
        _save_atomic(ck, out / "best.pt")
    (out / "history.json").write_text(json.dumps(history, indent=2))
    plot_history(history, out / "history.png")
    stop = stale >= cfg.early_stopping_patience
    if stop:
        print(f"early stop: no kappa improvement for {stale} epochs", file=sys.stderr)
    return stop, best_kappa, stale
