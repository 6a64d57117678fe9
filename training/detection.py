"""The lesion detector's data, CenterNet targets and loss (its task: :mod:`training.tasks.detector`).

Data: every :class:`~datasets.readers.FundusRecord` whose ``lesions`` is not ``None`` (an image annotated with
no lesion is a useful negative; ``None`` means "not annotated" and is skipped with a count). Images are
preprocessed once with :func:`models.preprocess.preprocess` — the serving function — and lesion boxes are
mapped *into* model pixels with the inverse of its :class:`~models.preprocess.FundusTransform`.

Targets (Zhou et al., "Objects as Points"): for a box of ``w × h`` model pixels centred at ``(cx, cy)``, the
class heatmap gets a Gaussian at cell ``(floor(cx / r), floor(cy / r))`` with CenterNet's radius for that box
size (the largest shift that keeps IoU ≥ 0.7), σ = (2·radius + 1) / 6; that cell also stores the size
``(w / r, h / r)`` and the sub-cell offset. Losses: penalty-reduced focal loss on the heatmap (α = 2, β = 4),
L1 on size (× 0.1) and offset at the centre cells, each normalised by the number of lesions.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from datasets.readers import DatasetError, FundusRecord
from models.architectures.detector import STRIDE, DetectorExport
from models.detection import LESION_CLASSES, Lesion, decode
from models.preprocess import FundusTransform, normalize, preprocess
from training.data import load_rgb, read_records
from training.detection_metrics import Truth
from training.engine import predict

#: Score floor of the candidates evaluation ranks (thresholds are chosen among them afterwards).
CANDIDATE_FLOOR = 0.01
#: Weight of the size L1 loss (CenterNet's 0.1: sizes are in cells, offsets in fractions of a cell).
SIZE_WEIGHT = 0.1
#: A box must keep this fraction of its area inside the crop after augmentation, else it is dropped.
MIN_VISIBLE = 0.5

Boxes = np.ndarray  # (M, 4) float32 x0, y0, x1, y1 in model pixels (edges)


def select_annotated(records: Sequence[FundusRecord]) -> tuple[list[FundusRecord], int]:
    """Records with a lesion annotation (possibly empty) and the number without one (``lesions is None``)."""
    annotated = [r for r in records if r.lesions is not None]
    return annotated, len(records) - len(annotated)


def load_annotated(root: Path, fmt: str, *, split: str | None = None, verbose: bool = True) -> list[FundusRecord]:
    """Read ``root`` and keep the lesion-annotated records; :class:`DatasetError` when there are none."""
    records = read_records(root, fmt, split=split)
    annotated, skipped = select_annotated(records)
    where = f"{root} ({fmt}{', ' + split if split else ''})"
    if verbose and skipped:
        print(f"{where}: {len(annotated)} lesion-annotated images; skipped {skipped} without lesion annotation",
              file=sys.stderr)
    if not annotated:
        raise DatasetError(f"{where}: none of its {len(records)} images has a lesion annotation")
    return annotated


def boxes_to_model(record: FundusRecord, transform: FundusTransform) -> tuple[Boxes, np.ndarray]:
    """The record's lesion boxes in model pixels (inverse of ``transform``: ``U = (X - x0) / scale``) and
    their class indices into :data:`LESION_CLASSES`, clipped to the crop; boxes left without area dropped."""
    s, size = transform.scale, transform.size
    boxes, labels = [], []
    for lesion in record.lesions or ():
        x0, y0, x1, y1 = lesion.box
        b = np.clip([(x0 - transform.x0) / s, (y0 - transform.y0) / s, (x1 - transform.x0) / s,
                     (y1 - transform.y0) / s], 0, size)
        if b[2] > b[0] and b[3] > b[1]:
            boxes.append(b)
            labels.append(LESION_CLASSES.index(lesion.type))
    return np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64)


def clip_boxes(boxes: Boxes, labels: np.ndarray, side: int) -> tuple[Boxes, np.ndarray]:
    """Boxes clipped to ``[0, side]``; those keeping less than :data:`MIN_VISIBLE` of their area dropped."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    clipped = np.clip(boxes, 0, side)
    kept = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    keep = kept >= MIN_VISIBLE * np.maximum(area, 1e-6)
    return clipped[keep].astype(np.float32), labels[keep]


