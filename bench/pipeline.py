"""Fovea's analysis as served against a competent and a naive PyTorch + Grad-CAM stack, same weights and photographs,
one run.

    python -m bench.pipeline                       # `make bench`: docs/performance.md (+ .json, images/performance.png)
    python -m bench.pipeline --repeats 2 --inputs retina.jpg --drive 0 --no-http   # a quick smoke run
    FOVEA_DEVICE=cuda python -m bench.pipeline     # on a GPU (onnxruntime-gpu installed; torch stacks on CUDA)

Three stacks, interleaved per repeat on each input (so drifting load hits all alike):

* **competent** (:mod:`bench.competent`, the headline): PIL with JPEG draft mode, the card's preprocessing
  recipe, PyTorch eager under inference mode, pytorch-grad-cam ``GradCAM``, OpenCV overlay and PNGs at most
  1024 px;
* **naive** (:mod:`bench.baseline`, a secondary column): full-resolution PIL, matplotlib overlay and PIL PNG;
* **Fovea**: :meth:`analysis.pipeline.Analyzer.analyze` with every default model ``make serve`` loads
  (``models/default/``: the image-quality model, the grader and the lesion detector), its own ``timing_ms``.

What it measures (docs/performance.md has the tables it writes):

* per input (synthetic 10 MP and 5 MP JPEGs, a 3 MP JPEG DICOM and a 1024² PNG; scikit-image's real
  ``retina.jpg`` as shipped and upscaled to 10 MP; a few raw DRIVE camera photographs read in place from
  ``../shared/real-dev/drive`` when that folder exists): every stage of the three stacks (medians, quartiles,
  range), the end-to-end ratios, the grades, and the share of Fovea's time in model stages;
* Fovea's render stage split by direct calls;
* model compute against the machine (:mod:`bench.flops`): FLOPs of each served model at its input, ONNX
  Runtime latency, achieved GFLOP/s, a numpy float32 matmul ceiling, and the models' share of an analysis;
* with the service (unless ``--no-http``): Fovea's ``/analyze`` (``bentoml serve`` on a fresh model store) and
  the competent stack behind a minimal HTTP server (:mod:`bench.competent_http`), p50 per photograph and the
  ratio; cold start, RSS and throughput / p50 / p99 with ``--clients`` concurrent clients for 1 and 2 workers
  (:mod:`bench.load`);
* ``--int8 CARD``: fp32 vs int8 grader latency (``python -m training quantize`` writes such a card).

The headline sentence (competent ratio) is printed at the end and written between the
:data:`README_BEGIN`/:data:`README_END` markers of ``--readme`` (README.md by default).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import datetime as dt
import io
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:  # torch and the service load lazily: `--from-json` needs neither
    from bench.baseline import NaiveBaseline
    from bench.competent import CompetentStack
    from analysis.pipeline import Analyzer

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DIR = REPO / "models" / "default"
GRADER_CARD = DEFAULT_DIR / "dr-grader.card.json"
DETECTOR_CARD = DEFAULT_DIR / "lesion-detector.card.json"
QUALITY_CARD = DEFAULT_DIR / "image-quality.card.json"
#: Raw camera photographs (DRIVE, PNG) read in place, never copied (../shared/real-dev/README.md).
DRIVE_DIR = REPO.parent / "shared" / "real-dev" / "drive" / "images"
#: The stacks, in table order: the headline comparison first.
STACKS = ("competent", "naive")
#: README's headline line lies between these markers; the benchmark rewrites it.
README_BEGIN, README_END = "<!-- bench:headline -->", "<!-- /bench:headline -->"
FOVEA_STAGES = ("decode", "quality", "preprocess", "inference", "detection", "render")
MODEL_STAGES_FOVEA = ("inference", "detection")
RENDER_PARTS = ("cam_to_heatmap", "overlay", "png_heatmap", "png_overlay")
#: The performance targets on a 2-core CPU (docs/performance.md): speed-up over the competent stack over HTTP,
#: models' share of an analysis, cold start in seconds, resident memory in MB, and the in-process p50 (ms) of
#: the full analysis of the 10 MP camera JPEG (:data:`TARGET_P50_INPUT`).
TARGET_RATIO, TARGET_MODEL_SHARE, TARGET_COLD_S, TARGET_RSS_MB = 2.5, 0.70, 10.0, 1536.0
TARGET_P50_MS, TARGET_P50_INPUT = 60.0, "JPEG 3888x2592 synthetic"


# ------------------------------------------------------------------------------------------------------------
# Statistics
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stat:
    """Median, quartiles and range of a sample (milliseconds unless said otherwise)."""

    median: float
    q1: float
    q3: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stat:
        if not samples:
            raise ValueError("no samples")
        a = np.asarray(samples, dtype=np.float64)
        q1, med, q3 = np.percentile(a, [25, 50, 75])
        return cls(float(med), float(q1), float(q3), float(a.min()), float(a.max()), len(a))

    def cell(self, digits: int = 0) -> str:
        """``median [q1–q3]`` for a table cell."""
        return f"{self.median:.{digits}f} [{self.q1:.{digits}f}–{self.q3:.{digits}f}]"


@dataclass
class InputResult:
    """Samples of one input: stage → milliseconds per repeat, for each stack, and the grades each gave."""

    name: str
    width: int
    height: int
    nbytes: int
    competent: dict[str, list[float]] = field(default_factory=dict)
    naive: dict[str, list[float]] = field(default_factory=dict)
    fovea: dict[str, list[float]] = field(default_factory=dict)
    #: Fovea with every stage in turn on one thread (``Analyzer.concurrent_stages = False``), interleaved too
    fovea_sequential: dict[str, list[float]] = field(default_factory=dict)
    render_parts: dict[str, list[float]] = field(default_factory=dict)
    competent_grade: int | None = None
    naive_grade: int | None = None
    fovea_grade: int | None = None

    def total(self, which: str) -> Stat:
        return Stat.of(getattr(self, which)["total"])

    def ratio(self, which: str = "competent") -> float:
        """End-to-end speed-up: ``which`` stack's median total / Fovea's median total."""
        return self.total(which).median / self.total("fovea").median

    def model_share(self, which: str) -> float:
        """Median over repeats of (model-compute stages) / total: Fovea ``inference`` + ``detection`` (the
        image-quality model runs inside ``quality``, with the classic measures) in its run with every stage in
        turn when there is one, a torch stack ``forward`` + ``gradcam``."""
        samples = getattr(self, which)
        if which == "fovea" and self.fovea_sequential:
            # Fovea's stages overlap; the run with every stage in turn gives each stage's own share.
            samples = self.fovea_sequential
        stages = MODEL_STAGES_FOVEA if which == "fovea" else ("forward", "gradcam")
        shares = [sum(samples[s][i] for s in stages if s in samples) / samples["total"][i]
                  for i in range(len(samples["total"]))]
        return float(statistics.median(shares))


def _append(store: dict[str, list[float]], timings: dict[str, float]) -> None:
    for k, v in timings.items():
        store.setdefault(k, []).append(float(v))


# ------------------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------------------


def _jpeg(rgb: np.ndarray, quality: int = 92) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)  # 4:2:0, as cameras write
    return buf.getvalue()


def _png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def make_inputs(workdir: Path, *, scale: float = 1.0) -> dict[str, bytes]:
    """The benchmark's own inputs by name (``scale`` < 1 shrinks every side, for tests): synthetic photographs
    and scikit-image's real ``retina.jpg`` (as shipped, and upscaled to 10 MP as a camera would write it)."""
    import skimage

    from datasets.synthetic.dicom import write_op_dicom
    from datasets.synthetic.fundus import render_fundus

    def side(v: int) -> int:
        return max(64, int(round(v * scale)))

    rng = np.random.default_rng(2026)
    out: dict[str, bytes] = {}
    for (w, h), grade in (((side(3888), side(2592)), 2), ((side(2592), side(1944)), 1)):
        out[f"JPEG {w}x{h} synthetic"] = _jpeg(render_fundus(rng, grade=grade, laterality="R", size=(w, h)).image)
    retina_path = Path(skimage.__file__).parent / "data" / "retina.jpg"
    retina = cv2.cvtColor(cv2.imread(str(retina_path)), cv2.COLOR_BGR2RGB)
    s = side(retina.shape[1])
    out[f"JPEG {s}x{s} real (retina.jpg)"] = (retina_path.read_bytes() if scale == 1.0 else
                                               _jpeg(cv2.resize(retina, (s, s), interpolation=cv2.INTER_AREA)))
    s = side(3168)
    out[f"JPEG {s}x{s} real (retina.jpg upscaled)"] = _jpeg(cv2.resize(retina, (s, s), interpolation=cv2.INTER_CUBIC))
    w, h = side(2048), side(1536)
    path = workdir / "bench.dcm"
    write_op_dicom(render_fundus(rng, grade=3, laterality="L", size=(w, h)).image, path, laterality="L",
                   patient_id="BENCH")
    out[f"DICOM {w}x{h} JPEG baseline"] = path.read_bytes()
    s = side(1024)
    out[f"PNG {s}x{s} synthetic"] = _png(render_fundus(rng, grade=1, laterality="R", size=s).image)
    return out


