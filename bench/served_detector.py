"""The lesion detector as served: mAP@0.5 from the lesions ``POST /analyze`` returns on held-out photographs.

    python -m bench.served_detector --count 200 --camera 3888x2592 --camera 2592x1944
    make bench-detector     # 200 photographs, three camera sizes, --floor, figures written into the card
    python -m bench.served_detector --url http://127.0.0.1:3000 --count 20   # a running service, as it serves

What it does:

1. Generates ``--count`` synthetic photographs with their lesion boxes (:mod:`datasets.synthetic`, seed
   ``--seed``) at the side and artefact rate of the detector's own test set (its card's training config), into
   ``--data`` (reused when already there: the generator is deterministic). The seed must differ from the
   training seed recorded in the card (the training and validation images); the card's test seed is allowed
   (it reproduces the card's model-level figure through the service).
2. Sends every photograph through ``/analyze`` as the generated JPEG, and once per ``--camera WxH`` as a
   camera-size JPEG: the square photograph resized so that it spans the frame's shorter side, centred on a
   black frame (the field stays a disc inside the frame, as on a fundus camera), with the truth boxes mapped
   by the same scale and offset (:func:`camera_layout`).
3. Computes mAP@0.5 per class and overall (:func:`training.detection_metrics.mean_average_precision`, the
   code that measured the card's model-level figure) from the lesions each response carries, boxes in
   original pixels of the file sent.

Score thresholds: the service reports only lesions scoring at least the card's per-class threshold, so every
served precision-recall curve stops at the recall that threshold reaches and the average precision counts no
precision beyond it. The card's model-level figure ranks every candidate down to the training candidate floor
(:data:`FLOOR`). ``--floor`` therefore also serves the same ONNX file under a second tag whose card sets every
threshold to that floor (a store of the bench's own): the gap between the two rows is what the thresholds cost
in mAP, the rest is what serving (decode, field crop, resize) costs.

The service is ``bentoml serve`` started on a free loopback port with a fresh model store holding the embedded
defaults (:class:`bench.load.ServedFovea`), or ``--url`` of a running one (then only as it serves, no
``--floor``). ``--write-card`` writes the figures into the detector card's ``served_metrics`` (replacing
entries of the same data, size and thresholds), after checking that the service ran that very ONNX file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
from tqdm import tqdm

from models.card import ModelCard, ScoreThreshold, ServedMetrics
from models.detection import LESION_CLASSES, Lesion
from training.cards import code_commit
from training.detection_metrics import Truth, mean_average_precision

REPO = Path(__file__).resolve().parents[1]
DETECTOR_CARD = REPO / "models" / "default" / "lesion-detector.card.json"
#: The score floor of the candidates the card's model-level figure ranks (training's candidate floor).
FLOOR = 0.01
#: A seed that no configuration under training/configs uses for synthetic data.
DEFAULT_SEED = 31
#: JPEG quality of the camera-size files (the generator's clean quality).
CAMERA_JPEG_QUALITY = 95
CARD_THRESHOLDS = "the card's per-class score thresholds (as served)"
FLOOR_THRESHOLDS = f"every class at {FLOOR} (the model-level evaluation's candidate floor; not served)"

@dataclass(frozen=True)
class Photo:
    """One held-out photograph: its JPEG file and its truth (boxes as edges, x1/y1 exclusive) in its pixels."""

    name: str
    path: Path
    truth: Truth


@dataclass(frozen=True)
class Layout:
    """Where a square photograph of side ``side`` lands in a ``width`` × ``height`` frame: resized by ``scale``
    to span the shorter side, its top-left corner at ``(dx, dy)``."""

    side: int
    width: int
    height: int
    scale: float
    dx: int
    dy: int

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def inner(self) -> int:
        """Side of the resized square in frame pixels."""
        return min(self.width, self.height)


def parse_size(text: str) -> tuple[int, int]:
    """``"WIDTHxHEIGHT"`` → ``(width, height)``, both ≥ 64; ``ValueError`` otherwise."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"expected WIDTHxHEIGHT such as 3888x2592, got {text!r}")
    w, h = (int(p) for p in parts)
    if min(w, h) < 64:
        raise ValueError(f"{text!r}: both sides must be >= 64")
    return w, h


