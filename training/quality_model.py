"""The image-quality model's labels, data and loss (its task: :mod:`training.tasks.quality`).

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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from datasets.readers import DatasetError, FundusRecord
from datasets.readers.common import csv_rows
from datasets.synthetic.quality import ARTEFACTS, QUALITY_COLUMNS, QualityError, QualityTruth
from models.preprocess import Recipe, preprocess, recipe_for
from training.config import TrainConfig
from training.data import load_rgb, read_records, split_by_patient
from training.engine import predict

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


def split_items(items: Sequence[QualityItem], val_fraction: float, seed: int, *, train_fraction: float = 1.0
                ) -> tuple[list[QualityItem], list[QualityItem]]:
    """Patient-wise split (:func:`training.data.split_by_patient`, ``train_fraction`` of the training patients
    kept) of quality items, synthetic and real ones each on their own, so the real photographs' split does not
    depend on the synthetic folder (and :mod:`training.quality_real` can find the held-out real photographs
    from the real ones alone)."""
    by_image = {it.record.image: it for it in items}
    train: list[QualityItem] = []
    val: list[QualityItem] = []
    for part in ([it for it in items if it.truth is not None], [it for it in items if it.truth is None]):
        if part:
            t, v = split_by_patient([it.record for it in part], val_fraction, seed, train_fraction=train_fraction)
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
    known = (targets >= 0).to(torch.float32)
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets.clamp(min=0.0), weight=known,
                                              reduction="sum")
    return loss / known.sum().clamp(min=1.0)


def quality_probabilities(model: nn.Module, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid probabilities and targets, both ``(N, len(QUALITY_CLASSES))``, of ``model`` over ``loader``."""
    probs, targets = predict(model, loader, lambda logits: torch.sigmoid(logits.float()).cpu().numpy())
    return np.concatenate(probs), np.concatenate([y.numpy() for y in targets])