def drive_inputs(folder: Path = DRIVE_DIR, count: int = 3) -> tuple[dict[str, bytes], str | None]:
    """The first ``count`` raw DRIVE camera photographs (PNG, sorted by name), read in place; and a note when
    they are skipped (the folder is absent: ``../shared/real-dev`` is not on every machine)."""
    if count <= 0:
        return {}, None
    files = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if not files:
        return {}, f"The raw DRIVE photographs were skipped: {folder} is absent or empty on this machine."
    from PIL import Image

    out = {}
    for f in files[:count]:
        data = f.read_bytes()
        w, h = Image.open(io.BytesIO(data)).size  # the header only
        out[f"PNG {w}x{h} real (DRIVE {f.stem}, raw camera)"] = data
    return out, None


def select(inputs: dict[str, bytes], wanted: Sequence[str]) -> dict[str, bytes]:
    """The inputs whose name contains one of ``wanted`` (case-insensitive); all when ``wanted`` is empty."""
    if not wanted:
        return dict(inputs)
    return {k: v for k, v in inputs.items() if any(w.lower() in k.lower() for w in wanted)}


# ------------------------------------------------------------------------------------------------------------
# Measurements
# ------------------------------------------------------------------------------------------------------------


def _render_parts(analyzer: Analyzer, data: bytes) -> dict[str, float]:
    """The render stage split into its parts by direct calls on one analysis's data."""
    from models.card import recipe_of
    from models.grading import softmax
    from models.preprocess import preprocess
    from analysis.decode import decode
    from analysis.pipeline import saliency_target
    from analysis.quality import ANALYSIS_SIZE
    from analysis.render import caption_for, cam_to_heatmap, heat_to_u8, overlay, png_base64

    card = analyzer.grader_card
    img = decode(data, limits=analyzer.limits, target=max(card.input.size, ANALYSIS_SIZE))[0]
    pre = preprocess(img.rgb, card.input.size, recipe=recipe_of(card))
    out = analyzer.run_grader(pre.tensor[None])
    probs = softmax(out["logits"][0])
    target = saliency_target(int(np.argmax(probs)), probs)
    t: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], np.ndarray | str]) -> np.ndarray:
        t0 = time.perf_counter()
        r = fn()
        t[name] = 1000 * (time.perf_counter() - t0)
        return r  # type: ignore[return-value]

    heat = timed("cam_to_heatmap", lambda: heat_to_u8(cam_to_heatmap(out["cam"][0, target], pre.transform)))
    pic = timed("overlay", lambda: overlay(img.rgb, heat, caption=caption_for(card)))
    timed("png_heatmap", lambda: png_base64(heat))
    timed("png_overlay", lambda: png_base64(pic))
    return t


def measure_input(name: str, data: bytes, *, competent: CompetentStack, naive: NaiveBaseline | None,
                  analyzer: Analyzer, repeats: int, warmup: int = 1) -> InputResult:
    """Run ``data`` through the stacks ``warmup + repeats`` times (interleaved: competent, naive, Fovea, so
    drifting load hits all alike) and keep the timed repeats. ``naive=None`` leaves the naive stack out."""
    from analysis.decode import sniff

    res: InputResult | None = None
    for i in range(warmup + repeats):
        c = competent.run(data)
        b = naive.run(data) if naive is not None else None
        t0 = time.perf_counter()
        f = analyzer.analyze(data)
        wall = 1000 * (time.perf_counter() - t0)
        analyzer.concurrent_stages = False
        try:
            t0 = time.perf_counter()
            seq = analyzer.analyze(data)
            seq_wall = 1000 * (time.perf_counter() - t0)
        finally:
            analyzer.concurrent_stages = True
        parts = _render_parts(analyzer, data)
        if res is None:
            res = InputResult(name=name, width=f.image.width, height=f.image.height, nbytes=len(data))
            assert sniff(data) in ("dicom", "jpeg", "png")
        if i < warmup:
            continue
        _append(res.competent, {**c.timing_ms, "total": sum(c.timing_ms.values())})
        if b is not None:
            _append(res.naive, {**b.timing_ms, "total": sum(b.timing_ms.values())})
            res.naive_grade = b.grade
        _append(res.fovea, {**{k: f.timing_ms.get(k, 0.0) for k in FOVEA_STAGES}, "total": wall})
        _append(res.fovea_sequential, {**{k: seq.timing_ms.get(k, 0.0) for k in FOVEA_STAGES}, "total": seq_wall})
        _append(res.render_parts, {**parts, "total": sum(parts.values())})
        res.competent_grade, res.fovea_grade = c.grade, f.dr_grade.grade
    assert res is not None
    return res


