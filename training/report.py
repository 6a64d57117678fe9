"""Pictures of a training run and of an evaluation (matplotlib, headless): training curves, confusion matrix,
ROC curves with an operating point, the reliability diagram, precision-recall and FROC curves.

The functions that take a ``path`` write a PNG there and return the path (training and export use them); the
others return PNG bytes, which :mod:`training.report_html` embeds in the evaluation page.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

#: The grader's validation curves: history key and legend label.
GRADER_CURVES: tuple[tuple[str, str], ...] = (("val_quadratic_weighted_kappa", "quadratic weighted kappa"),
                                              ("val_referable_auc", "referable-DR AUC"), ("val_accuracy", "accuracy"))
#: The lesion detector's and the image-quality model's validation curves.
DETECTOR_CURVES: tuple[tuple[str, str], ...] = (("val_froc", "FROC (mean sensitivity)"), ("val_map_50", "mAP@0.5"))
QUALITY_CURVES: tuple[tuple[str, str], ...] = (("val_quality_auc", "quality AUC (ungradable)"),
                                               ("val_ungradable_sensitivity", "ungradable sensitivity"),
                                               ("val_ungradable_specificity", "ungradable specificity"))
_DPI = 100


def png_bytes(fig: Figure) -> bytes:
    """Render ``fig`` as PNG bytes and close it (figures left open leak memory in long evaluations)."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=_DPI)
    plt.close(fig)
    return buf.getvalue()


#: The validation curves also drawn against training time (the grader's recipe is judged on a time budget).
TIMED_CURVES: tuple[str, ...] = ("val_quadratic_weighted_kappa", "val_referable_auc")


def history_figure(history: Sequence[Mapping[str, float]],
                   curves: Sequence[tuple[str, str]] = GRADER_CURVES) -> bytes:
    """Training loss and the validation ``curves`` (history keys present in every epoch) per epoch, side by
    side, as PNG bytes. When the history records training time (``minutes``, and ``cpu_minutes`` with the
    ``threads`` that spent them), a third panel draws the curves among :data:`TIMED_CURVES` against minutes:
    wall-clock (solid) and CPU time divided by the threads (dashed; what the run takes with the cores to
    itself, which is what wall-clock shows when the machine was not shared)."""
    epochs = [h["epoch"] for h in history]
    timed = bool(history) and all("minutes" in h for h in history)
    fig, axes = plt.subplots(1, 3 if timed else 2, figsize=(15 if timed else 10, 4))
    a, b = axes[0], axes[1]
    a.plot(epochs, [h["train_loss"] for h in history], marker="o")
    a.set(title="training loss", xlabel="epoch", ylabel="loss")
    for key, label in curves:
        if history and all(key in h for h in history):
            b.plot(epochs, [h[key] for h in history], marker="o", label=label)
    b.set(title="validation", xlabel="epoch", ylim=(0, 1))
    if b.get_legend_handles_labels()[0]:
        b.legend(loc="lower right")
    if timed:
        c = axes[2]
        for key, label in curves:
            if key not in TIMED_CURVES or not all(key in h for h in history):
                continue
            line, = c.plot([h["minutes"] for h in history], [h[key] for h in history], marker="o",
                           label=f"{label} (wall clock)")
            if all("cpu_minutes" in h for h in history):
                c.plot([h["cpu_minutes"] / max(1.0, h.get("threads", 1.0)) for h in history],
                       [h[key] for h in history], marker=".", ls="--", color=line.get_color(),
                       label=f"{label} (CPU time / threads)")
        c.set(title="validation against training time", xlabel="minutes", ylim=(0, 1))
        if c.get_legend_handles_labels()[0]:
            c.legend(loc="lower right", fontsize="small")
    return png_bytes(fig)


def plot_history(history: Sequence[Mapping[str, float]], path: Path,
                 curves: Sequence[tuple[str, str]] = GRADER_CURVES) -> Path:
    """:func:`history_figure` written to ``path``."""
    path.write_bytes(history_figure(history, curves))
    return path


def confusion_figure(cm: np.ndarray, labels: Sequence[str], title: str) -> bytes:
    """Row-normalised confusion matrix with counts in the cells (rows: truth, columns: prediction), PNG bytes."""
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = 2.5 + 0.8 * len(labels)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return png_bytes(fig)


def plot_confusion(cm: np.ndarray, labels: Sequence[str], path: Path, title: str) -> Path:
    """:func:`confusion_figure` written to ``path``."""
    path.write_bytes(confusion_figure(cm, labels, title))
    return path


