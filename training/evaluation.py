"""``python -m training evaluate``: metrics of a checkpoint on held-out data, and the HTML report beside it.

Dispatches on the checkpoint's task to :mod:`training.grader_report`, :mod:`training.detector_report` or
:mod:`training.quality_report`; each computes its predictions once, its metrics (the JSON ``evaluate``
prints) and fills one :class:`~training.report_html.Page`, written to ``<run folder>/report/index.html``
(the folder of the checkpoint) or to ``report_dir``.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.report_html import Page, is_synthetic_folder

if TYPE_CHECKING:
    from training.config import TrainConfig

#: The report folder's name inside the run folder.
REPORT_DIR = "report"


@dataclass(frozen=True)
class Evaluation:
    """What ``evaluate`` produced: the ``metrics`` it prints and the ``report`` page it wrote (or ``None``)."""

    metrics: dict[str, float]
    report: Path | None


def evaluate_checkpoint(checkpoint: Path, *, task: str, test_root: Path | None, test_format: str,
                        test_split: str | None,
                        report_dir: Path | None = None, write_report: bool = True, command: str = ""
                        ) -> Evaluation:
    """Evaluate the ``task`` model (the config's) ``checkpoint`` on the dataset at ``test_root`` (layout
    ``test_format``, split ``test_split``); ``test_root=None`` (a grader whose data has no test split): on
    the patient-disjoint validation split training held out, recomputed from the checkpoint's config.

    The records are read before the weights are loaded, so a data problem is reported without that cost.
    ``report_dir`` defaults to ``<checkpoint folder>/report``; ``write_report=False`` only computes metrics.
    """
    from training.export import load_checkpoint

    if test_root is None:
        if task != "dr-grading":
            raise ValueError(f"a {task} model is evaluated on held-out data only: pass --data")
        return _evaluate_on_validation(checkpoint, report_dir=report_dir, write_report=write_report,
                                       command=command)
    if task == "lesion-detection":
        from training.detection import load_annotated

        records: list = load_annotated(test_root, test_format, split=test_split)
    elif task == "image-quality":
        from training.quality_model import load_quality

        records = load_quality(test_root, test_format, split=test_split)
    else:
        from training.data import load_graded

        records = load_graded(test_root, test_format, split=test_split)
    model, cfg, ck = load_checkpoint(checkpoint)
    held_out = f"{test_root} ({test_format}{', ' + test_split if test_split else ''}), {len(records)} images"
    return _evaluate(model, cfg, ck, records, checkpoint=checkpoint, held_out=held_out,
                     synthetic_data=is_synthetic_folder(test_root, test_format), report_dir=report_dir,
                     write_report=write_report, command=command)


def _evaluate_on_validation(checkpoint: Path, *, report_dir: Path | None, write_report: bool, command: str
                            ) -> Evaluation:
    """:func:`evaluate_checkpoint` of a grader on its training's validation patients."""
    from training.data import load_graded, split_by_patient
    from training.export import load_checkpoint, validation_description

    model, cfg, ck = load_checkpoint(checkpoint)
    _, records = split_by_patient(load_graded(Path(cfg.data.train), cfg.data.format, verbose=False),
                                  cfg.data.val_fraction, cfg.seed)
    return _evaluate(model, cfg, ck, records, checkpoint=checkpoint, held_out=validation_description(cfg, records),
                     synthetic_data=is_synthetic_folder(cfg.data.train, cfg.data.format), report_dir=report_dir,
                     write_report=write_report, command=command)


def _evaluate(model: Any, cfg: TrainConfig, ck: dict, records: list, *, checkpoint: Path, held_out: str,
              synthetic_data: bool, report_dir: Path | None, write_report: bool, command: str) -> Evaluation:
    """Predict, measure and write the report page for ``records`` (``held_out`` describes them)."""
    from models.preprocess import recipe_for
    from analysis.render import caption_for_use
    from training.export import intended_use

    task = cfg.task
    op = json.loads(ck["operating_point"]) if ck.get("operating_point") else None
    threshold = None if op is None else float(op["threshold"])
    synthetic_training = is_synthetic_folder(cfg.data.train, cfg.data.format)
    page = Page(
        title=f"{cfg.name} {cfg.version}: evaluation",
        synthetic_data=synthetic_data,
        synthetic_training=synthetic_training,
        meta=(("task", cfg.task), ("model", f"{cfg.architecture}, {cfg.input_size} px input"),
              ("checkpoint", f"{checkpoint} (epoch {ck.get('epoch', '?')})"),
              ("held-out data", held_out),
              ("training data", f"{cfg.data.train} ({cfg.data.format})"),
              ("training command", str(ck.get("command", ""))), ("code commit", str(ck.get("code_commit", ""))),
              ("evaluation command", command),
              ("written", dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat())),
    )
    # The report's overlays carry the caption serving would burn in for this model's card.
    caption = caption_for_use(intended_use(cfg))
    if task == "lesion-detection":
        from training import detector_report as r

        det = r.predict_detector(model, records, cfg.input_size)
        metrics = r.detector_evaluation_metrics(det)
        if write_report:
            r.report(det, metrics, cfg=cfg, ck=ck, page=page, caption=caption)
    elif task == "image-quality":
        from training import quality_report as r

        qual = r.predict_quality(model, records, cfg.input_size, cfg.preprocessing)
        metrics = r.quality_evaluation_metrics(qual, threshold)
        if write_report:
            r.report(qual, metrics, cfg=cfg, ck=ck, threshold=threshold, page=page)
    else:
        from training import grader_report as r

        out = r.predict_with_cam(model, records, cfg.input_size, recipe=recipe_for(cfg.preprocessing))
        pointing = r.play_pointing_game(out)
        metrics = r.grader_evaluation_metrics(out, threshold, pointing)
        if write_report:
            r.report(out, metrics, cfg=cfg, ck=ck, threshold=threshold, pointing=pointing, page=page,
                     caption=caption)
    if not write_report:
        return Evaluation(metrics, None)
    page.section("All metrics")
    page.json_block(metrics)
    path = page.write(report_dir if report_dir is not None else checkpoint.parent / REPORT_DIR)
    print(f"report: {path}", file=sys.stderr)
    return Evaluation(metrics, path)