def camera_layout(side: int, camera: tuple[int, int]) -> Layout:
    """The layout of a ``side``-pixel square photograph in a ``camera`` ``(width, height)`` frame: scaled to the
    frame's shorter side, centred along the longer one."""
    w, h = camera
    inner = min(w, h)
    return Layout(side=side, width=w, height=h, scale=inner / side, dx=(w - inner) // 2, dy=(h - inner) // 2)


def scale_truth(truth: Truth, layout: Layout) -> Truth:
    """The truth boxes mapped into the frame: edge ``X`` → ``X * scale + dx`` (``cv2.resize`` maps the square's
    edges ``[0, side]`` onto ``[0, inner]`` exactly)."""
    s, dx, dy = layout.scale, layout.dx, layout.dy
    return Truth(boxes=tuple((x0 * s + dx, y0 * s + dy, x1 * s + dx, y1 * s + dy) for x0, y0, x1, y1 in truth.boxes),
                 types=truth.types)


def camera_photo(rgb: np.ndarray, layout: Layout) -> np.ndarray:
    """The square photograph ``rgb`` (``side`` × ``side`` × 3 uint8) placed in its camera frame (black around)."""
    if rgb.shape[:2] != (layout.side, layout.side):
        raise ValueError(f"expected a {layout.side}-pixel square photograph, got {rgb.shape[1]}x{rgb.shape[0]}")
    frame = np.zeros((layout.height, layout.width, 3), np.uint8)
    n = layout.inner
    interp = cv2.INTER_CUBIC if n > layout.side else cv2.INTER_AREA
    frame[layout.dy:layout.dy + n, layout.dx:layout.dx + n] = cv2.resize(rgb, (n, n), interpolation=interp)
    return frame


def encode_jpeg(rgb: np.ndarray, quality: int = CAMERA_JPEG_QUALITY) -> bytes:
    """RGB → JPEG bytes."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 BGR array
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def lesions_from_response(body: Mapping[str, Any]) -> list[Lesion]:
    """The lesions of one ``/analyze`` response as :class:`models.detection.Lesion` (boxes in original pixels of
    the file sent). ``ValueError`` when the response carries no lesion list (no detector was served), a
    lesion of an unknown class, or a malformed box."""
    found = body.get("lesions")
    if found is None:
        raise ValueError("the response has no lesion list: the service runs no lesion detector")
    out = []
    for les in found:
        if les["type"] not in LESION_CLASSES:
            raise ValueError(f"unknown lesion type {les['type']!r}")
        box = tuple(float(v) for v in les["box"])
        if len(box) != 4 or not all(math.isfinite(v) for v in box):
            raise ValueError(f"malformed box {les['box']!r}")
        out.append(Lesion(type=str(les["type"]), score=float(les["score"]), box=box))  # type: ignore[arg-type]
    return out


def served_detector(body: Mapping[str, Any]) -> tuple[str, str, str]:
    """``(name, version, sha256)`` of the lesion-detection model a response names; ``ValueError`` without one."""
    for m in body.get("models") or ():
        if m.get("task") == "lesion-detection":
            return str(m["name"]), str(m["version"]), str(m["sha256"])
    raise ValueError("the response names no lesion-detection model")


def reduction(body: Mapping[str, Any]) -> int:
    """The JPEG reduction the service decoded the file at (1 = full resolution), read from its notes."""
    for note in body.get("image", {}).get("notes") or ():
        if note.startswith("decoded at 1/"):
            return int(note.removeprefix("decoded at 1/").split(" ", 1)[0])
    return 1


def average_precision(detections: Sequence[Sequence[Lesion]], truths: Sequence[Truth]) -> dict[str, float]:
    """``map_50`` and ``ap50_<class>`` of ``detections`` against ``truths`` (one list per photograph, in order)
    with :func:`training.detection_metrics.mean_average_precision`."""
    if len(detections) != len(truths):
        raise ValueError(f"{len(detections)} responses for {len(truths)} photographs")
    return mean_average_precision(detections, truths, LESION_CLASSES)


def check_held_out(seed: int, card: ModelCard) -> str:
    """What ``seed`` is to ``card``'s detector: ``"held out"``, or ``"the card's test set"`` for its synthetic
    test seed; ``ValueError`` for the seed its training and validation images came from."""
    data = card.training.config.get("data")
    data = data if isinstance(data, dict) else {}
    train, test = (data.get(k) if isinstance(data.get(k), dict) else {} for k in ("synthetic_train", "synthetic_test"))
    if train.get("seed") == seed:
        raise ValueError(f"seed {seed} generated {card.tag}'s training and validation images; choose another")
    return "the card's test set" if test.get("seed") == seed else "held out"


def card_test_set(card: ModelCard) -> tuple[int, float]:
    """``(side, p_degraded)`` of the card's synthetic test set (``(1024, 0.1)`` when the card does not say)."""
    data = card.training.config.get("data")
    test = data.get("synthetic_test") if isinstance(data, dict) else None
    test = test if isinstance(test, dict) else {}
    return int(test.get("size", 1024)), float(test.get("p_degraded", 0.1))


def floor_card(card: ModelCard, floor: float = FLOOR) -> ModelCard:
    """``card`` under version ``<version>-floor`` with every class's score threshold at ``floor`` (same file and
    sha256): the detector as the model-level evaluation ranks it."""
    thresholds = tuple(ScoreThreshold(name=t.name, threshold=floor, sensitivity=None, fp_per_image=None,
                                      chosen_on=f"bench.served_detector: every candidate down to {floor}")
                       for t in card.score_thresholds)
    return card.model_copy(update={"version": f"{card.version}-floor", "score_thresholds": thresholds,
                                   "served_metrics": ()})


def with_served_metrics(card: ModelCard, entries: Iterable[ServedMetrics]) -> ModelCard:
    """``card`` with ``entries`` in its ``served_metrics``: an entry replaces one of the same ``data``, ``size``
    and ``thresholds``; the others are kept, in order, new ones appended. Nothing else changes."""
    new = list(entries)
    key = lambda m: (m.data, m.size, m.thresholds)  # noqa: E731
    replaced = {key(m) for m in new}
    kept = [m for m in card.served_metrics if key(m) not in replaced]
    return card.model_copy(update={"served_metrics": tuple(kept + new)})


# --------------------------------------------------------------------------------------------------------------
# Data and service
# --------------------------------------------------------------------------------------------------------------


def held_out_photos(root: Path, *, count: int, seed: int, side: int, p_degraded: float) -> list[Photo]:
    """The ``count`` photographs of ``(seed, side, p_degraded)`` under ``root`` (generated when missing) with
    their truth."""
    from datasets.readers import read_dataset
    from datasets.synthetic.writer import generate

    spec = root / "spec.json"
    wanted = {"count": count, "seed": seed, "size": side, "p_degraded": p_degraded}
    if not spec.is_file() or json.loads(spec.read_text()) != wanted:
        generate(root, count=count, seed=seed, size=side, p_degraded=p_degraded, progress=True)
        spec.write_text(json.dumps(wanted))
    photos = []
    for r in read_dataset(root, "synthetic"):
        lesions = r.lesions or ()
        truth = Truth(boxes=tuple(les.box for les in lesions), types=tuple(les.type for les in lesions))
        photos.append(Photo(name=r.image.stem, path=r.image, truth=truth))
    if len(photos) != count:
        raise RuntimeError(f"{root} holds {len(photos)} photographs, expected {count}")
    return photos


def variants_of(photo: Photo, layouts: Sequence[Layout]) -> Iterator[tuple[str, bytes, Truth]]:
    """``(size, jpeg, truth)``: the photograph as generated, then in each camera frame."""
    data = photo.path.read_bytes()
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise RuntimeError(f"cannot decode {photo.path}")
    yield f"{bgr.shape[1]}x{bgr.shape[0]}", data, photo.truth
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    for layout in layouts:
        yield layout.size, encode_jpeg(camera_photo(rgb, layout)), scale_truth(photo.truth, layout)


@dataclass
class Run:
    """What one service returned for one size: detections and truths in photograph order, decode reductions,
    the detector it named, and the seconds the requests took."""

    size: str
    detections: list[list[Lesion]]
    truths: list[Truth]
    reductions: list[int]
    detector: tuple[str, str, str] | None = None
    seconds: float = 0.0


def measure(url: str, photos: Sequence[Photo], layouts: Sequence[Layout], *, label: str,
            transport: httpx.BaseTransport | None = None, progress: bool = True) -> dict[str, Run]:
    """Send every photograph (as generated and at each camera size) to ``url``/analyze; a :class:`Run` per size.
    ``RuntimeError`` on a response other than 200 or a change of detector during the run."""
    runs: dict[str, Run] = {}
    with httpx.Client(timeout=300, transport=transport) as http:
        for photo in tqdm(photos, desc=label, unit="photo", disable=not progress):
            for size, data, truth in variants_of(photo, layouts):
                t0 = time.perf_counter()
                r = http.post(f"{url}/analyze", files={"image": (f"{photo.name}.jpg", data, "image/jpeg")})
                if r.status_code != 200:
                    raise RuntimeError(f"{photo.name} at {size}: HTTP {r.status_code}: {r.text[:300]}")
                body = r.json()
                run = runs.setdefault(size, Run(size=size, detections=[], truths=[], reductions=[]))
                run.seconds += time.perf_counter() - t0
                det = served_detector(body)
                if run.detector not in (None, det):
                    raise RuntimeError(f"the service changed detector mid-run: {run.detector} then {det}")
                run.detector = det
                run.detections.append(lesions_from_response(body))
                run.truths.append(truth)
                run.reductions.append(reduction(body))
    return runs


def _import_into_store(card: ModelCard, onnx: Path, home: Path) -> str:
    """Import ``card`` (with the ONNX file it names) into the BentoML store at ``home`` in a child process (the
    store's location is fixed when BentoML is imported); return its tag."""
    with tempfile.TemporaryDirectory(prefix="fovea-card-") as tmp:
        shutil.copyfile(onnx, Path(tmp) / card.file)
        card_path = Path(tmp) / f"{card.name}.card.json"
        card.save(card_path)
        code = "import sys; from pathlib import Path; from models.store import import_model; " \
               "print(import_model(Path(sys.argv[1])))"
        env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
        out = subprocess.run([sys.executable, "-c", code, str(card_path)], cwd=REPO, env=env, capture_output=True,
                             text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"cannot import {card.tag} into the bench's model store: {out.stderr[-2000:]}")
        return out.stdout.strip().splitlines()[-1]


@contextmanager
def served(home: Path, detector_tag: str) -> Iterator[str]:
    """The service on a free loopback port with model store ``home``, serving ``detector_tag``; yields its URL."""
    from bench.load import ServedFovea

    with ServedFovea(workers=1, inference="local", home=home, env={"FOVEA_DETECTOR_TAG": detector_tag}) as svc:
        yield svc.url


# --------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------


def served_entry(run: Run, *, data: str, thresholds: str, version: str, date: str, command: str) -> ServedMetrics:
    """The card entry of one run."""
    m = average_precision(run.detections, run.truths)
    return ServedMetrics(data=data, size=run.size, images=len(run.truths), thresholds=thresholds,
                         map_50=round(m["map_50"], 4),
                         ap50={c: round(m[f"ap50_{c}"], 4) for c in LESION_CLASSES if f"ap50_{c}" in m},
                         code_version=version, date=date, command=command)


def table(rows: Sequence[tuple[ServedMetrics, Run]], card: ModelCard) -> str:
    """A Markdown table of the served figures, the card's model-level figure first."""
    short = {"microaneurysm": "MA", "haemorrhage": "HE", "hard_exudate": "EX", "cotton_wool_spot": "CWS"}
    head = ("| size | thresholds | decoded at | images | mAP@0.5 | " + " | ".join(short[c] for c in LESION_CLASSES)
            + " | s/photo |\n|---|---|---|---|---|" + "---|" * len(LESION_CLASSES) + "---|")
    lines = [head]
    m = card.metrics
    if "map_50" in m:
        per_class = " | ".join(f"{m.get(f'ap50_{c}', float('nan')):.3f}" for c in LESION_CLASSES)
        lines.append(f"| model level ({card.metrics_data.split(' (')[0]}) | floor {FLOOR} | full | "
                     f"{int(m.get('n', 0))} | {m['map_50']:.3f} | {per_class} | |")
    for e, run in rows:
        red = sorted(set(run.reductions))
        decoded = ", ".join("full" if r == 1 else f"1/{r}" for r in red)
        thr = "card" if e.thresholds == CARD_THRESHOLDS else f"floor {FLOOR}"
        lines.append(f"| {e.size} | {thr} | {decoded} | {e.images} | {e.map_50:.3f} | "
                     + " | ".join(f"{e.ap50.get(c, float('nan')):.3f}" for c in LESION_CLASSES)
                     + f" | {run.seconds / max(len(run.truths), 1):.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.served_detector", description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=200, help="held-out photographs (default 200)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"generator seed (default {DEFAULT_SEED})")
    p.add_argument("--camera", type=parse_size, action="append", default=[], metavar="WxH",
                   help="also send each photograph at this camera size (repeatable)")
    p.add_argument("--card", type=Path, default=DETECTOR_CARD, help="the served detector's card")
    p.add_argument("--data", type=Path, default=None, help="where the photographs are generated (default runs/)")
    p.add_argument("--url", help="a running service to measure as it serves (default: start one)")
    p.add_argument("--floor", action="store_true",
                   help=f"also serve the detector with every threshold at {FLOOR} (own store; not with --url)")
    p.add_argument("--json", type=Path, default=None, help="write the figures as JSON here")
    p.add_argument("--write-card", type=Path, default=None, help="write the figures into this card's served_metrics")
    args = p.parse_args(argv)
    if args.count < 1:
        p.error("--count must be >= 1")
    if args.url and args.floor:
        p.error("--floor needs a service of the bench's own (leave out --url)")
    card = ModelCard.load(args.card)
    try:
        held = check_held_out(args.seed, card)
    except ValueError as exc:
        p.error(str(exc))
    side, p_degraded = card_test_set(card)
    root = args.data or REPO / "runs" / "served-detector" / f"seed{args.seed}-n{args.count}-{side}"
    photos = held_out_photos(root, count=args.count, seed=args.seed, side=side, p_degraded=p_degraded)
    layouts = [camera_layout(side, cam) for cam in args.camera]
    data = (f"synthetic, python -m datasets.synthetic --count {args.count} --seed {args.seed} --size {side} "
            f"--p-degraded {p_degraded} ({held} of {card.tag}); camera sizes: the photograph scaled to the "
            f"frame's shorter side, centred")
    t0 = time.perf_counter()
    results: list[tuple[str, dict[str, Run]]] = []
    try:
        if args.url:
            results.append((CARD_THRESHOLDS, measure(args.url, photos, layouts, label="served")))
        else:
            with tempfile.TemporaryDirectory(prefix="fovea-served-detector-") as home:
                onnx = args.card.parent / card.file
                tags = [(CARD_THRESHOLDS, _import_into_store(card, onnx, Path(home)))]
                if args.floor:
                    tags.append((FLOOR_THRESHOLDS, _import_into_store(floor_card(card), onnx, Path(home))))
                for thresholds, tag in tags:
                    with served(Path(home), tag) as url:
                        results.append((thresholds, measure(url, photos, layouts, label=tag)))
    except (RuntimeError, ValueError, httpx.HTTPError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - t0
    version = code_commit()
    date = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    command = "python -m bench.served_detector " + shlex.join(argv if argv is not None else sys.argv[1:])
    rows: list[tuple[ServedMetrics, Run]] = []
    for thresholds, runs in results:
        for run in runs.values():
            name, _, sha = run.detector or ("", "", "")
            if name != card.name or sha != card.sha256:
                print(f"error: the service ran {name} {sha[:12]}, not {card.tag} of {args.card}", file=sys.stderr)
                return 1
            rows.append((served_entry(run, data=data, thresholds=thresholds, version=version, date=date,
                                      command=command), run))
    print(f"{card.tag} as served: {args.count} photographs ({held}), {seconds:.0f} s in all; code {version}")
    print(table(rows, card))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"seconds": seconds, "card": card.tag, "entries": [
            {**e.model_dump(), "reductions": sorted(set(r.reductions)), "seconds_per_photo": r.seconds / len(r.truths)}
            for e, r in rows]}, indent=2) + "\n")
    if args.write_card:
        target = ModelCard.load(args.write_card)
        if target.sha256 != card.sha256:
            print(f"error: {args.write_card} describes another file than the one measured", file=sys.stderr)
            return 1
        with_served_metrics(target, (e for e, _ in rows)).save(args.write_card)
        print(f"wrote {len(rows)} served figures into {args.write_card}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
