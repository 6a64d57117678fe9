"""``python -m training {train,evaluate,export,quantize,register}`` — see README "Training"."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path


def _add_format(p: argparse.ArgumentParser, what: str) -> None:
    """``--format``, choices from the reader registry (unknown names exit 2 with argparse's message)."""
    from datasets.readers import READERS

    p.add_argument("--format", choices=list(READERS), metavar="{" + ",".join(READERS) + "}",
                   help=f"published layout of {what} (default: the config's data.format; README 'Bring your own data')")


def _add_split(p: argparse.ArgumentParser) -> None:
    from datasets.readers import SPLITS

    listed = "; ".join(f"{k}: {', '.join(v)}" for k, v in SPLITS.items())
    p.add_argument("--split", help=f"published split of the held-out data ({listed}; default test)")


def _add_checkpoint_and_held_out(p: argparse.ArgumentParser, data: str) -> None:
    """``--config``, ``--checkpoint`` and where the held-out data is (``--data``, ``--format``, ``--split``)."""
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--checkpoint", type=Path, help="default: best.pt in the config's run folder")
    p.add_argument("--data", help=f"{data} (default: the config's data.test; without one, the patient-disjoint "
                                  f"validation split training held out, for a task that allows it)")
    _add_format(p, "the held-out data")
    _add_split(p)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training", description="Train, evaluate, export and register Fovea models.")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train a model from a YAML config")
    t.add_argument("--config", type=Path, required=True)
    t.add_argument("--data", dest="train", help="training data folder (overrides the config)")
    _add_format(t, "the training data")
    t.add_argument("--out", help="run folder (overrides the config)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    e = sub.add_parser("evaluate", help="metrics of a checkpoint on held-out data")
    _add_checkpoint_and_held_out(e, "held-out data folder")
    e.add_argument("--report", type=Path, metavar="DIR",
                   help="folder of the HTML report (default: report/ beside the checkpoint)")
    e.add_argument("--no-report", action="store_true", help="print the metrics only")
    x = sub.add_parser("export", help="export a checkpoint to ONNX + model card (after a parity check)")
    _add_checkpoint_and_held_out(x, "held-out data folder for the card's metrics")
    x.add_argument("--out", type=Path, default=Path("models/default"))
    x.add_argument("--register", action="store_true", help="also import the exported model into the BentoML "
                                                           "model store (as the register command does)")
    q = sub.add_parser("quantize", help="static int8 (ONNX Runtime QDQ) of an exported model, gated on QWK/mAP")
    q.add_argument("--card", type=Path, required=True, help="the fp32 model's card")
    q.add_argument("--data", type=Path, required=True, help="held-out labelled data for the metric gate")
    _add_format(q, "the held-out data")
    _add_split(q)
    q.add_argument("--out", type=Path, required=True, help="folder for <name>-int8.onnx and its card")
    q.add_argument("--calibration", type=Path, help="calibration images (default: generated synthetic photographs)")
    q.add_argument("--calibration-count", type=int, default=64)
    q.add_argument("--calibration-seed", type=int, default=11)
    q.add_argument("--max-qwk-drop", type=float, default=0.01)
    q.add_argument("--max-map-drop", type=float, default=0.02)
    r = sub.add_parser("register", help="import an exported model (ONNX + card) into the BentoML model store")
    r.add_argument("--card", type=Path, required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = "python -m training " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        if args.cmd == "register":
            from models.store import import_model

            print(import_model(args.card))
            return 0
        if args.cmd == "quantize":
            from training.data import held_out_split
            from training.quantize import quantize

            from models.card import ModelCard

            # The held-out layout defaults to the one the parent was trained and evaluated on.
            parent_data = ModelCard.load(args.card).training.config.get("data")
            fmt = args.format or (parent_data.get("format") if isinstance(parent_data, dict) else None) or "eyepacs"
            card = quantize(args.card, args.data, args.out, fmt=fmt, split=args.split or held_out_split(fmt),
                            calibration=args.calibration, calibration_count=args.calibration_count,
                            calibration_seed=args.calibration_seed, max_qwk_drop=args.max_qwk_drop,
                            max_map_drop=args.max_map_drop, command=command)
            assert card.quantization is not None
            print(json.dumps({"tag": card.tag, "file": card.file, "gate": card.quantization.gate,
                              "latency_ms": card.quantization.latency_ms}, indent=2))
            return 0
        from training.config import load_config
        from training.data import held_out_split
        from training.tasks import get_task

        # Only `train` takes config overrides; export's --out is the model folder, not the run folder.
        keys = ("train", "out", "epochs") if args.cmd == "train" else ()
        cfg = load_config(args.config, {k: getattr(args, k, None) for k in keys})
        if args.cmd == "train" and args.format is not None:  # data.format: recorded with the checkpoint
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, format=args.format))
        task = get_task(cfg.task)
        if args.cmd == "train":
            from training.train import main as train

            print(train(cfg, resume=args.resume, command=command))
            return 0
        checkpoint = args.checkpoint or Path(cfg.out) / "best.pt"
        if not checkpoint.is_file():
            raise FileNotFoundError(f"no checkpoint at {checkpoint}: train first or pass --checkpoint")
        # A config without a test folder (data with no separate test split) is measured on the validation
        # patients training held out; export and evaluate say so in what they write.
        held_out_validation = args.data is None and cfg.data.test is None
        if held_out_validation and not task.measures_on_validation:
            raise ValueError(f"{args.config} names no held-out data (data.test): pass --data")
        test_root = None if held_out_validation else Path(args.data or cfg.data.test)
        if args.data is None and test_root is not None:
            from training.train import ensure_data

            ensure_data(test_root, cfg.data.synthetic_test)
        test_format = args.format or cfg.data.format
        test_split = args.split or held_out_split(test_format)
        if args.cmd == "evaluate":
            from training.evaluation import evaluate_checkpoint

            result = evaluate_checkpoint(checkpoint, task=cfg.task, test_root=test_root, test_format=test_format,
                                         test_split=test_split, report_dir=args.report,
                                         write_report=not args.no_report, command=command)
            print(json.dumps(result.metrics, indent=2))
            return 0
        from training.export import export

        from training.export import EXPORT_DATA_SETTINGS, EXPORT_SETTINGS

        overrides = {k: getattr(cfg.data, k) for k in EXPORT_DATA_SETTINGS}
        settings = {k: getattr(cfg, k) for k in EXPORT_SETTINGS}
        card = export(checkpoint, args.out, test_root=test_root, command=command, test_format=test_format,
                      data_overrides=overrides, settings=settings,
                      test_split=test_split, held_out_validation=held_out_validation, register=args.register)
        print(json.dumps(card.metrics, indent=2))
        return 0
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
