"""``python -m training train``: the one training loop, for every task (:mod:`training.tasks`).

Per epoch: :func:`training.engine.train_one_epoch` on this process's shard, then rank 0 validates with the
task's metrics, keeps ``last.pt`` and the best epoch's ``best.pt`` (by the task's selection metric), appends to
``history.json`` and draws ``history.png``; training stops early after ``early_stopping_patience`` epochs
without improvement. Under ``torchrun`` each process trains on its shard of every epoch (``DistributedSampler``,
or :class:`~training.data.EpochSampler` for ``sqrt-balanced``) with ``batch_size / world size`` images, so the
global batch and the schedule match a single-process run; gradients are averaged by
``DistributedDataParallel``. Rank 0 alone validates, decides early stopping for all, and writes files.
Mixed precision per the config's ``amp`` (:mod:`training.precision`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from training.cards import code_commit
from training.checkpoint import resume_from, save_atomic
from training.config import SyntheticSpec, TrainConfig
from training.data import EpochSampler
from training.distributed import World, barrier, broadcast, setup, teardown
from training.ema import make_ema
from training.engine import freeze_prefix, param_groups, train_one_epoch, warmup_cosine
from training.precision import make_scaler, training_device
from training.report import plot_history
from training.tasks import Task, get_task


def ensure_data(root: Path, spec: SyntheticSpec | None) -> None:
    """Generate a synthetic split at ``root`` if the config says how (``spec``) and ``root`` has no
    ``trainLabels.csv`` yet. Without ``spec`` nothing happens: the dataset reader reports a missing dataset."""
    if spec is None or (root / "trainLabels.csv").is_file():
        return
    from datasets.synthetic.writer import generate

    print(f"generating {spec.count} synthetic images into {root} (seed {spec.seed})", file=sys.stderr)
    generate(root, count=spec.count, seed=spec.seed, size=spec.size, p_degraded=spec.p_degraded)


def main(cfg: TrainConfig, *, resume: bool = False, command: str = "") -> Path:
    """Train the task ``cfg.task`` per ``cfg``; write ``last.pt``/``best.pt`` (:mod:`training.checkpoint`, with
    the resolved config), ``history.json``, ``history.png`` and ``config.json`` into ``cfg.out``; return the
    path of ``best.pt``. ``resume`` continues from ``<out>/last.pt`` when it exists."""
    task = get_task(cfg.task)
    task.check_config(cfg)
    world = setup()
    try:
        return fit(task, cfg, world, resume=resume, command=command)
    finally:
        teardown(world)


def _sampler(task: Task, cfg: TrainConfig, dataset: Any, world: World) -> Sampler[int] | None:
    """The training sampler: ``sqrt-balanced`` draws, this rank's shard, or ``None`` (shuffle in the loader)."""
    if cfg.sampler == "sqrt-balanced":
        return EpochSampler(task.sample_weights(dataset), seed=cfg.seed, rank=world.rank, world=world.size)
    if world.distributed:
        return DistributedSampler(dataset, num_replicas=world.size, rank=world.rank, shuffle=True, seed=cfg.seed,
                                  drop_last=True)
    return None


