"""Train the image-quality model: labels, data, loss, ``train_one_epoch``, ``evaluate``, ``main``.

Task
----
One multi-label classifier (a registry backbone + global-average-pool + linear head, e.g.
``mobilenet_v3_small``) outputs :data:`QUALITY_CLASSES` logits: ``gradable`` and one per reason group, the
reasons being named as the service's classic gate names them (:data:`analysis.quality.REASONS`). Labels come
from the synthetic generator's ``quality.csv`` (:class:`datasets.synthetic.quality.QualityTruth`): an image is
gradable iff no artefact reached its threshold, and a reason group is positive iff one of its artefacts
(:data:`REASON_GROUPS`) did. A visible but sub-threshold artefact is a negative everywhere: the model must learn
the grader's threshold, not the mere presence of a defect.

Real photographs with human quality grades (``data.real_quality``, EyeQ's Good / Usable / Reject) train beside
the synthetic ones: Good and Usable are gradable with no reason, Reject is ungradable with *unknown* reasons
(EyeQ does not say why), marked :data:`UNKNOWN` in the targets and left out of the loss.

Loss: binary cross-entropy on all known outputs, every logit weighted alike (the reasons are the explanation the
service reports, and they make the shared features learn each defect separately).

Data: the images are preprocessed once with :func:`models.preprocess.preprocess` and the config's recipe — the
serving function — so
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
from models.preprocess import Recipe, preprocess, recipe_for
from training.resume import resume_from
from training.config import TrainConfig
from training.data import load_rgb, read_records, split_by_patient
from training.quality_metrics import choose_gradable_threshold, quality_metrics
from training.train import _save_atomic, code_commit, ensure_data, warmup_cosine

#: Reason groups of the model, in the service's reporting order (:data:`analysis.quality.REASONS`), each with
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
#: Target value of an output the data does not label (the reasons of a real "Reject"): no loss, no metric.
UNKNOWN = -1.0
#: EyeQ's grades: 0 Good, 1 Usable (both gradable), 2 Reject.
EYEQ_REJECT = 2
#: What real EyeQ-graded photographs are, and the terms they bring (a model fitted on them inherits both: its
#: card's ``intended_use`` via :func:`models.card.intended_use_for` and ``training.data_terms``).
EYEQ_DATA = "real EyePACS photographs graded by EyeQ (Kaggle competition data)"
EYEQ_TERMS = "non-commercial research use only (Kaggle EyePACS terms; EyeQ quality grades)"


def _check_groups() -> None:
    covered = [a for arts in REASON_GROUPS.values() for a in arts]
    if sorted(covered) != sorted(ARTEFACTS):  # a new generator artefact must be given a reason group
        raise RuntimeError(f"REASON_GROUPS covers {sorted(covered)}, the generator draws {sorted(ARTEFACTS)}")


_check_groups()


def quality_targets(truth: QualityTruth | None, eyeq: int | None = None) -> np.ndarray:
    """``(len(QUALITY_CLASSES),)`` float32 targets of one image: gradable, then each reason group; 0/1, or
    :data:`UNKNOWN` for the reasons of a real photograph graded ``eyeq`` Reject."""
    if truth is None:
        if eyeq is None:
            raise ValueError("a quality item needs a synthetic truth or an EyeQ grade")
        n = len(QUALITY_CLASSES) - 1
        return np.array([0.0, *[UNKNOWN] * n] if eyeq == EYEQ_REJECT else [1.0, *[0.0] * n], dtype=np.float32)
    reasons = set(truth.reasons)
    groups = [any(a in reasons for a in arts) for arts in REASON_GROUPS.values()]
    return np.array([truth.gradable, *groups], dtype=np.float32)


@dataclass(frozen=True)
class QualityItem:
    """One photograph with its quality truth: a synthetic ``truth`` or a human ``eyeq`` grade (0-2)
    (``record.group`` keeps a patient's eyes on one side of a split)."""

    record: FundusRecord
    truth: QualityTruth | None
    eyeq: int | None = None

    @property
    def targets(self) -> np.ndarray:
        return quality_targets(self.truth, self.eyeq)


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


def read_eyeq(path: Path) -> dict[str, int]:
    """An EyeQ-style CSV (``image,quality``; 0 Good, 1 Usable, 2 Reject) as image id → grade;
    :class:`DatasetError` naming the file and line for a malformed row."""
    out: dict[str, int] = {}
    for where, row in csv_rows(Path(path), ("image", "quality")):
        if row["quality"].strip() not in ("0", "1", "2"):
            raise DatasetError(f"{where}: quality must be 0, 1 or 2, got {row['quality']!r}")
        out[row["image"].strip()] = int(row["quality"])
    return out


def load_real_quality(labels: Path, images: Path, fmt: str) -> list[QualityItem]:
    """The photographs of ``images`` (layout ``fmt``) that ``labels`` grades, with their EyeQ grade;
    :class:`DatasetError` when a graded image is missing."""
    grades = read_eyeq(labels)
    records = {r.image.stem: r for r in read_records(Path(images), fmt)}
    missing = [k for k in grades if k not in records]
    if missing:
        raise DatasetError(f"{labels}: {len(missing)} graded image(s) not in {images}, first {missing[0]!r}")
    return [QualityItem(records[k], None, g) for k, g in grades.items()]


def load_training_items(cfg: TrainConfig) -> list[QualityItem]:
    """The synthetic items of ``cfg.data.train`` and, when the config names them, the real graded ones."""
    items = load_quality(Path(cfg.data.train), cfg.data.format)
    if cfg.data.real_quality:
        if not cfg.data.real_images:
            raise ValueError("data.real_quality needs data.real_images")
        items += load_real_quality(Path(cfg.data.real_quality), Path(cfg.data.real_images), cfg.data.real_format)
    return items


def split_items(items: Sequence[QualityItem], val_fraction: float, seed: int
                ) -> tuple[list[QualityItem], list[QualityItem]]:
    """Patient-wise split (:func:`training.data.split_by_patient`) of quality items, synthetic and real ones
    each on their own, so the real photographs' split does not depend on the synthetic folder (and
    :mod:`training.quality_real` can find the held-out real photographs from the real ones alone)."""
    by_image = {it.record.image: it for it in items}
    train: list[QualityItem] = []
    val: list[QualityItem] = []
    for part in ([it for it in items if it.truth is not None], [it for it in items if it.truth is None]):
        if part:
            t, v = split_by_patient([it.record for it in part], val_fraction, seed)
            train += [by_image[r.image] for r in t]
            val += [by_image[r.image] for r in v]
    return train, val


class QualityDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Preprocessed model images (``recipe``'s, uint8, in memory) and their :func:`quality_targets`; items are
    ``(image, target)``."""

    def __init__(self, items: Sequence[QualityItem], size: int, *, train: bool, seed: int = 0,
                 desc: str = "preprocess", recipe: Recipe | None = None) -> None:
        self.train, self._seed, self._epoch = train, seed, 0
        self.recipe = recipe or recipe_for("fovea.fundus-disc-crop")
        self.crops = np.empty((len(items), size, size, 3), np.uint8)
        self.targets = np.stack([it.targets for it in items]) if items else \
            np.zeros((0, len(QUALITY_CLASSES)), np.float32)
        for i, it in enumerate(tqdm(items, desc=desc, unit="img", leave=False)):
            self.crops[i] = preprocess(load_rgb(it.record.image), size, recipe=self.recipe).image

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
        return torch.from_numpy(self.recipe.to_tensor(np.ascontiguousarray(crop))), torch.from_numpy(self.targets[index])


def quality_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over all known outputs (targets other than :data:`UNKNOWN`) and images."""
    known = (targets >= 0).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, targets.clamp(min=0.0), weight=known, reduction="sum")
    return loss / known.sum().clamp(min=1.0)


def train_one_epoch(model: nn.Module, loader: DataLoader, opt: torch.optim.Optimizer,
                    sched: torch.optim.lr_scheduler.LRScheduler, epoch: int, progress: bool = True) -> float:
    """One pass over ``loader``; returns the mean training loss."""
    model.train()
    total, n = 0.0, 0
    bar = tqdm(loader, desc=f"epoch {epoch}", unit="batch", leave=False, disable=not progress)
    for x, y in bar:
        opt.zero_grad(set_to_none=True)
        loss = quality_loss(model(x.contiguous(memory_format=torch.channels_last)), y)
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
    if cfg.data.real_quality and not cfg.data.real_images:
        raise ValueError("data.real_quality needs data.real_images (the folder of the graded photographs)")
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
    items = load_training_items(cfg)
    train_items, val_items = split_items(items, cfg.data.val_fraction, cfg.seed)
    if not train_items or not val_items:
        raise ValueError(f"need images for both training and validation; got {len(train_items)} and {len(val_items)}")
    recipe = recipe_for(cfg.preprocessing)
    train_ds = QualityDataset(train_items, cfg.input_size, train=True, seed=cfg.seed, desc="preprocess train",
                              recipe=recipe)
    val_ds = QualityDataset(val_items, cfg.input_size, train=False, desc="preprocess val", recipe=recipe)
    g = torch.Generator().manual_seed(cfg.seed)
    train_dl = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, generator=g, num_workers=cfg.workers,
                          drop_last=len(train_ds) > cfg.batch_size)
    val_dl = DataLoader(val_ds, batch_size=cfg.batch_size * 2, num_workers=cfg.workers)

    # channels_last: ~1.7x faster convolutions on CPU (DESIGN.md, measured facts).
    model = build(cfg.architecture, num_classes=cfg.num_classes, dropout=cfg.dropout).to(memory_format=torch.channels_last)
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