def random_crop(image: np.ndarray, boxes: Boxes, labels: np.ndarray, side: int, rng: np.random.Generator
                ) -> tuple[np.ndarray, Boxes, np.ndarray]:
    """A ``side × side`` window of ``image`` with its boxes: half the time around a random lesion (lesions are
    sparse), else anywhere. The network is fully convolutional, so training on windows of the full-resolution
    crop teaches the same filters at a fraction of the cost, and inference still sees the whole crop."""
    s = image.shape[0]
    if len(boxes) and rng.random() < 0.5:
        x0, y0, x1, y1 = boxes[rng.integers(len(boxes))]
        cx, cy = (x0 + x1) / 2 + rng.uniform(-side / 3, side / 3), (y0 + y1) / 2 + rng.uniform(-side / 3, side / 3)
        ox, oy = (int(np.clip(round(c - side / 2), 0, s - side)) for c in (cx, cy))
    else:
        ox, oy = (int(v) for v in rng.integers(0, s - side + 1, size=2))
    window = np.ascontiguousarray(image[oy:oy + side, ox:ox + side])
    if not len(boxes):
        return window, boxes, labels
    return (window, *clip_boxes(boxes - np.array([ox, oy, ox, oy], np.float32), labels, side))


def augment_with_boxes(crop: np.ndarray, boxes: Boxes, labels: np.ndarray, rng: np.random.Generator
                       ) -> tuple[np.ndarray, Boxes, np.ndarray]:
    """Flip, rotation ±10°, scale 0.9–1.1 and brightness/contrast/gamma jitter; boxes follow the geometry
    (the box of the four moved corners, clipped), and those less than :data:`MIN_VISIBLE` inside are dropped."""
    s = crop.shape[0]
    m = cv2.getRotationMatrix2D((s / 2, s / 2), rng.uniform(-10, 10), rng.uniform(0.9, 1.1))
    if rng.random() < 0.5:  # horizontal flip folded into the map (pixel indices: u -> s - 1 - u)
        m = np.array([[-1.0, 0.0, s - 1.0], [0.0, 1.0, 0.0]]) @ np.vstack([m, [0.0, 0.0, 1.0]])
    out = cv2.warpAffine(crop, m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if len(boxes):
        # warpAffine maps pixel indices (centres, continuous c - 0.5); box edges are continuous coordinates,
        # so they move with the same linear part and the translation t + 0.5 - A @ (0.5, 0.5).
        a, t = m[:, :2], m[:, 2] + 0.5 - m[:, :2] @ np.array([0.5, 0.5])
        corners = boxes[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(-1, 4, 2)
        moved = corners @ a.T + t
        boxes, labels = clip_boxes(np.concatenate([moved.min(axis=1), moved.max(axis=1)], axis=1), labels, s)
    gain, bias = rng.uniform(0.85, 1.15), rng.uniform(-0.06, 0.06) * 255
    gamma = math.exp(rng.uniform(math.log(0.8), math.log(1.25)))
    lut = np.clip(255.0 * (np.arange(256) / 255.0) ** gamma * gain + bias, 0, 255).astype(np.uint8)
    return cv2.LUT(out, lut), boxes, labels


def gaussian_radius(w: float, h: float, min_overlap: float = 0.7) -> float:
    """CenterNet's radius: the largest corner shift keeping IoU ≥ ``min_overlap`` with a ``w × h`` box
    (the minimum over its three cases; the formulas of the reference implementation)."""
    a1, b1, c1 = 1.0, h + w, w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1 ** 2 - 4 * a1 * c1)) / 2
    a2, b2, c2 = 4.0, 2 * (h + w), (1 - min_overlap) * w * h
    r2 = (b2 + math.sqrt(b2 ** 2 - 4 * a2 * c2)) / 2
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * (h + w), (min_overlap - 1) * w * h
    r3 = (b3 + math.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def encode_targets(boxes: Boxes, labels: np.ndarray, *, input_size: int, num_classes: int = len(LESION_CLASSES),
                   stride: int = STRIDE) -> dict[str, np.ndarray]:
    """Training targets of one image: ``heatmap`` ``(K, h, w)``, ``size`` and ``offset`` ``(2, h, w)``, ``mask``
    ``(h, w)`` (1 at box centres), with ``h = w = input_size / stride`` (see the module docstring). Where two
    boxes share a centre cell the later one's size and offset win (the heatmap keeps the maximum)."""
    n = input_size // stride
    heat = np.zeros((num_classes, n, n), np.float32)
    size = np.zeros((2, n, n), np.float32)
    offset = np.zeros((2, n, n), np.float32)
    mask = np.zeros((n, n), np.float32)
    ys, xs = np.mgrid[0:n, 0:n]
    for (x0, y0, x1, y1), c in zip(boxes.tolist(), labels.tolist()):
        w, h = (x1 - x0) / stride, (y1 - y0) / stride
        cx, cy = (x0 + x1) / 2 / stride, (y0 + y1) / 2 / stride
        ix, iy = min(int(cx), n - 1), min(int(cy), n - 1)
        radius = max(0, int(gaussian_radius(math.ceil(h), math.ceil(w))))
        sigma = (2 * radius + 1) / 6
        g = np.exp(-((xs - ix) ** 2 + (ys - iy) ** 2) / (2 * sigma * sigma)).astype(np.float32)
        g[(np.abs(xs - ix) > radius) | (np.abs(ys - iy) > radius)] = 0
        np.maximum(heat[c], g, out=heat[c])
        size[:, iy, ix] = (w, h)
        offset[:, iy, ix] = (cx - ix, cy - iy)
        mask[iy, ix] = 1.0
    return {"heatmap": heat, "size": size, "offset": offset, "mask": mask}


class LesionDataset(Dataset[dict[str, Any]]):
    """Preprocessed crops (uint8, in memory) with their boxes in model pixels; items are dicts with
    ``image`` (normalised tensor), the :func:`encode_targets` tensors, and ``boxes``/``labels`` (numpy)."""

    def __init__(self, records: Sequence[FundusRecord], size: int, *, train: bool, seed: int = 0,
                 crop: int | None = None, desc: str = "preprocess") -> None:
        if crop is not None and not (0 < crop <= size and crop % 32 == 0):
            # Multiples of 32 keep the trunk's stride-32 grid aligned with the full crop's.
            raise ValueError(f"train_crop must be a multiple of 32 up to the input size {size}, got {crop}")
        self.crop = crop
        missing = [r.image for r in records if r.lesions is None]
        if missing:
            raise ValueError(f"{len(missing)} records have no lesion annotation (first: {missing[0]}); "
                             f"select them with select_annotated() first")
        self.size, self.train, self._seed, self._epoch = size, train, seed, 0
        self.crops = np.empty((len(records), size, size, 3), np.uint8)
        self.boxes: list[Boxes] = []
        self.labels: list[np.ndarray] = []
        for i, record in enumerate(tqdm(records, desc=desc, unit="img", leave=False)):
            pre = preprocess(load_rgb(record.image), size)
            self.crops[i] = pre.crop
            b, lab = boxes_to_model(record, pre.transform)
            self.boxes.append(b)
            self.labels.append(lab)

    def set_epoch(self, epoch: int) -> None:
        """Vary augmentation per epoch deterministically."""
        self._epoch = epoch

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, index: int) -> dict[str, Any]:
        crop, boxes, labels = self.crops[index], self.boxes[index], self.labels[index]
        if self.train:
            rng = np.random.default_rng([self._seed, self._epoch, index])
            crop, boxes, labels = augment_with_boxes(crop, boxes, labels, rng)
            if self.crop is not None and self.crop < self.size:
                crop, boxes, labels = random_crop(crop, boxes, labels, self.crop, rng)
        targets = encode_targets(boxes, labels, input_size=crop.shape[0])
        item: dict[str, Any] = {k: torch.from_numpy(v) for k, v in targets.items()}
        item["image"] = torch.from_numpy(normalize(np.ascontiguousarray(crop)))
        item["boxes"], item["labels"] = boxes, labels
        return item


