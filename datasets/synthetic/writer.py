"""Write a synthetic fundus dataset: EyePACS layout, full ground truth, quality verdicts, COCO lesion masks.

Contract
--------
``generate(out, count=N, seed=S, ...)`` renders ``N`` photographs with :func:`~.fundus.render_fundus`, degrades
some with :mod:`datasets.synthetic.quality`, and writes under ``out`` (created if missing; files of the same
names are overwritten, other files are left alone) the folder described in docs/synthetic.md:

* ``<image>.jpeg``: the photograph, RGB, JPEG quality 95 (lower for a ``jpeg_artefacts`` plan);
* ``trainLabels.csv``: EyePACS ``image,level`` (ICDR grade 0-4), one row per image in index order;
* ``ground_truth.csv``: ``image,patient,laterality,width,height,grade,dme,referable,gradable,quality_reasons``
  (laterality ``L``/``R``; flags ``0``/``1``; reasons ``;``-joined). Grade and DME are the disease truth even
  when the photograph is ungradable;
* ``quality.csv``: ``image`` then :data:`~datasets.synthetic.quality.QUALITY_COLUMNS` (gradable, reasons, one
  strength 0..1 per artefact);
* ``lesions.json``: COCO instances (:mod:`datasets.synthetic.coco`): ``images`` (id = index, ``file_name``,
  ``width``, ``height``, plus the image-level truth: laterality, grade, dme, referable, gradable, ``fovea``
  ``[x, y]``, ``disc`` ``[x, y]``, ``disc_diameter``, ``field`` ``[cx, cy, r]`` in pixels after any quality
  shift, and ``findings``: haemorrhages per quadrant, venous beading / IRMA quadrants, neovascularisation
  sites, pre-retinal and vitreous haemorrhage, laser scars); ``categories`` 1-4; ``annotations`` with
  ``bbox`` ``[x, y, w, h]``, ``area``, ``iscrowd`` 0, compressed-RLE ``segmentation`` and ``attributes``
  (``subtype``, ``quadrant``);
* ``lesions.csv``: ``image,type,x0,y0,x1,y1`` (x1/y1 exclusive), the same lesions as boxes;
* with ``dicom=True`` also ``<image>.dcm``: the same pixels (after the same JPEG degradation, if any) as a DICOM
  Ophthalmic Photography 8 Bit Image written by :func:`datasets.synthetic.dicom.write_op_dicom`, PatientID the
  zero-padded patient number, ImageLaterality ``L``/``R``, StudyInstanceUID shared by both eyes.

A quality shift (``off_centre``) moves the lesions with the pixels; a lesion with a box corner outside the
image or under a cut (``cut_field``) is dropped (:meth:`~datasets.synthetic.quality.Geometry.map_box`).

Image ``i`` (0-based) is named EyePACS-style ``<patient>_<left|right>``, patient ``i // 2`` zero-padded to 5
digits: even indices are left eyes, odd right eyes. Its grade, camera and picture are drawn from
``numpy.random.default_rng(SeedSequence(seed, spawn_key=(i,)))`` and its quality plan and artefacts from
``SeedSequence(seed, spawn_key=(i, 0))``, so the output depends only on ``(seed, i)`` and the arguments: the
same arguments give byte-identical files whatever ``workers`` is, a longer run extends a shorter one, and
changing ``p_degraded`` changes no clean photograph.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from datasets.synthetic import quality
from datasets.synthetic.anatomy import QUADRANTS, box_centre, quadrant_of
from datasets.synthetic.coco import annotation, categories
from datasets.synthetic.fundus import LESION_TYPES, MIN_SIZE, Lesion, LesionMask, SyntheticFundus, render_fundus
from datasets.synthetic.lesions import mask_box

LABELS_CSV = "trainLabels.csv"
GROUND_TRUTH_CSV = "ground_truth.csv"
QUALITY_CSV = "quality.csv"
LESIONS_JSON = "lesions.json"
LESIONS_CSV = "lesions.csv"
GROUND_TRUTH_COLUMNS = ("image", "patient", "laterality", "width", "height", "grade", "dme", "referable",
                        "gradable", "quality_reasons")
LESION_COLUMNS = ("image", "type", "x0", "y0", "x1", "y1")
IMAGE_EXTENSION = ".jpeg"
JPEG_QUALITY = quality.CLEAN_JPEG_QUALITY
NUM_GRADES = 5
DEFAULT_P_DEGRADED = 0.1


def image_name(index: int) -> str:
    """EyePACS-style name of image ``index``: patient ``index // 2``, left eye for even indices."""
    return f"{index // 2:05d}_{'left' if index % 2 == 0 else 'right'}"


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of image ``index``: child ``index`` of ``SeedSequence(seed).spawn(...)``, built directly."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def quality_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of image ``index``'s quality plan and artefacts (independent of its picture)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, 0)))