def torch_thread_check(model: object, tensor: np.ndarray, threads: int, runs: int = 7) -> dict[str, float]:
    """Median ms of a torch forward (inference mode) on ``tensor`` with ``threads`` and with 1 intra-op thread,
    interleaved, then ``threads`` again: when one thread is faster, other processes held the cores, and
    PyTorch's statically split parallel regions waited for the descheduled thread on every operator."""
    import torch

    x = torch.from_numpy(tensor)
    times: dict[int, list[float]] = {threads: [], 1: []}
    with torch.inference_mode():
        for i in range(runs + 1):
            for n in (threads, 1):
                torch.set_num_threads(n)
                t0 = time.perf_counter()
                model(x)  # type: ignore[operator]
                if i:
                    times[n].append(1000 * (time.perf_counter() - t0))
    torch.set_num_threads(threads)
    return {"threads": float(threads), "forward_ms": statistics.median(times[threads]),
            "one_thread_ms": statistics.median(times[1])}


def contention_note(c: dict[str, float | str]) -> str:
    """What :func:`torch_thread_check` says about this run."""
    n, many, one = int(c["threads"]), float(c["forward_ms"]), float(c["one_thread_ms"])
    policy = f" OpenMP wait policy: {c['omp_wait_policy'] or 'the default (active)'}." if "omp_wait_policy" in c else ""
    if n == 1:
        return f"The torch stacks ran with 1 intra-op thread (--torch-threads 1); a forward took {many:.0f} ms.{policy}"
    text = (f"The torch stacks ran with {n} intra-op threads; the same forward took {many:.0f} ms with {n} and "
            f"{one:.0f} ms with 1 thread in a check before the run.{policy}")
    if one < 0.8 * many:
        text += (" One thread was clearly faster: other processes held the cores, PyTorch's parallel regions waited for "
                 "descheduled threads, and the ratios against the torch stacks are inflated; rerun on a quiet "
                 "machine (or with --torch-threads 1 to see the lower bound).")
    return text


def ort_latency_ms(onnx_bytes: bytes, size: int, *, runs: int = 20, providers: list[str] | None = None) -> Stat:
    """Latency of one ``(1, 3, size, size)`` forward through ONNX Runtime with the service's session options."""
    from analysis.runtime import latency_samples

    return Stat.of(latency_samples(onnx_bytes, size, runs=runs, providers=providers))


_RSS_PROBE = """
import json, sys, time
from pathlib import Path
import psutil
def hwm():  # VmHWM: this process's own peak (ru_maxrss would carry the forking parent's over exec)
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM"))
    return int(line.split()[1]) / 1024
t0 = time.perf_counter()
from analysis.pipeline import Analyzer
det = Path(sys.argv[2]) if sys.argv[2] else None
qual = Path(sys.argv[4]) if sys.argv[4] else None
a = Analyzer.load(Path(sys.argv[1]), detector=det, quality=qual)
loaded = time.perf_counter() - t0
rss_loaded = psutil.Process().memory_info().rss
a.analyze(Path(sys.argv[3]).read_bytes())
print(json.dumps({"load_s": loaded, "rss_loaded_mb": rss_loaded / 2**20,
                  "rss_after_mb": psutil.Process().memory_info().rss / 2**20,
                  "peak_mb": hwm()}))
"""


def analysis_process_memory(grader: Path, detector: Path | None, image: Path, quality: Path | None = None
                            ) -> dict[str, float]:
    """RSS of a fresh process (no torch) that loads the models and analyses ``image`` once."""
    out = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(grader), str(detector or ""), str(image),
                          str(quality or "")],
                         cwd=REPO, capture_output=True, text=True, check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


@dataclass
class HttpResult:
    label: str
    workers: int
    ready_s: float
    rss_mb: float
    rss_largest_mb: float
    processes: int
    clients: int
    requests: int
    errors: int
    throughput: float
    p50: float
    p99: float


def _tree_rss(pid: int) -> tuple[float, float, int]:
    import psutil

    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    rss = [p.memory_info().rss / 2**20 for p in procs if p.is_running()]
    return sum(rss), max(rss), len(rss)


def _register(card: Path, home: str) -> str:
    """``python -m training register --card`` into the model store at ``home``; the tag."""
    out = subprocess.run([sys.executable, "-m", "training", "register", "--card", str(card)], cwd=REPO,
                         env={**os.environ, "BENTOML_HOME": home, "BENTOML_DO_NOT_TRACK": "true"},
                         capture_output=True, text=True, check=True, timeout=300)
    return out.stdout.strip().splitlines()[-1]


def http_bench(image: bytes, name: str, *, workers: Sequence[int], clients: int, requests: int,
               int8: Path | None = None) -> list[HttpResult]:
    """Start the service (fresh model store) per worker count; cold start, RSS, throughput and latency. With
    ``int8`` (a card), one more 1-worker run serves it (registered, ``FOVEA_GRADER_TAG``), and every response
    is checked to name its version."""
    import httpx

    from bench.load import ServedFovea, run_load

    configs: list[tuple[str, int, Path | None]] = [(f"{n} worker{'s' if n > 1 else ''}, fp32", n, None) for n in workers]
    if int8 is not None:
        configs.append(("1 worker, int8", 1, int8))
    rows = []
    for label, n, card in configs:
        with tempfile.TemporaryDirectory(prefix="fovea-bench-") as home:
            env = {"FOVEA_GRADER_TAG": _register(card, home)} if card else {}
            with ServedFovea(workers=n, inference="local", home=Path(home), env=env) as svc:
                asyncio.run(run_load(svc.url, image, name, clients=n, requests=2 * n, progress=False))
                if card is not None:  # the service really serves the int8 version
                    got = httpx.post(f"{svc.url}/analyze", files={"image": (name, image)}, timeout=300).json()
                    version = got["models"][0]["version"]
                    if f"dr-grader:{version}" != env["FOVEA_GRADER_TAG"]:
                        raise RuntimeError(f"the service answered with {version}, not {env['FOVEA_GRADER_TAG']}")
                assert svc.proc is not None
                r = asyncio.run(run_load(svc.url, image, name, clients=clients, requests=requests, progress=False))
                rss, largest, count = _tree_rss(svc.proc.pid)
                rows.append(HttpResult(label=label, workers=n, ready_s=svc.ready_seconds, rss_mb=rss,
                                       rss_largest_mb=largest, processes=count, clients=clients, requests=requests,
                                       errors=r.errors, throughput=r.throughput, p50=r.percentile(50),
                                       p99=r.percentile(99)))
    return rows