def collate(items: list[dict[str, Any]]) -> tuple[torch.Tensor, dict[str, Any]]:
    """``(images, targets)``: the stacked images and a dict of the stacked :func:`encode_targets` tensors, with
    the per-image ``boxes``/``labels`` arrays kept as lists (their lengths differ)."""
    targets: dict[str, Any] = {k: torch.stack([it[k] for it in items]) for k in ("heatmap", "size", "offset", "mask")}
    targets["boxes"] = [it["boxes"] for it in items]
    targets["labels"] = [it["labels"] for it in items]
    return torch.stack([it["image"] for it in items]), targets


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss (α = 2, β = 4) from heatmap *logits*, divided by the number of
    centres (cells where ``target == 1``; at least one)."""
    pos = target.eq(1).float()
    log_p, log_1mp = F.logsigmoid(logits), F.logsigmoid(-logits)
    p = log_p.exp()
    pos_loss = -(log_p * (1 - p) ** 2 * pos).sum()
    neg_loss = -(log_1mp * p ** 2 * (1 - target) ** 4 * (1 - pos)).sum()
    return (pos_loss + neg_loss) / pos.sum().clamp(min=1.0)


def detection_loss(outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], batch: dict[str, Any]
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """Focal heatmap loss + 0.1 × size L1 + offset L1 (both at centre cells) against the targets ``batch``;
    returns the total and its parts. Computed in float32 whatever precision the outputs come in."""
    logits, size, offset = (t.float() for t in outputs)
    mask = batch["mask"].unsqueeze(1)
    n = mask.sum().clamp(min=1.0)
    heat = focal_loss(logits, batch["heatmap"])
    size_l1 = (F.l1_loss(size, batch["size"], reduction="none") * mask).sum() / n
    off_l1 = (F.l1_loss(offset, batch["offset"], reduction="none") * mask).sum() / n
    total = heat + SIZE_WEIGHT * size_l1 + off_l1
    return total, {"heatmap": float(heat.detach()), "size": float(size_l1.detach()), "offset": float(off_l1.detach())}


def truths_of(boxes: Sequence[Boxes], labels: Sequence[np.ndarray]) -> list[Truth]:
    """:class:`Truth` per image from box arrays and class indices."""
    return [Truth(boxes=tuple(tuple(float(v) for v in b) for b in bx), types=tuple(LESION_CLASSES[int(c)] for c in lb))
            for bx, lb in zip(boxes, labels)]


def predict_lesions(model: nn.Module, loader: DataLoader, input_size: int) -> tuple[list[list[Lesion]], list[Truth]]:
    """Candidate detections (score ≥ :data:`CANDIDATE_FLOOR`, model pixels) and the truth of every image of
    ``loader`` (batches of :func:`collate`)."""
    def head(outputs: tuple[torch.Tensor, ...]) -> list[list[Lesion]]:
        heat, size, offset = (t.float().cpu().numpy() for t in outputs)
        return decode({"heatmap": heat, "size": size, "offset": offset}, input_size=input_size,
                      thresholds=CANDIDATE_FLOOR)

    batches, targets = predict(DetectorExport(model), loader, head)  # type: ignore[arg-type]
    detections = [d for batch in batches for d in batch]
    truths = [t for batch in targets for t in truths_of(batch["boxes"], batch["labels"])]
    return detections, truths
