"""``python -m training evaluate``: metrics of a checkpoint on held-out data, and the HTML report beside it.

The task of the checkpoint (:mod:`training.tasks`) computes its predictions once, its metrics (the JSON
``evaluate`` prints) and fills one :class:`~training.report_html.Page` with its sections, written to
``<run folder>/report/index.html`` (the folder of the checkpoint) or to ``report_dir``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from analysis.render import caption_for_use
from training.cards import utc_now
from training.checkpoint import load_checkpoint
from training.report_html import Page, is_synthetic_folder
from training.tasks import HeldOut, get_task

#: The report folder's name inside the run folder.
REPORT_DIR = "report"


@dataclass(frozen=True)
class Evaluation:
    """What ``evaluate`` produced: the ``metrics`` it prints and the ``report`` page it wrote (or ``None``)."""

    metrics: dict[str, float]
    report: Path | None


def evaluate_checkpoint(checkpoint: Path, *, task: str, test_root: Path | None, test_format: str,
                        test_split: str | None, report_dir: Path | None = None, write_report: bool = True,
                        command: str = "") -> Evaluation:
    """Evaluate the ``task`` model (the config's) ``checkpoint`` on the dataset at ``test_root`` (layout
    ``test_format``, split ``test_split``); ``test_root=None`` (a task that allows it, whose data has no test
    split): on the patient-disjoint validation split training held out, recomputed from the checkpoint's config.

    With a ``test_root`` the records are read before the weights are loaded, so a data problem is reported
    without that cost. ``report_dir`` defaults to ``<checkpoint folder>/report``; ``write_report=False`` only
    computes metrics.
    """
    t = get_task(task)
    held_out = HeldOut(test_root, test_format, test_split)
    if test_root is not None:
        items = t.read_items(test_root, test_format, split=test_split)
        model, cfg, ck = load_checkpoint(checkpoint)
    else:
        if not t.measures_on_validation:
            raise ValueError(f"a {task} model is evaluated on held-out data only: pass --data")
        model, cfg, ck = load_checkpoint(checkpoint)
        items = t.load_held_out(held_out, cfg)
    synthetic_data = is_synthetic_folder(test_root if test_root is not None else cfg.data.train,
                                         test_format if test_root is not None else cfg.data.format)
    op = json.loads(ck["operating_point"]) if ck.get("operating_point") else None
    threshold = None if op is None else float(op["threshold"])
    page = None
    if write_report:
        page = Page(
            title=f"{cfg.name} {cfg.version}: evaluation",
            synthetic_data=synthetic_data,
            synthetic_training=is_synthetic_folder(cfg.data.train, cfg.data.format),
            meta=(("task", cfg.task), ("model", f"{cfg.architecture}, {cfg.input_size} px input"),
                  ("checkpoint", f"{checkpoint} (epoch {ck.get('epoch', '?')})"),
                  ("held-out data", t.describe_held_out(held_out, cfg, items)),
                  ("training data", f"{cfg.data.train} ({cfg.data.format})"),
                  ("training command", str(ck.get("command", ""))), ("code commit", str(ck.get("code_commit", ""))),
                  ("evaluation command", command), ("written", utc_now())),
        )
    # The report's overlays carry the caption serving would burn in for this model's card.
    metrics = t.evaluate(model, cfg, ck, items, threshold=threshold, page=page,
                         caption=caption_for_use(t.intended_use(cfg)))
    if page is None:
        return Evaluation(metrics, None)
    page.section("All metrics")
    page.json_block(metrics)
    path = page.write(report_dir if report_dir is not None else checkpoint.parent / REPORT_DIR)
    print(f"report: {path}", file=sys.stderr)
    return Evaluation(metrics, path)