def grade_probabilities(grade_weights: Sequence[float]) -> np.ndarray:
    """Normalise five non-negative, finite weights with a positive sum; ``ValueError`` otherwise."""
    weights = [float(w) for w in grade_weights]
    if len(weights) != NUM_GRADES:
        raise ValueError(f"grade_weights needs {NUM_GRADES} values (grades 0-4), got {len(weights)}")
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"grade_weights must be finite, non-negative and not all zero, got {weights}")
    p = np.asarray(weights, dtype=np.float64)
    return p / p.sum()


def check_cameras(cameras: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Validate ``(width, height)`` pairs: integers, both >= :data:`~.fundus.MIN_SIZE`; ``ValueError`` otherwise."""
    out: list[tuple[int, int]] = []
    for cam in cameras:
        if len(cam) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in cam):
            raise ValueError(f"a camera is a (width, height) pair of integers, got {cam!r}")
        w, h = int(cam[0]), int(cam[1])
        if min(w, h) < MIN_SIZE:
            raise ValueError(f"camera {w}x{h}: both sides must be >= {MIN_SIZE}")
        out.append((w, h))
    if not out:
        raise ValueError("cameras must not be empty")
    return tuple(out)


# --------------------------------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """One image to write: folder, seed, index, cameras to draw from, grade probabilities, p_degraded, DICOM."""

    out: Path
    seed: int
    index: int
    cameras: tuple[tuple[int, int], ...]
    probabilities: tuple[float, ...]
    p_degraded: float
    dicom: bool = False


@dataclass(frozen=True)
class ImageRecord:
    """Everything the tables need about one written image (lesions already shifted and encoded)."""

    name: str
    index: int
    width: int
    height: int
    laterality: str
    grade: int
    dme: bool
    referable: bool
    quality: quality.QualityTruth
    meta: dict[str, Any]
    lesions: tuple[tuple[str, tuple[int, int, int, int], dict[str, Any]], ...] = field(default=())

    @property
    def patient(self) -> str:
        return f"{self.index // 2:05d}"


def _shift_lesion(les: Lesion, geometry: quality.Geometry) -> Lesion | None:
    """A lesion after the quality geometry: translated, clipped to what a cut leaves; ``None`` when dropped."""
    if geometry.identity:
        return les
    if geometry.map_box(les.box) is None or les.mask is None:
        return None
    m = les.mask
    x0, y0 = m.x0 + geometry.dx, m.y0 + geometry.dy
    bits = m.bits
    if geometry.cuts:  # corners visible, but a round notch may still bite into an edge: keep what is visible
        h, w = bits.shape
        bits = bits & geometry.visible_mask[y0 : y0 + h, x0 : x0 + w]
        rows, cols = np.flatnonzero(bits.any(axis=1)), np.flatnonzero(bits.any(axis=0))
        if rows.size == 0:
            return None
        bits = np.ascontiguousarray(bits[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])
        x0, y0 = x0 + int(cols[0]), y0 + int(rows[0])
    mask = LesionMask(x0, y0, bits)
    return Lesion(les.type, mask_box(mask), les.subtype, mask)


def _metadata(fundus: SyntheticFundus, dx: int, dy: int) -> dict[str, Any]:
    """Image-level truth for ``lesions.json`` (points moved by the quality shift)."""
    f = fundus.findings
    cx, cy, r = fundus.field
    return {
        "fovea": [round(fundus.fovea[0] + dx, 2), round(fundus.fovea[1] + dy, 2)],
        "disc": [round(fundus.disc[0] + dx, 2), round(fundus.disc[1] + dy, 2)],
        "disc_diameter": round(fundus.disc_diameter, 2),
        "field": [round(cx + dx, 2), round(cy + dy, 2), round(r, 2)],
        "findings": {
            "microaneurysms": f.microaneurysms,
            "haemorrhages_per_quadrant": dict(zip(QUADRANTS, f.haemorrhages_per_quadrant)),
            "preretinal_haemorrhages": f.preretinal_haemorrhages,
            "hard_exudates": f.hard_exudates,
            "cotton_wool_spots": f.cotton_wool_spots,
            "venous_beading_quadrants": list(f.venous_beading_quadrants),
            "irma_quadrants": list(f.irma_quadrants),
            "neovascularisation": list(f.neovascularisation),
            "vitreous_haemorrhage": f.vitreous_haemorrhage,
            "laser_scars": f.laser_scars,
            "exudate_fovea_dd": None if f.exudate_fovea_dd is None else round(f.exudate_fovea_dd, 4),
        },
    }


def _lap(timings: dict[str, float] | None, stage: str, since: float) -> float:
    now = time.perf_counter()
    if timings is not None:
        timings[stage] = timings.get(stage, 0.0) + now - since
    return now


def write_image(task: Task, timings: dict[str, float] | None = None) -> ImageRecord:
    """Render, degrade and write image ``task.index``; return what the tables need. ``timings``, if given,
    gets the seconds per stage added (the renderer's stages, then ``quality``, ``jpeg``, ``write``, ``dicom``,
    ``masks``; for :mod:`bench.synthetic`)."""
    rng = image_rng(task.seed, task.index)
    grade = int(rng.choice(NUM_GRADES, p=np.asarray(task.probabilities)))
    camera = task.cameras[int(rng.integers(0, len(task.cameras)))] if len(task.cameras) > 1 else task.cameras[0]
    laterality = "L" if task.index % 2 == 0 else "R"
    fundus = render_fundus(rng, grade=grade, laterality=laterality, size=camera, timings=timings)
    t = time.perf_counter()
    qrng = quality_rng(task.seed, task.index)
    plan = quality.sample_plan(qrng, p_degraded=task.p_degraded)
    pixels, geometry = quality.apply(fundus.image, plan, qrng, field=fundus.field)
    t = _lap(timings, "quality", t)
    name = image_name(task.index)
    jpeg_q = quality.jpeg_quality(plan, default=JPEG_QUALITY)
    ok, buf = cv2.imencode(IMAGE_EXTENSION, cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, jpeg_q])
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 BGR array
        raise RuntimeError(f"JPEG encoding failed for {name}")
    t = _lap(timings, "jpeg", t)
    (task.out / f"{name}{IMAGE_EXTENSION}").write_bytes(buf.tobytes())
    t = _lap(timings, "write", t)
    if task.dicom:
        from datasets.synthetic.dicom import write_op_dicom  # pydicom only when asked for

        dicom_pixels = pixels if jpeg_q == JPEG_QUALITY else quality.recompress(pixels, jpeg_q)
        write_op_dicom(dicom_pixels, task.out / f"{name}.dcm", laterality=fundus.laterality,
                       patient_id=f"{task.index // 2:05d}", seed=task.seed)
        t = _lap(timings, "dicom", t)

    height, width = pixels.shape[:2]
    meta = _metadata(fundus, geometry.dx, geometry.dy)
    field_c = meta["field"]
    lesions = []
    for les in fundus.lesions:
        moved = _shift_lesion(les, geometry)
        if moved is None or moved.mask is None:
            continue
        quadrant = quadrant_of(*box_centre(moved.box), field_c[0], field_c[1], fundus.laterality)
        ann = annotation(0, task.index, moved.type, moved.mask, height, width, subtype=moved.subtype, quadrant=quadrant)
        lesions.append((moved.type, moved.box, ann))
    _lap(timings, "masks", t)
    return ImageRecord(
        name=name, index=task.index, width=width, height=height, laterality=fundus.laterality, grade=fundus.grade,
        dme=fundus.dme, referable=fundus.referable, quality=quality.judge(plan), meta=meta, lesions=tuple(lesions),
    )


def _init_worker() -> None:
    """Worker processes: one OpenCV thread each (the pool provides the parallelism)."""
    cv2.setNumThreads(1)


def _records(tasks: list[Task], workers: int) -> Iterator[ImageRecord]:
    """Render the tasks in index order, in this process or in a ``spawn`` process pool."""
    if workers == 1 or len(tasks) == 1:
        yield from map(write_image, tasks)
        return
    chunk = max(1, min(8, len(tasks) // (8 * workers)))
    context = multiprocessing.get_context("spawn")  # fork after OpenCV started threads is unsafe
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker) as pool:
        yield from pool.map(write_image, tasks, chunksize=chunk)


# --------------------------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------------------------


def generate(
    out: Path,
    *,
    count: int,
    seed: int,
    size: int = 512,
    grade_weights: Sequence[float] = (1, 1, 1, 1, 1),
    workers: int = 1,
    progress: bool = True,
    dicom: bool = False,
    cameras: Sequence[tuple[int, int]] | None = None,
    p_degraded: float = DEFAULT_P_DEGRADED,
) -> Path:
    """Write ``count`` synthetic photographs under ``out`` (module docstring); return the ``trainLabels.csv`` path.

    ``size``: square images of that side, unless ``cameras`` gives ``(width, height)`` sensor sizes, one drawn
    per image. ``p_degraded``: probability that a photograph gets quality artefacts (about half of those
    make it ungradable). ``progress`` shows a tqdm bar on stderr; ``dicom`` also writes ``<image>.dcm``.
    Raises ``ValueError`` for ``count`` < 1, a side < 64, a negative ``seed``, ``workers`` < 1, bad
    ``grade_weights`` or ``p_degraded`` outside [0, 1], and ``NotADirectoryError`` when ``out`` is a file.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not (isinstance(p_degraded, (int, float)) and 0.0 <= p_degraded <= 1.0):
        raise ValueError(f"p_degraded must be in [0, 1], got {p_degraded}")
    if cameras is None:
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
            raise ValueError(f"size must be an integer >= {MIN_SIZE}, got {size}")
        cams = ((int(size), int(size)),)
    else:
        cams = check_cameras(cameras)
    probabilities = tuple(float(p) for p in grade_probabilities(grade_weights))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)

    tasks = [Task(out, int(seed), i, cams, probabilities, float(p_degraded), bool(dicom)) for i in range(count)]
    bar = tqdm(_records(tasks, workers), total=count, desc="synthetic fundus", unit="img", disable=not progress)
    records = list(bar)
    write_tables(out, records)
    return out / LABELS_CSV


