"""Train the image-quality model: labels, data, loss, ``train_one_epoch``, ``evaluate``, ``main``.

Task
----
One multi-label classifier (a registry backbone + global-average-pool + linear head, e.g.
``mobilenet_v3_small``) outputs :data:`QUALITY_CLASSES` logits: ``gradable`` and one per reason group, the
reasons being named as the service's classic gate names them (:data:`service.quality.REASONS`). Labels come
from the synthetic generator's ``quality.csv`` (:class:`datasets.synthetic.quality.QualityTruth`): an image is
gradable iff no artefact reached its threshold, and a reason group is positive iff one of its artefacts
(:data:`REASON_GROUPS`) did. A visible but sub-threshold artefact is a negative everywhere: the model must learn
the grader's threshold, not the mere presence of a defect.

Loss: binary cross-entropy on all outputs, every logit weighted alike (the reasons are the explanation the
service reports, and they make the shared features learn each defect separately).

Data: the images are preprocessed once with :func:`models.preprocess.preprocess` — the serving function — so
a field defect (off-centre, cut field) is seen as serving will see it: the crop is centred on the *visible*
field, and what is missing shows as black chords or a truncated disc. Augmentation is geometric and exact
(flips, quarter turns): photometric jitter would change the very exposure and contrast the labels describe.

Checkpoints carry the grader's keys, so :func:`training.export.load_checkpoint` rebuilds the model.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from datasets.readers import DatasetError, FundusRecord
from datasets.readers.common import csv_rows
from datasets.synthetic.quality import ARTEFACTS, QUALITY_COLUMNS, QualityError, QualityTruth
from models.architectures import build
from models.preprocess import normalize, preprocess
from training.resume import resume_from
from training.config import TrainConfig
from training.data import load_rgb, read_records, split_by_patient
from training.quality_metrics import choose_gradable_threshold, quality_metrics
from training.train import _save_atomic, code_commit, ensure_data, warmup_cosine

#: Reason groups of the model, in the service's reporting order (:data:`service.quality.REASONS`), each with
#: the generator artefacts it stands for. ``jpeg_artefacts`` is a loss of fine detail, as defocus is; a lid
#: shadow is a dark region, as uneven illumination is.
REASON_GROUPS: Mapping[str, tuple[str, ...]] = {
    "field": ("off_centre", "cut_field"),
    "underexposed": ("underexposed",),
    "overexposed": ("overexposed",),
    "blur": ("blur", "jpeg_artefacts"),
    "haze": ("haze",),
    "uneven": ("uneven_illumination", "lid_shadow"),
}
#: The model's outputs, in order: the card's ``classes``.
QUALITY_CLASSES: tuple[str, ...] = ("gradable", *REASON_GROUPS)
#: The one layout that carries quality labels (``quality.csv``).
QUALITY_FORMAT = "synthetic"
QUALITY_CSV = "quality.csv"


def _check_groups() -> None:
    covered = [a for arts in REASON_GROUPS.values() for a in arts]
    if sorted(covered) != sorted(ARTEFACTS):  # a new generator artefact must be given a reason group
        raise RuntimeError(f"REASON_GROUPS covers {sorted(covered)}, the generator draws {sorted(ARTEFACTS)}")


_check_groups()


def quality_targets(truth: QualityTruth) -> np.ndarray:
    """``(len(QUALITY_CLASSES),)`` float32 0/1 targets of one image: gradable, then each reason group."""
    reasons = set(truth.reasons)
    groups = [any(a in reasons for a in arts) for arts in REASON_GROUPS.values()]
    return np.array([truth.gradable, *groups], dtype=np.float32)


@dataclass(frozen=True)
class QualityItem:
    """One photograph with its quality truth (``record.group`` keeps a patient's eyes on one side of a split)."""

    record: FundusRecord
    truth: QualityTruth


def read_quality_truth(root: Path) -> dict[str, QualityTruth]:
    """``quality.csv`` of the synthetic folder ``root`` as image id → truth; :class:`DatasetError` naming the
    file and line for a missing file or a malformed row."""
    path = Path(root) / QUALITY_CSV
    if not path.is_file():
        raise DatasetError(f"{path} is missing: the quality model trains on a Fovea synthetic folder with quality "
                           f"labels (python -m datasets.synthetic --out DIR --count N --p-degraded 0.6)")
    out: dict[str, QualityTruth] = {}
    for where, row in csv_rows(path, ("image", *QUALITY_COLUMNS)):
        try:
            out[row["image"]] = QualityTruth.from_csv_fields(row, where=where)
        except QualityError as exc:
            raise DatasetError(str(exc)) from None
    return out


def load_quality(root: Path, fmt: str, *, split: str | None = None) -> list[QualityItem]:
    """Every image of ``root`` with its quality truth. Only the ``synthetic`` layout has quality labels: another
    ``fmt`` is a :class:`DatasetError`, as is an image without a ``quality.csv`` row."""
    if fmt != QUALITY_FORMAT:
        raise DatasetError(f"{root}: the image-quality model needs quality labels, which only the {QUALITY_FORMAT!r} "
                           f"layout carries (quality.csv); got format {fmt!r}")
    records = read_records(Path(root), fmt, split=split)
    truths = read_quality_truth(Path(root))
    missing = [r.image.stem for r in records if r.image.stem not in truths]
    if missing:
        raise DatasetError(f"{Path(root) / QUALITY_CSV}: no row for {len(missing)} image(s), first {missing[0]!r}")
    return [QualityItem(r, truths[r.image.stem]) for r in records]


def split_items(items: Sequence[QualityItem], val_fraction: float, seed: int
                ) -> tuple[list[QualityItem], list[QualityItem]]:
    """Patient-wise split (:func:`training.data.split_by_patient`) of quality items."""
    by_image = {it.record.image: it for it in items}
    train, val = split_by_patient([it.record for it in items], val_fraction, seed)
    return [by_image[r.image] for r in train], [by_image[r.image] for r in val]


class QualityDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Preprocessed crops (uint8, in memory) and their :func:`quality_targets`; items are ``(image, target)``."""

    def __init__(self, items: Sequence[QualityItem], size: int, *, train: bool, seed: int = 0,
                 desc: str = "preprocess") -> None:
        self.train, self._seed, self._epoch = train, seed, 0
        self.crops = np.empty((len(items), size, size, 3), np.uint8)
        self.targets = np.stack([quality_targets(it.truth) for it in items]) if items else \
            np.zeros((0, len(QUALITY_CLASSES)), np.float32)
        for i, it in enumerate(tqdm(items, desc=desc, unit="img", leave=False)):
            self.crops[i] = preprocess(load_rgb(it.record.image), size).crop

    def set_epoch(self, epoch: int) -> None:
        """Vary augmentation per epoch deterministically."""
        self._epoch = epoch

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        crop = self.crops[index]
        if self.train:
            rng = np.random.default_rng([self._seed, self._epoch, index])
            crop = np.rot90(crop, k=int(rng.integers(4)))
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
        return torch.from_numpy(normalize(np.ascontiguousarray(crop))), torch.from_numpy(self.targets[index])


def quality_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over all outputs and images."""
    return F.binary_cross_entropy_with_logits(logits, targets)


def train_one_epoch(model: nn.Module, loader: DataLoader, opt: torch.optim.Optimizer,
                    sched: torch.optim.lr_scheduler.LRScheduler, epoch: int, progress: bool = True) -> float:
    """One pass over ``loader``; returns the mean training loss."""
    model.train()
    total, n = 0.0, 0
    bar = tqdm(loader, desc=f"epoch {epoch}", unit="batch", leave=False, disable=not progress)
    for x, y in bar:
        opt.zero_grad(set_to_none=True)
        loss = quality_loss(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        total += float(loss.detach()) * len(y)
        n += len(y)
        bar.set_postfix(loss=f"{total / n:.3f}")
    return total / max(n, 1)


@torch.inference_mode()
def predict(model: nn.Module, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid probabilities and 0/1 targets, both ``(N, len(QUALITY_CLASSES))``."""
    model.eval()
    probs, targets = [], []
    for x, y in loader:
        probs.append(torch.sigmoid(model(x)).numpy())
        targets.append(y.numpy())
    return np.concatenate(probs), np.concatenate(targets)


def evaluate(model: nn.Module, loader: DataLoader, threshold: float | None = None) -> dict[str, float]:
    """:func:`training.quality_metrics.quality_metrics` on ``loader``."""
    probs, targets = predict(model, loader)
    return quality_metrics(probs, targets, QUALITY_CLASSES, threshold)


def check_config(cfg: TrainConfig) -> None:
    """``ValueError`` when ``cfg`` cannot train the quality model (wrong task, output count or data layout)."""
    if cfg.task != "image-quality":
        raise ValueError(f"config task is {cfg.task!r}, not 'image-quality'")
    if cfg.num_classes != len(QUALITY_CLASSES):
        raise ValueError(f"num_classes must be {len(QUALITY_CLASSES)} for the quality model "
                         f"({', '.join(QUALITY_CLASSES)}), got {cfg.num_classes}")
    if cfg.data.format != QUALITY_FORMAT:
        raise ValueError(f"data.format must be {QUALITY_FORMAT!r} (the layout with quality.csv), got {cfg.data.format!r}")


def main(cfg: TrainConfig, *, resume: bool = False, command: str = "") -> Path:
    """Train per ``cfg``; write ``last.pt``/``best.pt`` (best validation quality AUC, i.e. of gradability) and
    ``history.json`` into ``cfg.out``; return the path of ``best.pt``."""
    check_config(cfg)
    torch.manual_seed(cfg.seed)
    torch.set_flush_denormal(True)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ensure_data(Path(cfg.data.train), cfg.data.synthetic_train)
    items = load_quality(Path(cfg.data.train), cfg.data.format)
    train_items, val_items = split_items(items, cfg.data.val_fraction, cfg.seed)
    if not train_items or not val_items:
        raise ValueError(f"need images for both training and validation; got {len(train_items)} and {len(val_items)}")
    train_ds = QualityDataset(train_items, cfg.input_size, train=True, seed=cfg.seed, desc="preprocess train")
    val_ds = QualityDataset(val_items, cfg.input_size, train=False, desc="preprocess val")
    g = torch.Generator().manual_seed(cfg.seed)
    train_dl = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, generator=g, num_workers=cfg.workers,
                          drop_last=len(train_ds) > cfg.batch_size)
    val_dl = DataLoader(val_ds, batch_size=cfg.batch_size * 2, num_workers=cfg.workers)

    model = build(cfg.architecture, num_classes=cfg.num_classes, dropout=cfg.dropout)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.epochs * len(train_dl)))
    start, best, stale, history = 0, -1.0, 0, []
    last = out / "last.pt"
    if resume and last.is_file():
        start, best, stale, history = resume_from(last, model, opt, sched, "best_auc")
    t0 = time.perf_counter()
    for epoch in range(start, cfg.epochs):
        g.manual_seed(cfg.seed + epoch)
        train_ds.set_epoch(epoch)
        loss = train_one_epoch(model, train_dl, opt, sched, epoch)
        probs, targets = predict(model, val_dl)
        op = choose_gradable_threshold(probs[:, 0], targets[:, 0], cfg.ungradable_min_sensitivity)
        metrics = quality_metrics(probs, targets, QUALITY_CLASSES, op.threshold)
        history.append({"epoch": epoch, "train_loss": loss, **{f"val_{k}": v for k, v in metrics.items()}})
        auc = metrics.get("quality_auc", 0.0)
        improved = auc > best
        best, stale = (auc, 0) if improved else (best, stale + 1)
        print(f"epoch {epoch}: loss {loss:.4f} val quality AUC {auc:.3f}{' *' if improved else ''}", file=sys.stderr)
        ck: dict[str, Any] = {
            "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "epoch": epoch, "best_auc": best, "stale": stale, "history": json.dumps(history),
            "config": json.dumps(cfg.to_dict()), "command": command, "code_commit": code_commit(),
            "torch_version": str(torch.__version__), "seconds": time.perf_counter() - t0,
            "val_metrics": json.dumps(metrics),
            "operating_point": json.dumps({"threshold": op.threshold, "sensitivity": op.sensitivity,
                                           "specificity": op.specificity}),
        }
        _save_atomic(ck, last)
        if improved:
            _save_atomic(ck, out / "best.pt")
        (out / "history.json").write_text(json.dumps(history, indent=2))
        if stale >= cfg.early_stopping_patience:
            print(f"early stop: no quality AUC improvement for {stale} epochs", file=sys.stderr)
            break
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    return out / "best.pt"
