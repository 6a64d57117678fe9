"""Write a synthetic fundus dataset in the EyePACS layout (plus a lesion ground-truth table).

Contract
--------
``generate(out, count=N, seed=S, ...)`` renders ``N`` photographs with :func:`~.fundus.render_fundus` and writes,
under the directory ``out`` (created if missing; files of the same names are overwritten, other files are
left alone):

* ``trainLabels.csv``: header ``image,level``, one row per image in index order; ``image`` is the file name
  without extension, ``level`` the ICDR grade 0-4;
* ``<image>.jpeg``: the photograph, RGB, JPEG quality :data:`JPEG_QUALITY`;
* ``lesions.csv``: header ``image,type,x0,y0,x1,y1``, one row per recorded lesion (see
  :mod:`datasets.synthetic.fundus` for what is recorded), boxes in pixels of that image, ``x1``/``y1``
  exclusive; images without lesions have no rows;
* with ``dicom=True`` also ``<image>.dcm``: the same rendered pixels as a DICOM Ophthalmic Photography 8 Bit
  Image (JPEG Baseline, YBR_FULL_422) written by :func:`datasets.synthetic.dicom.write_op_dicom`, with
  PatientID the zero-padded patient number, ImageLaterality "L"/"R", and a StudyInstanceUID derived from
  ``(seed, patient)`` so both eyes of a patient share it.

Image ``i`` (0-based) is named EyePACS-style ``<patient>_<left|right>`` with patient id ``i // 2`` zero-padded
to 5 digits (``00000_left``, ``00000_right``, ``00001_left``, ...): even indices are left eyes, odd right eyes.
Its grade is drawn from ``grade_weights`` (relative weights of grades 0-4) and then its picture, both with
its own generator ``numpy.random.default_rng(SeedSequence(seed, spawn_key=(i,)))`` — the ``i``-th child of
``SeedSequence(seed).spawn(count)``. So the output depends only on ``(seed, i, size, grade_weights)``: the
same arguments give byte-identical CSVs and pixel-identical images whatever ``workers`` is, and a longer run
with the same seed extends a shorter one.
"""

from __future__ import annotations

import csv
import math
import multiprocessing
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from datasets.synthetic.fundus import LESION_TYPES, MIN_SIZE, Lesion, render_fundus

LABELS_CSV = "trainLabels.csv"
LESIONS_CSV = "lesions.csv"
LESION_COLUMNS = ("image", "type", "x0", "y0", "x1", "y1")
IMAGE_EXTENSION = ".jpeg"
JPEG_QUALITY = 95
NUM_GRADES = 5


def image_name(index: int) -> str:
    """EyePACS-style name of image ``index``: patient ``index // 2``, left eye for even indices."""
    return f"{index // 2:05d}_{'left' if index % 2 == 0 else 'right'}"


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of image ``index``: child ``index`` of ``SeedSequence(seed).spawn(...)``, built directly."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def grade_probabilities(grade_weights: Sequence[float]) -> np.ndarray:
    """Normalise five non-negative, finite weights with a positive sum; ``ValueError`` otherwise."""
    weights = [float(w) for w in grade_weights]
    if len(weights) != NUM_GRADES:
        raise ValueError(f"grade_weights needs {NUM_GRADES} values (grades 0-4), got {len(weights)}")
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"grade_weights must be finite, non-negative and not all zero, got {weights}")
    p = np.asarray(weights, dtype=np.float64)
    return p / p.sum()


@dataclass(frozen=True)
class _Task:
    out: Path
    seed: int
    index: int
    size: int
    probabilities: tuple[float, ...]
    dicom: bool = False


@dataclass(frozen=True)
class _Record:
    name: str
    grade: int
    lesions: tuple[Lesion, ...]


def _render_and_save(task: _Task) -> _Record:
    """Render image ``task.index`` and write its JPEG; return what the CSVs need."""
    rng = image_rng(task.seed, task.index)
    grade = int(rng.choice(NUM_GRADES, p=np.asarray(task.probabilities)))
    laterality = "L" if task.index % 2 == 0 else "R"
    fundus = render_fundus(rng, grade=grade, laterality=laterality, size=task.size)
    name = image_name(task.index)
    ok, buf = cv2.imencode(IMAGE_EXTENSION, fundus.image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 BGR array
        raise RuntimeError(f"JPEG encoding failed for {name}")
    (task.out / f"{name}{IMAGE_EXTENSION}").write_bytes(buf.tobytes())
    if task.dicom:
        from datasets.synthetic.dicom import write_op_dicom  # pydicom only when asked for

        write_op_dicom(fundus.image, task.out / f"{name}.dcm", laterality=laterality,
                       patient_id=f"{task.index // 2:05d}", seed=task.seed)
    return _Record(name=name, grade=grade, lesions=fundus.lesions)


def _init_worker() -> None:
    """Worker processes: one OpenCV thread each (the pool provides the parallelism)."""
    cv2.setNumThreads(1)


def _records(tasks: list[_Task], workers: int) -> Iterator[_Record]:
    """Render the tasks in index order, in this process or in a ``spawn`` process pool."""
    if workers == 1 or len(tasks) == 1:
        yield from map(_render_and_save, tasks)
        return
    chunk = max(1, min(16, len(tasks) // (4 * workers)))
    context = multiprocessing.get_context("spawn")  # fork after OpenCV started threads is unsafe
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker) as pool:
        yield from pool.map(_render_and_save, tasks, chunksize=chunk)


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
) -> Path:
    """Write ``count`` synthetic photographs in the EyePACS layout under ``out``; return the labels CSV path.

    See the module docstring for the layout and the determinism contract. ``progress`` shows a tqdm bar on
    stderr. ``dicom`` also writes ``<image>.dcm`` beside each JPEG. Raises ``ValueError`` for ``count`` < 1, ``size`` < 64, a negative ``seed``, ``workers`` < 1 or
    bad ``grade_weights``, and ``NotADirectoryError`` when ``out`` exists and is not a directory.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if size < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE}, got {size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    probabilities = tuple(float(p) for p in grade_probabilities(grade_weights))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)

    tasks = [_Task(out, int(seed), i, int(size), probabilities, bool(dicom)) for i in range(count)]
    bar = tqdm(_records(tasks, workers), total=count, desc="synthetic fundus", unit="img", disable=not progress)
    records = list(bar)

    labels = out / LABELS_CSV
    _write_csv(labels, ("image", "level"), ((r.name, r.grade) for r in records))
    _write_csv(
        out / LESIONS_CSV,
        LESION_COLUMNS,
        ((r.name, les.type, *les.box) for r in records for les in r.lesions),
    )
    return labels


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