@dataclass(frozen=True)
class Curve:
    """One line of a ROC, precision-recall or FROC plot: ``x``/``y`` values and the legend ``label``."""

    x: np.ndarray
    y: np.ndarray
    label: str


@dataclass(frozen=True)
class Point:
    """A marked point on a curve plot (an operating point), with its legend ``label``."""

    x: float
    y: float
    label: str


def roc_figure(curves: Sequence[Curve], title: str, points: Sequence[Point] = ()) -> bytes:
    """ROC curves (false-positive rate on x, sensitivity on y) with the chance diagonal and marked
    operating ``points``, PNG bytes."""
    fig, ax = plt.subplots(figsize=(5.5, 5.0))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="chance")
    for c in curves:
        ax.plot(c.x, c.y, lw=1.8, label=c.label)  # straight segments: tied scores move both rates at once
    for p in points:
        ax.plot([p.x], [p.y], marker="o", ms=9, mfc="none", mew=2, color="crimson", ls="none", label=p.label)
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="1 - specificity (false-positive rate)",
           ylabel="sensitivity (true-positive rate)", title=title)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return png_bytes(fig)


@dataclass(frozen=True)
class Reliability:
    """A reliability diagram's bins: per bin the mean confidence, the accuracy and the count (empty bins have
    NaN means); ``edges`` are the ``len(counts) + 1`` bin edges."""

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    counts: np.ndarray


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> Reliability:
    """Bin top-label ``confidence`` into ``n_bins`` equal-width bins ``[a, b)`` of ``[0, 1]`` — the binning of
    torchmetrics' ``multiclass_calibration_error`` — with each bin's accuracy. A confidence of exactly 1.0,
    which torchmetrics counts in a bin of its own, falls into the last bin here."""
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / counts
        acc = np.bincount(idx, weights=ok, minlength=n_bins) / counts
    return Reliability(edges, mean_conf, acc, counts)


def reliability_figure(bins: Reliability, ece: float, title: str) -> bytes:
    """Reliability diagram (accuracy per confidence bin against the diagonal of perfect calibration, with
    the gap shaded) above a histogram of the bin counts, PNG bytes; ``ece`` goes into the title."""
    fig, (a, b) = plt.subplots(2, 1, figsize=(5.5, 6.0), height_ratios=(3, 1), sharex=True)
    centres = (bins.edges[:-1] + bins.edges[1:]) / 2
    width = bins.edges[1] - bins.edges[0]
    filled = bins.counts > 0
    a.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="perfect calibration")
    a.bar(centres[filled], bins.accuracy[filled], width=width * 0.95, color="steelblue", edgecolor="navy",
          label="accuracy in bin")
    gap_low = np.minimum(bins.accuracy[filled], bins.confidence[filled])
    a.bar(centres[filled], np.abs(bins.confidence[filled] - bins.accuracy[filled]), bottom=gap_low,
          width=width * 0.95, color="crimson", alpha=0.35, label="gap to mean confidence")
    a.set(ylim=(0, 1), ylabel="accuracy", title=f"{title}\nECE {ece:.4f} (10 bins, top-label confidence)")
    a.legend(loc="upper left", fontsize=8)
    b.bar(centres, bins.counts, width=width * 0.95, color="grey")
    b.set(xlim=(0, 1), xlabel="confidence of the predicted grade", ylabel="images")
    return png_bytes(fig)


def pr_figure(curves: Sequence[Curve], title: str) -> bytes:
    """Precision-recall curves (recall on x), PNG bytes."""
    fig, ax = plt.subplots(figsize=(5.5, 5.0))
    for c in curves:
        ax.plot(c.x, c.y, lw=1.8, label=c.label)
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="recall", ylabel="precision", title=title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(loc="lower left", fontsize=8)
    return png_bytes(fig)


def froc_figure(curves: Sequence[Curve], rates: Sequence[float], title: str) -> bytes:
    """FROC curves (false positives per image on a log x axis, lesion sensitivity on y) with the rates at
    which the FROC score is read marked as vertical lines, PNG bytes."""
    fig, ax = plt.subplots(figsize=(6.0, 5.0))
    for r in rates:
        ax.axvline(r, color="grey", lw=0.6, ls=":")
    for c in curves:
        ax.plot(np.maximum(c.x, rates[0] / 2), c.y, lw=1.8, label=c.label, drawstyle="steps-post")
    ax.set_xscale("log")
    ax.set(xlim=(rates[0] / 2, rates[-1] * 2), ylim=(-0.01, 1.01), xlabel="false positives per image",
           ylabel="lesion sensitivity", title=title)
    ax.grid(alpha=0.3, which="both")
    if curves:
        ax.legend(loc="upper left", fontsize=8)
    return png_bytes(fig)