@dataclass
class HttpCompare:
    """Round trips of one photograph over HTTP (ms per request, sequential): Fovea's ``/analyze`` and the
    competent stack's server, and the grades each answered."""

    name: str
    fovea: list[float] = field(default_factory=list)
    competent: list[float] = field(default_factory=list)
    fovea_grade: int | None = None
    competent_grade: int | None = None

    def ratio(self) -> float:
        """Competent p50 / Fovea p50."""
        return statistics.median(self.competent) / statistics.median(self.fovea)


def _post(http: object, url: str, name: str, data: bytes) -> tuple[float, int]:
    """One ``POST /analyze``: milliseconds and the grade; ``RuntimeError`` on anything but a 200 with a grade."""
    t0 = time.perf_counter()
    r = http.post(f"{url}/analyze", files={"image": (name, data)})  # type: ignore[attr-defined]
    ms = 1000 * (time.perf_counter() - t0)
    if r.status_code != 200 or "dr_grade" not in r.json():
        raise RuntimeError(f"{url}/analyze answered {r.status_code} for {name}: {r.text[:300]}")
    return ms, int(r.json()["dr_grade"]["grade"])


def compare_http(inputs: dict[str, bytes], fovea_url: str, competent_url: str, *, repeats: int,
                 warmup: int = 1, transport: object | None = None) -> list[HttpCompare]:
    """Each photograph ``warmup + repeats`` times to both servers, one request at a time, alternating which
    goes first (drifting load hits both alike); the timed round trips per photograph (``transport``: an httpx
    transport, for tests)."""
    import httpx

    out = {name: HttpCompare(name=name) for name in inputs}
    with httpx.Client(timeout=300, transport=transport) as http:  # type: ignore[arg-type]
        for i in range(warmup + repeats):
            for name, data in inputs.items():
                fname = "photo." + ("dcm" if data[128:132] == b"DICM" else "png" if data[:4] == b"\x89PNG" else "jpg")
                order = [("fovea", fovea_url), ("competent", competent_url)]
                for which, url in (order if i % 2 == 0 else order[::-1]):
                    ms, grade = _post(http, url, fname, data)
                    if i >= warmup:
                        getattr(out[name], which).append(ms)
                        setattr(out[name], f"{which}_grade", grade)
    return list(out.values())


def http_compare(inputs: dict[str, bytes], grader: Path, *, repeats: int, threads: int | None = None
                 ) -> tuple[list[HttpCompare], float]:
    """Start Fovea (1 worker, fresh model store, ``make serve``'s models) and the competent server, compare them
    (:func:`compare_http`), stop both; also returns the competent server's start-up seconds."""
    from bench.competent_http import ServedCompetent
    from bench.load import ServedFovea

    with tempfile.TemporaryDirectory(prefix="fovea-bench-") as home:
        with ServedFovea(workers=1, inference="local", home=Path(home)) as svc, ServedCompetent(grader, threads=threads) as comp:
            return compare_http(inputs, svc.url, comp.url, repeats=repeats), comp.ready_seconds


# ------------------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------------------


def machine_description() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import onnxruntime as ort
    import torch

    return (f"{model}, {os.cpu_count()} logical CPUs, {mem:.0f} GiB RAM; Python {platform.python_version()}, "
            f"ONNX Runtime {ort.__version__} ({', '.join(ort.get_available_providers())}), torch {torch.__version__}")


