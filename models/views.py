"""Test-time views of a grader: the square input turned and mirrored (the dihedral group of the square), each
graded, the logits averaged. A fundus photograph has no "up" that grading relies on, so every view is a valid
photograph of the same eye, and averaging their logits lowers the variance of one network's answer (on
real-dev's validation split two views raised referable AUC by 0.02–0.03 for both 288-px graders; README).

The views are built *inside* the exported ONNX graph (:class:`models.architectures.views.ViewAveraged`), so
serving feeds one image and reads the usual ``logits`` and ``cam`` (each view's CAM turned back onto the input
before averaging); the card lists them (``test_time_views``). This module names them, without torch, for the
config and the card.
"""

from __future__ import annotations

from typing import Final

#: The eight views, in the order a model with ``n`` views uses the first ``n``: the identity and the quarter
#: turns first (a quarter turn decorrelates the trunk's features the most), then the same after a mirror.
#: ``rotK``: ``np.rot90`` K/90 times (counter-clockwise); ``flip``: left-right mirror first.
VIEWS: Final = ("identity", "rot90", "rot180", "rot270", "flip", "flip-rot90", "flip-rot180", "flip-rot270")
#: View counts a model may use: the identity alone, a quarter turn, the four turns, the whole group.
VIEW_COUNTS: Final = (1, 2, 4, 8)


def view_names(count: int) -> tuple[str, ...]:
    """The first ``count`` of :data:`VIEWS`; ``ValueError`` unless ``count`` is in :data:`VIEW_COUNTS`."""
    if count not in VIEW_COUNTS:
        raise ValueError(f"test_time_views must be one of {', '.join(map(str, VIEW_COUNTS))}, not {count}")
    return VIEWS[:count]


def parse_view(name: str) -> tuple[bool, int]:
    """View ``name`` as (mirrored first, quarter turns); ``ValueError`` for a name not in :data:`VIEWS`."""
    if name not in VIEWS:
        raise ValueError(f"unknown test-time view {name!r}; known: {', '.join(VIEWS)}")
    return name.startswith("flip"), 0 if name in ("identity", "flip") else int(name.rsplit("rot", 1)[1]) // 90

