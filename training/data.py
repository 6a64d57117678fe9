"""Datasets for training: read a layout, preprocess once with :mod:`models.preprocess`, augment on the fly."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from datasets.eyepacs import read_eyepacs
from datasets.layouts import read_aptos, read_folders, read_idrid, read_messidor2
from models.preprocess import normalize, preprocess

#: Layout readers: format name → function returning ``[(image path, grade)]``.
READERS: dict[str, Callable[[Path], list[tuple[Path, int]]]] = {
    "eyepacs": read_eyepacs, "aptos": read_aptos, "messidor2": read_messidor2, "idrid": read_idrid,
    "folders": read_folders,
}


def read_items(root: Path, fmt: str) -> list[tuple[Path, int]]:
    """Read ``(image, grade)`` pairs from ``root`` in layout ``fmt``."""
    if fmt not in READERS:
        raise ValueError(f"unknown data format {fmt!r}; known: {', '.join(sorted(READERS))}")
    return READERS[fmt](root)


def split_by_patient(items: Sequence[tuple[Path, int]], val_fraction: float, seed: int
                     ) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """Split so both eyes of a patient (EyePACS ``<patient>_left|right``) land on the same side."""
    patients = sorted({p.stem.rsplit("_", 1)[0] for p, _ in items})
    rng = np.random.default_rng(seed)
    n_val = max(1, round(len(patients) * val_fraction)) if len(patients) > 1 else 0
    val_patients = set(rng.permutation(patients)[:n_val].tolist())
    train = [it for it in items if it[0].stem.rsplit("_", 1)[0] not in val_patients]
    val = [it for it in items if it[0].stem.rsplit("_", 1)[0] in val_patients]
    return train, val


def load_rgb(path: Path) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB; ``ValueError`` naming the file if unreadable."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class FundusDataset(Dataset[tuple[torch.Tensor, int]]):
    """Preprocessed crops held in memory (uint8), augmented per item when ``train`` is true.

    Preprocessing (decode + field crop + resize) runs once here, not every epoch: it is the same function
    serving calls, so the model sees exactly what it will see in production.
    """

    def __init__(self, items: Sequence[tuple[Path, int]], size: int, *, train: bool, seed: int = 0,
                 desc: str = "preprocess") -> None:
        self.size = size
        self.train = train
        self.labels = np.array([g for _, g in items], dtype=np.int64)
        self.crops = np.empty((len(items), size, size, 3), dtype=np.uint8)
        for i, (path, _) in enumerate(tqdm(items, desc=desc, unit="img", leave=False)):
            self.crops[i] = preprocess(load_rgb(path), size).crop
        self._seed = seed
        self._epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Vary augmentation per epoch deterministically."""
        self._epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        crop = self.crops[index]
        if self.train:
            rng = np.random.default_rng([self._seed, self._epoch, index])
            crop = augment(crop, rng)
        return torch.from_numpy(normalize(crop)), int(self.labels[index])


def augment(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Photometric and geometric jitter that a camera or a technician could cause; labels are unchanged.

    Flip (left/right eye), rotation ±20°, scale ±8 %, brightness/contrast ±15 %, gamma 0.8–1.25.
    """
    s = crop.shape[0]
    angle = rng.uniform(-20, 20)
    scale = rng.uniform(0.92, 1.08)
    m = cv2.getRotationMatrix2D((s / 2, s / 2), angle, scale)
    out = cv2.warpAffine(crop, m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    gain = rng.uniform(0.85, 1.15)
    bias = rng.uniform(-0.06, 0.06) * 255
    gamma = math.exp(rng.uniform(math.log(0.8), math.log(1.25)))
    lut = np.clip(255.0 * (np.arange(256) / 255.0) ** gamma * gain + bias, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(cv2.LUT(np.ascontiguousarray(out), lut))