def stage_table(results: Sequence[InputResult], which: str, stages: Sequence[str]) -> list[str]:
    """Markdown rows: one per input, one column per stage (median [IQR] ms), then total and its range."""
    head = ["input", *stages, "total", "min–max"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        samples = getattr(r, which)
        if not samples:
            continue
        cells = [Stat.of(samples[s]).cell(1) if s in samples else "–" for s in stages]
        tot = Stat.of(samples["total"])
        rows.append(f"| {r.name} | " + " | ".join(cells) + f" | **{tot.cell(0)}** | {tot.lo:.0f}–{tot.hi:.0f} |")
    return rows


def _grade(g: int | None) -> str:
    return "–" if g is None else str(g)


def summary_table(results: Sequence[InputResult]) -> list[str]:
    """Markdown rows of the end-to-end comparison per input: the competent ratio first, the naive one after."""
    rows = ["| input | bytes | Fovea ms | competent ms | **speed-up vs competent** | naive ms | vs naive | "
            "Fovea model share | competent model share | grade Fovea / competent / naive |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        naive = (r.total("naive").cell(), f"{r.ratio('naive'):.1f}×") if r.naive else ("–", "–")
        rows.append(f"| {r.name} | {r.nbytes / 1e6:.2f} MB | {r.total('fovea').cell()} | {r.total('competent').cell()} "
                    f"| **{r.ratio():.1f}×** | {naive[0]} | {naive[1]} | {100 * r.model_share('fovea'):.0f} % | "
                    f"{100 * r.model_share('competent'):.0f} % | {_grade(r.fovea_grade)} / "
                    f"{_grade(r.competent_grade)} / {_grade(r.naive_grade)} |")
    return rows


def headline(results: Sequence[InputResult], http: Sequence[HttpCompare] = ()) -> str:
    """The one-sentence result: the median competent ratio over inputs and its range (the naive one, and the
    HTTP p50 ratio when measured, after it)."""
    ratios = sorted(r.ratio() for r in results)
    mid = statistics.median(ratios)
    speed = f"**{mid:.1f}× faster**" if mid >= 1 else f"**{1 / mid:.1f}× slower**"
    text = (f"Fovea's full analysis (quality model, grader, lesion detector) is {speed} end to end than a "
            f"competent PyTorch + Grad-CAM stack on the same grader weights (median over {len(results)} "
            f"photographs; competent / Fovea time {ratios[0]:.1f}–{ratios[-1]:.1f}×)")
    naive = sorted(r.ratio("naive") for r in results if r.naive)
    if naive:
        text += f"; {statistics.median(naive):.0f}× against the naive stack"
    if http:
        hr = sorted(h.ratio() for h in http)
        text += f"; over HTTP, p50 {statistics.median(hr):.1f}× ({hr[0]:.1f}–{hr[-1]:.1f}×)"
    return text + "."


def http_table(rows: Sequence[HttpCompare]) -> list[str]:
    """Markdown rows: p50 round trip per photograph for each server and the ratio."""
    out = ["| input | Fovea `/analyze` p50 ms | competent server p50 ms | speed-up | requests each | grade Fovea / competent |",
           "|---|---|---|---|---|---|"]
    for h in rows:
        out.append(f"| {h.name} | {statistics.median(h.fovea):.0f} | {statistics.median(h.competent):.0f} | "
                   f"**{h.ratio():.1f}×** | {len(h.fovea)} | {_grade(h.fovea_grade)} / {_grade(h.competent_grade)} |")
    return out


def plot(results: Sequence[InputResult], path: Path) -> None:
    """Stacked stage bars (median ms) per input: Fovea above the competent stack; the naive total in the title
    (its bar would dwarf both)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.competent import STAGES

    fig, axes = plt.subplots(len(results), 1, figsize=(10, 1.9 * len(results) + 0.8), squeeze=False)
    colours = plt.get_cmap("tab20")
    names = list(dict.fromkeys([*STAGES, *FOVEA_STAGES]))  # 12 stages: one tab20 colour each
    for ax, r in zip(axes[:, 0], results, strict=True):
        for y, (samples, stages) in enumerate(((r.fovea, FOVEA_STAGES), (r.competent, STAGES))):
            left = 0.0
            for s in stages:
                if s not in samples:
                    continue
                v = Stat.of(samples[s]).median
                ax.barh(y, v, left=left, color=colours(names.index(s) % 20), edgecolor="white", label=s)
                left += v
            ax.text(left, y, f" {left:.0f} ms", va="center", fontsize=8)
        ax.set_yticks([0, 1], ["Fovea", "competent"])
        naive = f"; naive {r.total('naive').median:.0f} ms ({r.ratio('naive'):.0f}×)" if r.naive else ""
        ax.set_title(f"{r.name}: competent / Fovea time {r.ratio():.1f}×{naive}", fontsize=9, loc="left")
        ax.set_xlim(0, max(r.total("competent").median, r.total("fovea").median, 1) * 1.18)
    axes[-1, 0].set_xlabel("milliseconds per photograph (median)")
    handles, labels = [], []
    for ax in axes[:, 0]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 8), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


#: In docs/performance.md, this line and everything after it are hand-written notes (measurements made outside
#: this benchmark) that a rerun keeps.
KEEP_MARKER = "<!-- Hand-written below this line; bench/pipeline.py keeps it when it rewrites the page. -->"


def kept_notes(path: Path) -> list[str]:
    """The lines of ``path`` from :data:`KEEP_MARKER` on (none when the file or the marker is missing)."""
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    at = text.find(KEEP_MARKER)
    return text[at:].rstrip("\n").split("\n") if at >= 0 else []


def write_markdown(path: Path, *, results: Sequence[InputResult], meta: dict[str, object]) -> None:
    """docs/performance.md from the measurements (``meta``: machine, command, compute, service, int8); the
    hand-written notes after :data:`KEEP_MARKER` in the old page are kept at the end."""
    from bench.baseline import STAGES as NAIVE_STAGES
    from bench.competent import STAGES

    cold = meta.get("http") or []
    compare = meta.get("http_compare") or []
    lines = [
        "# Performance",
        "",
        "Generated by `bench/pipeline.py`; do not edit by hand — rerun the command below.",
        "",
        f"**Headline**: {meta['headline']}",
        "",
        f"- **Machine**: {meta['machine']}",
        f"- **Date**: {meta['date']}",
        f"- **Command**: `{meta['command']}` ({meta['repeats']} timed repeats per input after {meta['warmup']} "
        f"warm-up, stacks interleaved; the whole run took {meta['seconds']:.0f} s)",
        f"- **Load**: 1-minute load average {meta['load_before']:.2f} before, {meta['load_after']:.2f} after, on "
        f"{os.cpu_count()} CPUs. {meta['shared_note']}",
        f"- **Models** (Fovea, as `make serve` loads them): {meta['models']}",
        "- Outputs are AI output from research or synthetic-data models, not for diagnosis; only their cost is "
        "measured here.",
        "",
        "Three stacks on the same photographs, interleaved per repeat:",
        "",
        "- **Fovea** = `analysis.pipeline.Analyzer.analyze` with every default model (image-quality model, grader, "
        "lesion detector): reduced JPEG decode, quality gate, the cards' preprocessing recipes, ONNX Runtime logits "
        "+ in-graph CAM, the detector, OpenCV overlay and two PNGs (heatmap and overlay, at most 1024 px on the "
        "long side).",
        "- **Competent** (the headline, `bench/competent.py`): PIL with JPEG draft mode (≥ 1024 px), the grader "
        "card's preprocessing recipe (`models.preprocess` crop + contrast normalisation, torchvision normalise), "
        "PyTorch eager forward under `torch.inference_mode()` with as many intra-op threads as cores "
        "(`--torch-threads`) and PyTorch's default OpenMP wait (active: on quiet cores 1.6× faster for this grader "
        "than `OMP_WAIT_POLICY=PASSIVE`, which the environment may set), pytorch-grad-cam "
        "`GradCAM` (its own forward + backward), OpenCV JET overlay at ≤ 1024 px, OpenCV PNGs of heatmap and "
        "overlay. It grades and explains only: no quality model and no detector, which Fovea runs on top. It "
        "grades one view of the photograph, where Fovea's grader graph averages the card's test-time views "
        f"({meta.get('grader_views', 'identity')}): Fovea does that much more grader work.",
        "- **Naive** (secondary, `bench/baseline.py`): full-resolution PIL decode, torchvision Resize + "
        "CenterCrop + Normalize, eager forward, GradCAM, PIL/matplotlib overlay at full size, PIL PNG.",
        "",
        f"The torch model is the ONNX grader's weights mapped into its `models.architectures` module; logits agree "
        f"within {meta['same_weights_diff']:.1e} when torch averages the same views (checked, the run fails beyond "
        f"1e-3).",
        "",
        "## End to end (median [interquartile range], ms per photograph)",
        "",
        *summary_table(results),
        "",
        f"Targets: ≥ {TARGET_RATIO:g}× faster than the competent stack over HTTP; p50 ≤ {TARGET_P50_MS:.0f} ms in "
        f"process for the {TARGET_P50_INPUT} photograph; model compute ≥ "
        f"{100 * TARGET_MODEL_SHARE:.0f} % of Fovea's end-to-end time. \"Model share\" is the median over repeats "
        "of (model stages) / total: Fovea `inference` + `detection` in its run with every stage in turn (its stages "
        "overlap otherwise; the image-quality model runs inside `quality` and is counted in \"Model compute "
        "against the machine\" below), a torch stack `forward` + `gradcam`. "
        "Grades: Fovea and the competent stack apply the card's grade rule, the naive stack the most probable grade.",
        "",
        "![stage breakdown](images/performance.png)",
        "",
        "## Stages: Fovea (the analyzer's own `timing_ms`)",
        "",
        *stage_table(results, "fovea", FOVEA_STAGES),
        "",
        "## Stages: competent stack",
        "",
        *stage_table(results, "competent", STAGES),
        "",
    ]
    if any(r.naive for r in results):
        lines += ["## Stages: naive stack", "", *stage_table(results, "naive", NAIVE_STAGES), ""]
    lines += ["## Fovea's render stage, by direct calls", "", *stage_table(results, "render_parts", RENDER_PARTS), ""]
    if compare:
        lines += ["## Over HTTP: Fovea's `/analyze` against the competent stack's server", "",
                  "Fovea = `bentoml serve` (1 worker, a fresh model store, `make serve`'s three models); competent = "
                  "`bench/competent_http.py` (Starlette under uvicorn, one process, the same JSON shape with base64 "
                  "PNGs). One request at a time, alternating which server goes first; round trip as the client "
                  f"sees it (multipart upload, analysis, JSON). Competent server ready in "
                  f"{meta.get('competent_ready_s', float('nan')):.1f} s.", "",
                  *http_table(compare), ""]  # type: ignore[arg-type]
    lines += ["## Model compute against the machine", "",
              "| model | input | GFLOP (Conv/Gemm/Einsum, batch 1) | ORT latency ms | achieved GFLOP/s | "
              "numpy float32 matmul ceiling GFLOP/s | fraction of ceiling |", "|---|---|---|---|---|---|---|"]
    ceiling = float(meta["ceiling_gflops"])  # type: ignore[arg-type]
    for m in meta["compute"]:  # type: ignore[union-attr]
        lines.append(f"| {m['model']} | {m['size']} px | {m['gflop']:.2f} | {m['latency']} | {m['achieved']:.1f} | "
                     f"{ceiling:.1f} | {100 * m['achieved'] / ceiling:.0f} % |")
    share = meta.get("compute_share")
    if share:
        lines += ["", f"The three models' ORT latencies add up to {share['models_ms']:.0f} ms per photograph, "  # type: ignore[index]
                  f"{100 * share['median']:.0f} % of Fovea's median end-to-end time over the inputs "  # type: ignore[index]
                  f"({100 * share['lo']:.0f}–{100 * share['hi']:.0f} %): the rest is decoding, the classic "  # type: ignore[index]
                  "quality measures, preprocessing and rendering."]
    lines.append("")
    mem = meta.get("memory")
    if mem:
        lines += ["## Memory", "",
                  f"- A fresh analysis process (no torch) with all models loaded: RSS {mem['rss_loaded_mb']:.0f} MB "  # type: ignore[index]
                  f"(models loaded in {mem['load_s']:.2f} s); after one analysis of the first input "  # type: ignore[index]
                  f"{mem['rss_after_mb']:.0f} MB, peak {mem['peak_mb']:.0f} MB. Target ≤ {TARGET_RSS_MB:.0f} MB.", ""]  # type: ignore[index]
    if cold:
        lines += ["## Service: cold start, memory and HTTP load (`bench/load.py`)", "",
                  f"`bentoml serve` started on a fresh model store (the embedded defaults are imported first), "
                  f"{cold[0].clients} concurrent clients, {cold[0].requests} requests of the "  # type: ignore[union-attr]
                  f"{meta['http_image']} after warm-up. Cold start = process start to `/readyz` 200 with all models "
                  f"(target ≤ {TARGET_COLD_S:.0f} s). RSS = the whole process tree (supervisor + workers), after the load.",
                  "",
                  "| configuration | cold start s | RSS MB (tree) | largest process MB | processes | requests | errors | "
                  "req/s | p50 ms | p99 ms |", "|---|---|---|---|---|---|---|---|---|---|"]
        for h in cold:  # type: ignore[union-attr]
            lines.append(f"| {h.label} | {h.ready_s:.1f} | {h.rss_mb:.0f} | {h.rss_largest_mb:.0f} | {h.processes} | "
                         f"{h.requests} | {h.errors} | {h.throughput:.2f} | {h.p50:.0f} | {h.p99:.0f} |")
        lines.append("")
    int8 = meta.get("int8")
    if int8:
        lines += ["## int8 (static QDQ, per-channel) against fp32", "",
                  "| model | fp32 ms | int8 ms | int8 / fp32 | QWK fp32 → int8 (card) |", "|---|---|---|---|---|",
                  f"| {int8['tag']} | {int8['fp32']} | {int8['int8']} | {int8['ratio']:.2f} | {int8['qwk']} |", "",  # type: ignore[index]
                  int8["verdict"], ""]  # type: ignore[index]
    lines += ["## On a GPU", "",
              "Install `onnxruntime-gpu` in place of `onnxruntime` (same version) and a CUDA build of torch, then "
              "`FOVEA_DEVICE=cuda python -m bench.pipeline`: Fovea's sessions then use the CUDA execution provider "
              "(`analysis.runtime.choose_providers`; TensorRT first when ONNX Runtime has it) and both torch stacks "
              "run on `cuda`; `FOVEA_DEVICE=cuda make serve` and `python -m bench.load --serve --workers 1` give "
              "the HTTP numbers (one worker: the GPU is shared through the session, not through processes).", ""]
    notes = meta.get("notes")
    if notes:
        lines += ["## Reading these numbers", "", *[f"- {n}" for n in notes], ""]  # type: ignore[union-attr]
    kept = kept_notes(path)
    if kept:
        lines += [*kept, ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")


def update_readme(path: Path, line: str) -> bool:
    """Put ``line`` between :data:`README_BEGIN` and :data:`README_END` in ``path``; ``False`` (nothing written)
    when the file or a marker is missing."""
    if not path.is_file():
        return False
    text = path.read_text(encoding="utf-8")
    a, b = text.find(README_BEGIN), text.find(README_END)
    if a < 0 or b < a:
        return False
    path.write_text(text[:a + len(README_BEGIN)] + line + text[b:], encoding="utf-8")
    return True


# ------------------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------------------


def _notes(results: Sequence[InputResult], meta: dict[str, object]) -> list[str]:
    """Where targets are met or missed, computed from the numbers (no fixed text claims)."""
    notes = []
    worst = min(results, key=InputResult.ratio)
    notes.append(f"Speed-up over the competent stack in process: {worst.ratio():.1f}× on the slowest case "
                 f"({worst.name}).")
    compare = [h for h in meta.get("http_compare") or [] if isinstance(h, HttpCompare) and h.fovea]
    if compare:
        slow = min(compare, key=HttpCompare.ratio)
        notes.append(f"Speed-up over the competent stack over HTTP: {slow.ratio():.1f}× on the slowest case "
                     f"({slow.name}) {'meets' if slow.ratio() >= TARGET_RATIO else 'misses'} the "
                     f"{TARGET_RATIO:g}× target.")
    for r in results:
        if r.name == TARGET_P50_INPUT:
            p50 = r.total("fovea").median
            notes.append(f"The full analysis of the {r.name} photograph in process: p50 {p50:.0f} ms "
                         f"{'meets' if p50 <= TARGET_P50_MS else 'misses'} the {TARGET_P50_MS:.0f} ms target.")
    lean = min(sum(Stat.of(r.competent[s]).median for s in ("decode", "transforms", "forward"))
               / r.total("fovea").median for r in results)
    notes.append(f"Even without Grad-CAM, the overlay and the PNGs, the competent stack's decode + transforms + "
                 f"forward alone is {lean:.2f}× Fovea's whole analysis at least (less than 1 means that part alone "
                 "is faster than Fovea's analysis with its three models).")
    fw = statistics.median(Stat.of(r.competent["forward"]).median for r in results)
    inf = statistics.median(Stat.of(r.fovea["inference"]).median for r in results)
    cam = statistics.median(Stat.of(r.competent["gradcam"]).median for r in results)
    notes.append(f"The same grader forward took {fw:.0f} ms in PyTorch eager (inference mode) and {inf:.0f} ms in "
                 f"ONNX Runtime here ({fw / inf:.1f}×); GradCAM's own forward + backward took {cam:.0f} ms more, "
                 "which Fovea's in-graph CAM does not pay. PyTorch's threads lose more when other processes hold "
                 "the cores, so on a busy machine the ratios come out larger than on a quiet one.")
    overlap = sorted(Stat.of(r.fovea_sequential["total"]).median / r.total("fovea").median
                     for r in results if r.fovea_sequential)
    if overlap:
        target = next((r for r in results if r.name == TARGET_P50_INPUT and r.fovea_sequential), None)
        at = (f"; {target.name}: {target.total('fovea').median:.0f} ms against "
              f"{Stat.of(target.fovea_sequential['total']).median:.0f} ms" if target else "")
        notes.append(f"The lesion detector and the quality gate run beside the grader on a stage thread "
                     f"(Analyzer.concurrent_stages, "
                     f"interleaved against every stage in turn in the same run): {statistics.median(overlap):.2f}× "
                     f"faster (median over inputs, {overlap[0]:.2f}–{overlap[-1]:.2f}×{at}). Stage times overlap, "
                     "so they add up to more than the total.")
    if all("detection" in r.fovea_sequential for r in results):
        # From the run with the stages in turn: there, leaving a stage out saves its own time.
        lite = sorted(r.total("competent").median / max(1e-9, statistics.median(
            t - d for t, d in zip(r.fovea_sequential["total"], r.fovea_sequential["detection"], strict=True)))
            for r in results)
        notes.append(f"Fovea does more than the competent stack: the lesion detector and the image-quality model "
                     f"run on top of the grader. Without its detection stage Fovea would be "
                     f"{statistics.median(lite):.1f}× faster than the competent stack (median over inputs, "
                     f"{lite[0]:.1f}–{lite[-1]:.1f}×).")
    for r in results:
        share = r.model_share("fovea")
        if share < TARGET_MODEL_SHARE:
            own = r.fovea_sequential or r.fovea  # each stage's own time: from the run in turn when there is one
            rest = {s: Stat.of(own[s]).median for s in FOVEA_STAGES if s in own and s not in MODEL_STAGES_FOVEA}
            big = sorted(rest.items(), key=lambda kv: -kv[1])[:3]
            notes.append(f"Model share {100 * share:.0f} % on {r.name} misses the {100 * TARGET_MODEL_SHARE:.0f} % "
                         "target; the largest other stages: " + ", ".join(f"{k} {v:.0f} ms" for k, v in big) + ".")
    return notes


def _compute_share(results: Sequence[InputResult], compute: Sequence[dict[str, object]]) -> dict[str, float]:
    """The models' summed ORT latency against Fovea's median total per input (median and range over inputs)."""
    models_ms = sum(float(m["latency_ms"]) for m in compute)  # type: ignore[arg-type]
    shares = sorted(models_ms / r.total("fovea").median for r in results)
    return {"models_ms": models_ms, "median": float(statistics.median(shares)), "lo": shares[0], "hi": shares[-1]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--inputs", action="append", default=[], metavar="TEXT",
                   help="only the inputs whose name contains TEXT (repeatable; e.g. 'retina.jpg)', 'DICOM')")
    p.add_argument("--drive", type=int, default=3, help="raw DRIVE photographs to add (0: none)")
    p.add_argument("--torch-threads", type=int, default=0,
                   help="torch intra-op threads for the torch stacks (default: the machine's cores)")
    p.add_argument("--no-naive", action="store_true", help="leave the naive stack out (quicker)")
    p.add_argument("--no-http", action="store_true", help="skip the services (HTTP comparison, cold start, load)")
    p.add_argument("--http-repeats", type=int, default=5, help="timed requests per photograph and server")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="FOVEA_WORKERS values for the load runs")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--requests", type=int, default=24)
    p.add_argument("--int8", type=Path, help="card of an int8 grader (python -m training quantize) to time")
    p.add_argument("--scale", type=float, default=1.0, help="shrink every synthetic input side (a quick smoke run)")
    p.add_argument("--shared", default="", help="a note on other load on the machine, printed in the report")
    p.add_argument("--markdown", type=Path, default=REPO / "docs" / "performance.md")
    p.add_argument("--plot", type=Path, default=REPO / "docs" / "images" / "performance.png")
    p.add_argument("--json", type=Path, default=REPO / "docs" / "performance.json")
    p.add_argument("--readme", type=Path, default=REPO / "README.md",
                   help="file whose headline markers get the headline sentence ('' for none)")
    p.add_argument("--from-json", type=Path, help="re-render the report and plot from a saved --json (no measuring)")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.http_repeats < 1:
        p.error("--repeats and --http-repeats must be >= 1 and --warmup >= 0")
    readme = args.readme if str(args.readme) else None
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        results = [InputResult(**r) for r in saved["results"]]
        meta = saved["meta"]
        meta["http"] = [HttpResult(**h) for h in meta.get("http") or []]
        meta["http_compare"] = [HttpCompare(**h) for h in meta.get("http_compare") or []]
        meta["headline"] = headline(results, meta["http_compare"])
        meta["notes"] = (_notes(results, meta)
                         + ([contention_note(meta["torch_threads"])] if meta.get("torch_threads") else [])
                         + [n for n in meta.get("notes", []) if n.startswith(("Cold start", "The raw DRIVE"))])
        write_markdown(args.markdown, results=results, meta=meta)
        plot(results, args.plot)
        if readme:
            update_readme(readme, meta["headline"])
        print(meta["headline"])
        return 0

    from bench.competent_http import OMP_ENV

    for k, v in OMP_ENV.items():  # before torch loads; the environment wins (bench/competent.py, ``forward``)
        os.environ.setdefault(k, v)
    import torch

    from bench.baseline import NaiveBaseline
    from bench.competent import CompetentStack
    from bench.flops import matmul_ceiling, model_flops
    from bench.onnx_torch import check_same_weights, torch_grader
    from models.card import recipe_of
    from models.preprocess import preprocess
    from models.store import load_verified
    from analysis.decode import decode
    from analysis.pipeline import Analyzer

    t_start, load_before = time.perf_counter(), os.getloadavg()[0]
    device = "cuda" if os.environ.get("FOVEA_DEVICE", "").lower() == "cuda" else "cpu"
    threads = args.torch_threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    card, onnx = load_verified(GRADER_CARD)
    detector = DETECTOR_CARD if DETECTOR_CARD.is_file() else None
    quality = QUALITY_CARD if QUALITY_CARD.is_file() else None
    analyzer = Analyzer.load(GRADER_CARD, detector=detector, quality=quality)
    served = [card, *(load_verified(c)[0] for c in (quality, detector) if c is not None)]
    model = torch_grader(onnx, card.architecture, len(card.classes))
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fovea-bench-") as tmp:
        real, skipped = drive_inputs(count=args.drive)
        if skipped:
            notes.append(skipped)
        inputs = select({**make_inputs(Path(tmp), scale=args.scale), **real}, args.inputs)
        if not inputs:
            p.error(f"no input matches {args.inputs}")
        first_name, first = next(iter(inputs.items()))
        tensor = preprocess(decode(first)[0].rgb, card.input.size, recipe=recipe_of(card)).tensor[None]
        diff = check_same_weights(model, onnx, tensor, views=len(card.test_time_views))
        print(f"same weights: max |logit diff| {diff:.2e}", file=sys.stderr)
        competent = CompetentStack(model, card, device=device, threads=threads)
        contention = torch_thread_check(model, tensor, threads)
        # Its own copy: each GradCAM hooks the module it is given, and one stack's hooks must not run in the other's.
        naive = None if args.no_naive else NaiveBaseline(copy.deepcopy(model), card.input.size, device=device)
        results = []
        for name, data in inputs.items():
            print(f"measuring {name} ...", file=sys.stderr, flush=True)
            results.append(measure_input(name, data, competent=competent, naive=naive, analyzer=analyzer,
                                         repeats=args.repeats, warmup=args.warmup))
        image_path = Path(tmp) / "photo"
        image_path.write_bytes(first)
        memory = analysis_process_memory(GRADER_CARD, detector, image_path, quality)
        print("model compute ...", file=sys.stderr, flush=True)
        ceiling = matmul_ceiling()
        compute = []
        for c, o in [(card, onnx), *(load_verified(x) for x in (quality, detector) if x is not None)]:
            lat = ort_latency_ms(o, c.input.size)
            flops = model_flops(o, c.input.size)
            compute.append({"model": c.tag, "size": c.input.size, "gflop": flops / 1e9, "latency": lat.cell(1),
                            "latency_ms": lat.median, "achieved": flops / 1e9 / (lat.median / 1000)})
        int8 = None
        if args.int8:
            from models.card import ModelCard

            c8, o8 = load_verified(args.int8)
            f32, i8 = ort_latency_ms(onnx, card.input.size, runs=30), ort_latency_ms(o8, c8.input.size, runs=30)
            q = ModelCard.load(args.int8).quantization
            qwk = (f"{q.metrics_fp32.get('quadratic_weighted_kappa', float('nan')):.3f} → "
                   f"{q.metrics_int8.get('quadratic_weighted_kappa', float('nan')):.3f}") if q else "–"
            ratio = i8.median / f32.median
            int8 = {"tag": c8.tag, "fp32": f32.cell(1), "int8": i8.cell(1), "ratio": ratio, "qwk": qwk,
                    "verdict": (f"int8 is {1 / ratio:.2f}× as fast as fp32 here: " if ratio < 1 else
                                f"int8 is {ratio:.2f}× the fp32 time here (slower): ")
                               + ("it pays on this CPU." if ratio < 0.9 else
                                  "it does not pay on this CPU (AVX2 without VNNI has no fast int8 dot product, "
                                  "and the QDQ graph adds (de)quantisation around depthwise convolutions); fp32 "
                                  "stays the default.")}
        compare: list[HttpCompare] = []
        http: list[HttpResult] = []
        comp_ready = float("nan")
        if not args.no_http:
            print("HTTP: Fovea against the competent server ...", file=sys.stderr, flush=True)
            compare, comp_ready = http_compare(inputs, GRADER_CARD, repeats=args.http_repeats, threads=threads)
            print(f"HTTP: load with {args.clients} clients ...", file=sys.stderr, flush=True)
            http = http_bench(first, "photo", workers=args.workers, clients=args.clients, requests=args.requests,
                              int8=args.int8)
    meta: dict[str, object] = {
        "machine": machine_description(),
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "command": "python -m bench.pipeline " + shlex.join(sys.argv[1:] if argv is None else argv),
        "repeats": args.repeats, "warmup": args.warmup, "load_before": load_before, "load_after": os.getloadavg()[0],
        "shared_note": args.shared or "No other load was declared for this run.",
        "models": ", ".join(f"{c.tag} ({c.architecture}, {c.input.size} px)" for c in served),
        "same_weights_diff": diff, "grader_views": ", ".join(card.test_time_views),
        "ceiling_gflops": ceiling, "compute": compute,
        "compute_share": _compute_share(results, compute), "memory": memory,
        "http": http, "http_compare": compare, "competent_ready_s": comp_ready,
        "http_image": f"{first_name} photograph", "int8": int8,
        "headline": headline(results, compare), "seconds": time.perf_counter() - t_start,
    }
    meta["torch_threads"] = {**contention, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}
    meta["notes"] = _notes(results, meta) + [contention_note(contention)] + notes
    if http:
        h = http[0]
        meta["notes"].append(  # type: ignore[union-attr]
            f"Cold start {h.ready_s:.1f} s {'meets' if h.ready_s <= TARGET_COLD_S else 'misses'} the "
            f"{TARGET_COLD_S:.0f} s target; service RSS {h.rss_mb:.0f} MB (1 worker) "
            f"{'meets' if h.rss_mb <= TARGET_RSS_MB else 'misses'} the {TARGET_RSS_MB:.0f} MB target.")
    write_markdown(args.markdown, results=results, meta=meta)
    plot(results, args.plot)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"results": [asdict(r) for r in results],
                                     "meta": {k: ([asdict(x) for x in v] if k in ("http", "http_compare") else v)
                                              for k, v in meta.items()}}, indent=1, default=str) + "\n")
    if readme and not update_readme(readme, str(meta["headline"])):
        print(f"note: {readme} has no {README_BEGIN} … {README_END} markers; headline not written there",
              file=sys.stderr)
    print(args.markdown.read_text())
    print(f"\nREADME headline: {meta['headline']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
