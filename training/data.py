"""Datasets for training: read any layout as :class:`~datasets.readers.FundusRecord`, keep the graded records,
split by patient, preprocess once with :mod:`models.preprocess`, augment on the fly."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from datasets.readers import READERS, SPLITS, DatasetError, FundusRecord, read_dataset
from models.preprocess import DISC_CROP, Recipe, preprocess

__all__ = ["READERS", "EpochSampler", "FundusDataset", "GradedSelection", "augment", "balanced_weights",
           "held_out_split", "is_synthetic_folder",
           "load_graded", "load_rgb", "read_records", "select_graded", "split_by_patient"]


def read_records(root: Path, fmt: str, *, split: str | None = None) -> list[FundusRecord]:
    """Every record of the dataset at ``root`` in layout ``fmt`` (see :func:`datasets.readers.read_dataset`)."""
    return read_dataset(root, fmt, split=split)


#: Files that only :mod:`datasets.synthetic` writes together: a folder holding all of them is synthetic data,
#: whatever ``--format`` it is read with (its ``trainLabels.csv`` also makes it a valid EyePACS layout).
SYNTHETIC_MARKERS = ("ground_truth.csv", "quality.csv", "lesions.csv")


def is_synthetic_folder(root: Path | str | None, fmt: str | None = None) -> bool:
    """Whether the dataset at ``root`` (read as ``fmt``) is synthetic: the ``synthetic`` layout, or a folder
    holding every one of :data:`SYNTHETIC_MARKERS`."""
    if fmt == "synthetic":
        return True
    if root is None:
        return False
    root = Path(root)
    return root.is_dir() and all((root / name).is_file() for name in SYNTHETIC_MARKERS)


def held_out_split(fmt: str) -> str | None:
    """The split evaluation reads by default: ``"test"`` for formats with published splits, else ``None``."""
    return "test" if "test" in SPLITS.get(fmt, ()) else None


@dataclass(frozen=True)
class GradedSelection:
    """What the grader can use: ``graded`` (a grade, not marked ungradable) and what was left out."""

    graded: list[FundusRecord]
    ungradable: int  # gradable is False (with or without a grade): the quality model's business
    unlabelled: int  # no grade and not marked ungradable (e.g. lesion-only records)


def select_graded(records: Sequence[FundusRecord]) -> GradedSelection:
    """Split ``records`` into those the grader trains and is evaluated on, and counts of the others."""
    graded = [r for r in records if r.grade is not None and r.gradable is not False]
    ungradable = sum(r.gradable is False for r in records)
    return GradedSelection(graded, ungradable, len(records) - len(graded) - ungradable)


def load_graded(root: Path, fmt: str, *, split: str | None = None, verbose: bool = True) -> list[FundusRecord]:
    """Read ``root`` and keep the graded records; say on stderr how many were skipped and why.

    :class:`DatasetError` when no record has a usable grade (e.g. a lesion-only COCO folder).
    """
    records = read_records(root, fmt, split=split)
    sel = select_graded(records)
    where = f"{root} ({fmt}{', ' + split if split else ''})"
    if verbose and (sel.ungradable or sel.unlabelled):
        print(f"{where}: {len(sel.graded)} graded images; skipped {sel.ungradable} ungradable and "
              f"{sel.unlabelled} without a grade", file=sys.stderr)
    if not sel.graded:
        raise DatasetError(f"{where}: none of its {len(records)} images has a grade the grader can use "
                           f"({sel.ungradable} ungradable, {sel.unlabelled} without a grade)")
    return sel.graded


def split_by_patient(records: Sequence[FundusRecord], val_fraction: float, seed: int, *,
                     train_fraction: float = 1.0) -> tuple[list[FundusRecord], list[FundusRecord]]:
    """Split so all images of a patient land on the same side (``record.patient``, else the file stem).

    ``train_fraction`` < 1 keeps only that share of the training patients (at least one), for learning curves
    against the amount of data. The validation patients do not depend on it, and the kept training patients
    are nested: a smaller fraction keeps a subset of a larger one's patients (same seed).
    """
    if not 0.0 < train_fraction <= 1.0:
        raise ValueError(f"train_fraction must be in (0, 1], not {train_fraction}")
    patients = sorted({r.group for r in records})
    rng = np.random.default_rng(seed)
    n_val = max(1, round(len(patients) * val_fraction)) if len(patients) > 1 else 0
    order = rng.permutation(patients).tolist()
    val_patients = set(order[:n_val])
    rest = order[n_val:]
    kept = set(rest[:max(1, round(len(rest) * train_fraction))]) if rest else set()
    train = [r for r in records if r.group in kept]
    val = [r for r in records if r.group in val_patients]
    return train, val


def _is_dicom(path: Path) -> bool:
    """DICOM Part 10 by its magic (``DICM`` after the 128-byte preamble), whatever the file is called."""
    with path.open("rb") as f:
        return f.read(132)[128:] == b"DICM"


def _load_dicom(path: Path) -> np.ndarray:
    """The first frame of a DICOM photograph as RGB, through the service's own decoder: training sees exactly
    the pixels serving will see (YBR→RGB, palette, MONOCHROME handling, the same codecs)."""
    from analysis.decode import DecodeLimits, decode
    from analysis.errors import FoveaError

    try:  # local files the user chose: the upload size limit does not apply, one frame is enough
        return decode(path.read_bytes(), limits=DecodeLimits(max_bytes=1 << 31, max_frames=1))[0].rgb
    except FoveaError as exc:
        raise ValueError(f"cannot read DICOM image {path}: {exc.message}") from None


def load_rgb(path: Path) -> np.ndarray:
    """Read an image file (JPEG, PNG, TIFF, ... or DICOM) as ``(H, W, 3)`` uint8 RGB; ``ValueError`` naming
    the file if unreadable."""
    path = Path(path)
    try:
        if _is_dicom(path):
            return _load_dicom(path)
    except OSError as exc:
        raise ValueError(f"cannot read image {path}: {exc.strerror}") from None
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class FundusDataset(Dataset[tuple[torch.Tensor, int]]):
    """Preprocessed crops held in memory (uint8), augmented per item when ``train`` is true.

    Preprocessing (decode + field crop + resize) runs once here, not every epoch: it is the same function
    serving calls, so the model sees exactly what it will see in production.
    """

    def __init__(self, records: Sequence[FundusRecord], size: int, *, train: bool, seed: int = 0,
                 desc: str = "preprocess", recipe: Recipe = DISC_CROP, max_angle: float = 20.0) -> None:
        ungraded = [r.image for r in records if r.grade is None]
        if ungraded:
            raise ValueError(f"{len(ungraded)} records have no grade (first: {ungraded[0]}); select graded "
                             f"records with select_graded() first")
        self.size = size
        self.train = train
        self.recipe = recipe
        self.max_angle = max_angle
        self.labels = np.array([r.grade for r in records], dtype=np.int64)
        self.crops = np.empty((len(records), size, size, 3), dtype=np.uint8)
        for i, record in enumerate(tqdm(records, desc=desc, unit="img", leave=False)):
            self.crops[i] = preprocess(load_rgb(record.image), size, recipe=recipe).image
        self._seed = seed
        self._epoch = 0
        #: soft targets ``(N, C)`` of a teacher (:mod:`training.distill`); when set, an item's target is
        #: ``{"grade": …, "teacher": …}``
        self.teacher: np.ndarray | None = None

    def set_epoch(self, epoch: int) -> None:
        """Vary augmentation per epoch deterministically."""
        self._epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | dict[str, Any]]:
        crop = self.crops[index]
        if self.train:
            rng = np.random.default_rng([self._seed, self._epoch, index])
            crop = augment(crop, rng, max_angle=self.max_angle, border=self.recipe.surround)
        image = torch.from_numpy(self.recipe.to_tensor(crop))
        if self.teacher is not None:
            return image, {"grade": int(self.labels[index]), "teacher": torch.from_numpy(self.teacher[index])}
        return image, int(self.labels[index])


def augment(crop: np.ndarray, rng: np.random.Generator, *, max_angle: float = 20.0, border: int = 0) -> np.ndarray:
    """Photometric and geometric jitter that a camera or a technician could cause; labels are unchanged.

    Flip (left/right eye), rotation ±``max_angle``° (a fundus has no "up" a grader relies on: 180 is fine for
    grading), scale ±8 %, brightness/contrast ±15 %, gamma 0.8–1.25. ``border`` fills what rotation uncovers
    (the recipe's surround: black as photographed, mid-grey after contrast normalisation).
    """
    s = crop.shape[0]
    angle = rng.uniform(-max_angle, max_angle)
    scale = rng.uniform(0.92, 1.08)
    m = cv2.getRotationMatrix2D((s / 2, s / 2), angle, scale)
    out = cv2.warpAffine(crop, m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=(border, border, border))
    if rng.random() < 0.5:
        out = out[:, ::-1]
    gain = rng.uniform(0.85, 1.15)
    bias = rng.uniform(-0.06, 0.06) * 255
    gamma = math.exp(rng.uniform(math.log(0.8), math.log(1.25)))
    lut = np.clip(255.0 * (np.arange(256) / 255.0) ** gamma * gain + bias, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(cv2.LUT(np.ascontiguousarray(out), lut))


def balanced_weights(labels: np.ndarray, power: float = 0.5) -> np.ndarray:
    """Per-item sampling weights ``count(label) ** -power``, normalised to sum to 1: ``power`` 0.5 (square-root
    balancing) draws a rare grade far more often than its share without repeating its few photographs as
    often as full balancing (``power`` 1) would."""
    counts = np.bincount(labels)
    w = counts[labels].astype(np.float64) ** -power
    return w / w.sum()


class EpochSampler(torch.utils.data.Sampler[int]):
    """Indices drawn with replacement by ``weights``, a fresh draw per epoch (a function of ``seed`` and
    :meth:`set_epoch`, identical in every process), of which process ``rank`` of ``world`` takes every
    ``world``-th: :class:`torch.utils.data.WeightedRandomSampler` for one or several processes."""

    def __init__(self, weights: np.ndarray, *, seed: int, rank: int = 0, world: int = 1) -> None:
        self.weights = np.asarray(weights, np.float64)
        self.seed, self.rank, self.world, self.epoch = seed, rank, world, 0
        self.per_rank = len(self.weights) // world

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self):  # type: ignore[no-untyped-def]
        rng = np.random.default_rng([self.seed, self.epoch, 7])
        draw = rng.choice(len(self.weights), size=self.per_rank * self.world, replace=True, p=self.weights)
        return iter(draw[self.rank::self.world].tolist())