def fit(task: Task, cfg: TrainConfig, world: World, *, resume: bool = False, command: str = "") -> Path:
    """:func:`main` in the process group ``world``."""
    torch.manual_seed(cfg.seed)
    # Denormal floats make x86 CPUs crawl; flushing them halved a MobileNetV3 training step here.
    torch.set_flush_denormal(True)
    out = Path(cfg.out)
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        ensure_data(Path(cfg.data.train), cfg.data.synthetic_train)
    barrier(world)
    train_items, val_items = task.split(cfg, verbose=world.is_main)
    if not train_items or not val_items:
        raise ValueError(f"need images for both training and validation; got {len(train_items)} and {len(val_items)}")
    train_ds = task.dataset(train_items, cfg, train=True, desc="preprocess train")
    batch = max(1, cfg.batch_size // world.size)
    g = torch.Generator().manual_seed(cfg.seed)
    sampler = _sampler(task, cfg, train_ds, world)
    train_dl = DataLoader(train_ds, batch_size=batch, shuffle=sampler is None, sampler=sampler, generator=g,
                          collate_fn=task.collate, num_workers=cfg.workers,
                          drop_last=len(train_ds) // world.size > batch)  # type: ignore[arg-type]
    val_dl = None
    if world.is_main:
        val_ds = task.dataset(val_items, cfg, train=False, desc="preprocess val")
        val_dl = DataLoader(val_ds, batch_size=cfg.batch_size * 2, collate_fn=task.collate, num_workers=cfg.workers)

    device = training_device()
    core = task.build_model(cfg).to(device)
    if cfg.frozen_layers:
        freeze_prefix(core, cfg.frozen_layers)
    if cfg.channels_last or task.channels_last:
        core = core.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(param_groups(core, cfg.lr, cfg.backbone_lr_scale), lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.epochs * len(train_dl)))
    scaler = make_scaler(device, cfg.amp)
    loss_fn = task.loss_fn(cfg)
    ema = make_ema(core, cfg.ema_decay) if cfg.ema_decay is not None else None
    # What is validated, kept as the checkpoint's ``model`` and exported: the weight average when there is one.
    kept = core if ema is None else ema.module
    start, best, stale, history = 0, float("-inf"), 0, []
    last = out / "last.pt"
    if resume and last.is_file():
        start, best, stale, history = resume_from(last, core, opt, sched, task.best_key, scaler, ema=ema)
    ddp_devices = [device.index] if device.type == "cuda" else None
    model: nn.Module = DistributedDataParallel(core, device_ids=ddp_devices) if world.distributed else core

    t0, cpu0 = time.perf_counter(), time.process_time()
    for epoch in range(start, cfg.epochs):
        # Shuffle order and augmentation are functions of (seed, epoch): a resumed run replays the same epochs.
        g.manual_seed(cfg.seed + epoch)
        torch.manual_seed(cfg.seed + epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        train_ds.set_epoch(epoch)  # type: ignore[attr-defined]
        loss = train_one_epoch(model, train_dl, opt, sched, loss_fn, epoch, progress=world.is_main, scaler=scaler,
                               amp=cfg.amp, after_step=None if ema is None else lambda: ema.update_parameters(core))
        stop = False
        if world.is_main:
            assert val_dl is not None
            ck = {"model": kept.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                  "scaler": scaler.state_dict()}
            if ema is not None:
                ck |= {"trained_model": core.state_dict(), "ema_updates": int(ema.n_averaged)}
            stop, best, stale = end_of_epoch(task, cfg, kept, val_dl, ck, epoch=epoch, loss=loss, history=history,
                                             best=best, stale=stale, command=command, t0=t0, cpu0=cpu0)
        if broadcast(stop, world):
            break
    if world.is_main:
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    return out / "best.pt"


def end_of_epoch(task: Task, cfg: TrainConfig, core: nn.Module, val_dl: DataLoader, state: dict[str, Any], *,
                 epoch: int, loss: float, history: list[dict[str, float]], best: float, stale: int, command: str,
                 t0: float, cpu0: float) -> tuple[bool, float, int]:
    """Rank 0's end of an epoch: validate, log, write checkpoints (``state``: the model, optimizer, scheduler
    and scaler states) and history; returns ``(stop, best, stale)``."""
    out = Path(cfg.out)
    val = task.validate(core, val_dl, cfg)
    # Wall minutes and CPU minutes (this process, all threads): on a shared machine the CPU time divided by the
    # cores is what the run would have taken alone, which learning curves against time should show.
    history.append({"epoch": epoch, "train_loss": loss, "minutes": (time.perf_counter() - t0) / 60,
                    "cpu_minutes": (time.process_time() - cpu0) / 60, "threads": torch.get_num_threads(),
                    **{f"val_{k}": v for k, v in val.metrics.items()}})
    score = task.score(val.metrics)
    improved = score > best
    best, stale = (score, 0) if improved else (best, stale + 1)
    print(f"epoch {epoch}: loss {loss:.4f} {task.summary(val.metrics)}{' *' if improved else ''}", file=sys.stderr)
    ck: dict[str, Any] = {
        **state, "epoch": epoch, task.best_key: best, "stale": stale, "history": json.dumps(history),
        "config": json.dumps(cfg.to_dict()), "command": command, "code_commit": code_commit(),
        "torch_version": str(torch.__version__), "seconds": time.perf_counter() - t0,
        "val_metrics": json.dumps(val.metrics),
    }
    if val.operating_point is not None:
        ck["operating_point"] = json.dumps(val.operating_point)
    save_atomic(ck, out / "last.pt")
    if improved:
        save_atomic(ck, out / "best.pt")
    (out / "history.json").write_text(json.dumps(history, indent=2))
    plot_history(history, out / "history.png", task.curves)
    stop = stale >= cfg.early_stopping_patience
    if stop:
        print(f"early stop: no {task.selection_label} improvement for {stale} epochs", file=sys.stderr)
    return stop, best, stale