def write_tables(out: Path, records: Sequence[ImageRecord]) -> None:
    """Write the CSV tables and ``lesions.json`` for ``records`` (in index order)."""
    _write_csv(out / LABELS_CSV, ("image", "level"), ((r.name, r.grade) for r in records))
    _write_csv(out / GROUND_TRUTH_CSV, GROUND_TRUTH_COLUMNS, (
        (r.name, r.patient, r.laterality, r.width, r.height, r.grade, int(r.dme), int(r.referable),
         int(r.quality.gradable), ";".join(r.quality.reasons)) for r in records))
    _write_csv(out / QUALITY_CSV, ("image", *quality.QUALITY_COLUMNS),
               ((r.name, *r.quality.csv_fields()) for r in records))
    _write_csv(out / LESIONS_CSV, LESION_COLUMNS,
               ((r.name, kind, *box) for r in records for kind, box, _ in r.lesions))

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for r in records:
        images.append({
            "id": r.index, "file_name": f"{r.name}{IMAGE_EXTENSION}", "width": r.width, "height": r.height,
            "laterality": r.laterality, "grade": r.grade, "dme": int(r.dme), "referable": int(r.referable),
            "gradable": int(r.quality.gradable), **r.meta,
        })
        for _, _, ann in r.lesions:
            annotations.append({**ann, "id": len(annotations) + 1})
    coco = {
        "info": {"description": "Fovea synthetic fundus photographs (procedurally rendered, not patients)",
                 "version": "1"},
        "images": images,
        "annotations": annotations,
        "categories": categories(),
    }
    with (out / LESIONS_JSON).open("w", encoding="utf-8") as f:
        json.dump(coco, f, separators=(",", ":"))


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Write a CSV with ``\\n`` line endings (byte-identical across platforms)."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def read_lesions(root: Path) -> dict[str, list[Lesion]]:
    """Read ``root/lesions.csv`` back: image name -> its lesions, in file order (images without lesions absent).

    Raises ``ValueError`` naming the line for a wrong header, an unknown lesion type or a malformed box.
    """
    path = Path(root) / LESIONS_CSV
    result: dict[str, list[Lesion]] = {}
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != LESION_COLUMNS:
            raise ValueError(f"{path}:1: expected header {','.join(LESION_COLUMNS)}, got {header}")
        for row in reader:
            if not row:
                continue
            where = f"{path}:{reader.line_num}"
            if len(row) != len(LESION_COLUMNS):
                raise ValueError(f"{where}: expected {len(LESION_COLUMNS)} fields, got {len(row)}")
            name, kind = row[0], row[1]
            if kind not in LESION_TYPES:
                raise ValueError(f"{where}: unknown lesion type {kind!r} (expected one of {', '.join(LESION_TYPES)})")
            try:
                x0, y0, x1, y1 = (int(v) for v in row[2:])
            except ValueError:
                raise ValueError(f"{where}: box coordinates must be integers, got {row[2:]}") from None
            if not (x0 < x1 and y0 < y1):
                raise ValueError(f"{where}: empty box {(x0, y0, x1, y1)}")
            result.setdefault(name, []).append(Lesion(kind, (x0, y0, x1, y1)))
    return result
