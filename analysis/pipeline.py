"""One analysis: bytes → decode → quality gate → preprocess → grader (logits + CAM) → findings + saliency.

This module holds the logic; ``service/service.py`` only adapts it to HTTP.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from models.card import CardError, ModelCard, recipe_of
from models.detection import LESION_CLASSES, to_original
from models.detection import decode as decode_lesions
from models.grading import grade_from, is_referable, referable_probability, softmax
from models.preprocess import FundusTransform, crop_pyramid, from_crop, locate_field
from models.store import load_verified
from analysis.decode import DecodedImage, DecodeLimits, DicomInstance, decode
from analysis.errors import FoveaError
from analysis.gradability import check_quality_card, combine
from analysis.findings import (
    DrGrade, Findings, ImageInfo, LesionFinding, ModelRef, Quality, ReferableDr, Saliency, StudyFindings,
)
from analysis.quality import ANALYSIS_SIZE, QualityRules, assess, measure_crop
from analysis.render import (
    caption_for, cam_to_heatmap, coarser, draw_lesions, heat_to_u8, overlay, png_base64, reduce_by, render_factor,
    saliency_caption,
)
from analysis.runtime import OnnxModel
from analysis.study import eye_results, patient_result

#: Frames of one multi-frame upload analysed, each as an image (the rest are listed in a note).
DEFAULT_MAX_FRAMES = 8
QUALITY_METHOD = "classic measures (analysis.quality)"
#: The narrowest fundus field the decode plans for, as a fraction of the frame's shorter side. Fundus cameras
#: frame the field at about 0.9-1.0 of it (more when the disc is cut at top and bottom); a narrower field is
#: caught after decoding (:meth:`Analyzer.analyze` decodes such a photograph again, finer).
FIELD_FRACTION = 0.85

Field = tuple[float, float, float]
#: The stages of ``timing_ms``, in pipeline order (quality and detection overlap the grader: see STAGE_THREADS).
TIMING_ORDER = ("decode", "quality", "preprocess", "inference", "detection", "render", "total")
#: The shared crop pyramid of one photograph: ``{size: (crop, transform)}`` (:func:`models.preprocess.crop_pyramid`).
Crops = dict[int, tuple[np.ndarray, FundusTransform]]
T = TypeVar("T")

#: Threads that run the lesion detector and then the quality gate beside the grader, shared by every analysis in
#: the process. The models' sessions use both cores, but a third of an analysis is single-threaded numpy/OpenCV
#: (the gate's measures, the heatmap, the overlay and its PNG); overlapping it with model work fills the core it
#: leaves idle. One thread: the detector and the gate in turn take about as long as the grader and the render
#: (measured: docs/performance.md); two ran no faster and put three streams of work on two cores.
STAGE_THREADS = 1
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _stage_pool() -> ThreadPoolExecutor:
    """The process's stage threads, started on first use (not at import: a forking server's children get
    their own)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=STAGE_THREADS, thread_name_prefix="fovea-stage")
        return _pool


def decode_target(input_sizes: Sequence[int], *, field_fraction: float = FIELD_FRACTION) -> int:
    """The ``target`` of :func:`analysis.decode.decode` for models with these input sizes.

    Every model (and the quality gate's :data:`~analysis.quality.ANALYSIS_SIZE` measures) crops the fundus
    field, a disc inside the frame, and resizes that crop to its input. A reduced JPEG decode keeps the frame's
    shorter side at ``target`` pixels or more, so the field keeps ``field_fraction * target``: the target is the
    finest input divided by ``field_fraction``, so that no model is fed a field upsampled from a coarser decode.
    """
    if not 0.0 < field_fraction <= 1.0:
        raise ValueError(f"field_fraction must lie in (0, 1], not {field_fraction}")
    return math.ceil(max((ANALYSIS_SIZE, *input_sizes)) / field_fraction)


def saliency_target(grade: int, probs: np.ndarray) -> int:
    """The grade whose evidence the heatmap shows: the predicted grade if it is a DR grade; for a "No DR"
    prediction, the most probable DR grade — a reader wants to see what *could* be disease."""
    return grade if grade > 0 else 1 + int(np.argmax(probs[1:]))


#: Runs the grader on a ``(N, 3, S, S)`` float32 batch and returns its outputs by name (``logits``, ``cam``).
GraderRun = Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclass(kw_only=True)
class Analyzer:
    """Holds the grader (its verified card and a way to run it) and the gate's rules. :meth:`analyze` is
    thread-safe (ONNX Runtime sessions and the BentoML client are; the rest is pure).

    ``run_grader`` is a local ONNX Runtime session (:meth:`load`) or the batchable inference service
    (:mod:`service.inference`, :meth:`with_runner`). ``referable_threshold`` replaces the model card's
    operating point when a site configures its own (the response then says ``operating_point_source:
    "site configuration"``).
    """

    grader_card: ModelCard
    run_grader: GraderRun
    #: The execution provider, or a function that asks for it (a remote inference service can only be asked
    #: once it is up); asked once, on first use.
    provider: str | Callable[[], str]
    limits: DecodeLimits = field(default_factory=lambda: DecodeLimits(max_frames=DEFAULT_MAX_FRAMES))
    rules: QualityRules = field(default_factory=QualityRules)
    referable_threshold: float | None = None
    #: The lesion detector (a local session), when one is installed; its boxes join the findings and the overlay.
    detector: OnnxModel | None = None
    #: The image-quality model (a local session), when one is installed: it decides gradability
    #: (:mod:`analysis.gradability`); without it the classic measures do.
    quality_model: OnnxModel | None = None
    #: Run the lesion detector and the quality gate beside the grader (:data:`STAGE_THREADS`); ``False`` runs
    #: every stage in turn on the calling thread (the same results: the stages share only read-only inputs).
    concurrent_stages: bool = True

    @property
    def provider_name(self) -> str:
        """The ONNX Runtime execution provider that runs the grader."""
        if callable(self.provider):
            self.provider = str(self.provider())
        return self.provider

    def __post_init__(self) -> None:
        card = self.grader_card
        if card.task != "dr-grading" or tuple(card.outputs) != ("logits", "cam") or len(card.classes) != 5:
            raise CardError(f"{card.tag} is not a five-grade ICDR grader with in-graph CAM")
        if self.referable_threshold is not None and not 0.0 <= self.referable_threshold <= 1.0:
            raise ValueError(f"the referable-DR threshold must lie in [0, 1], not {self.referable_threshold}")
        if self.detector is not None:
            det = self.detector.card
            if (det.task != "lesion-detection" or tuple(det.outputs) != ("heatmap", "size", "offset")
                    or tuple(det.classes) != LESION_CLASSES or not det.score_thresholds):
                raise CardError(f"{det.tag} is not a lesion detector of {', '.join(LESION_CLASSES)} with "
                                "heatmap/size/offset outputs and per-class score thresholds")
        if self.quality_model is not None:
            check_quality_card(self.quality_model.card)

    @property
    def input_sizes(self) -> tuple[int, ...]:
        """The input sizes of the loaded models: grader, then detector and image-quality model when loaded."""
        return tuple(card.input.size for card in (
            self.grader_card, *(m.card for m in (self.detector, self.quality_model) if m is not None)))

    @property
    def _exact_sizes(self) -> frozenset[int]:
        """Input sizes whose crop must be :func:`~models.preprocess.crop_field`'s to the bit (not derived from a
        larger crop of the pyramid, up to 1 grey level off): those of models whose recipe amplifies contrast."""
        return frozenset(card.input.size for card in (
            self.grader_card, *(m.card for m in (self.detector, self.quality_model) if m is not None))
            if recipe_of(card).contrast)

    @property
    def decode_target(self) -> int:
        """The decode target for the loaded models (:func:`decode_target`): the finest of them gets the field
        at its input size or more."""
        return decode_target(self.input_sizes)

    @staticmethod
    def load_detector(path: Path, providers: list[str] | None = None, *, workers: int = 1) -> OnnxModel:
        """Verify a lesion detector or image-quality model (store directory or ``*.card.json``) and open a
        local session for it."""
        card, onnx = load_verified(path)
        return OnnxModel.load(card, onnx, providers, workers=workers)

    @classmethod
    def load(cls, grader: Path, providers: list[str] | None = None, limits: DecodeLimits | None = None,
             *, rules: QualityRules | None = None, referable_threshold: float | None = None, workers: int = 1,
             detector: Path | None = None, quality: Path | None = None) -> Analyzer:
        """Verify the grader (and the optional lesion ``detector``; each a store directory or a
        ``*.card.json``) against its card, then run it in a local ONNX Runtime session (``workers``: processes
        that share the cores). ``quality``: the optional image-quality model, verified the same way."""
        card, onnx = load_verified(grader)
        model = OnnxModel.load(card, onnx, providers, workers=workers)
        det = cls.load_detector(detector, providers, workers=workers) if detector is not None else None
        qual = cls.load_detector(quality, providers, workers=workers) if quality is not None else None
        return cls(grader_card=card, run_grader=model.run, provider=model.provider,
                   limits=limits or DecodeLimits(max_frames=DEFAULT_MAX_FRAMES), rules=rules or QualityRules(),
                   referable_threshold=referable_threshold, detector=det, quality_model=qual)

    def analyze(self, data: bytes | DicomInstance, *, request_id: str | None = None,
                laterality: str | None = None) -> Findings:
        """Analyse one upload (every frame, up to the decode limit); raises :class:`analysis.errors.FoveaError`
        subclasses for bad input. ``data``: the upload's bytes, or a DICOM instance a receiver already parsed
        (:func:`analysis.decode.read_dicom_instance`), which is not parsed again. ``laterality`` ("L"/"R",
        e.g. from a form field) is used when the file itself does not say; the file's own value wins."""
        request_id = request_id or uuid.uuid4().hex
        t0 = time.perf_counter()
        frames, first_field = self._decode(data)
        decode_ms = round(1000 * (time.perf_counter() - t0), 2)
        results = [self._analyze_image(img, request_id=request_id, frame=i, frames=len(frames),
                                       laterality=laterality, decode_ms=decode_ms if i == 0 else 0.0,
                                       field_=first_field if i == 0 else None)
                   for i, img in enumerate(frames)]
        first = results[0]
        if len(results) > 1:
            first = first.model_copy(update={"additional_frames": results[1:]})
        first.timing_ms["total"] = round(1000 * (time.perf_counter() - t0), 2)
        return first

    def _decode(self, data: bytes) -> tuple[list[DecodedImage], Field | None]:
        """Decode no finer than the loaded models need (:attr:`decode_target`: a large JPEG is decoded at reduced
        resolution, faster, and no model input differs). When the first frame came out reduced and its field has
        fewer pixels across than the finest input all the same (a field narrower than :data:`FIELD_FRACTION` of
        the frame), decode again at the reduction that gives the field that many. Returns the frames and the
        first frame's field when it was located here (``None`` otherwise)."""
        frames = decode(data, limits=self.limits, target=self.decode_target)
        first = frames[0]
        if first.scale == 1:
            return frames, None
        field_ = locate_field(first.rgb)
        finest = max((ANALYSIS_SIZE, *self.input_sizes))
        if 2.0 * field_[2] >= finest:
            return frames, field_
        diameter = 2.0 * field_[2] * first.scale  # in original pixels
        finer = math.ceil(finest * min(first.width, first.height) / max(diameter, 1.0))
        return decode(data, limits=self.limits, target=finer), None

    def analyze_study(self, uploads: Sequence[tuple[bytes, str | None]], *, request_id: str | None = None
                      ) -> StudyFindings:
        """Analyse the photographs of one patient's visit: ``uploads`` are ``(bytes, laterality or None)``
        pairs (the laterality from a form field, used when the file does not carry one). Every frame of every
        upload is one image. A bad upload fails the whole study with its position in the message (a partial
        screening result would be misleading)."""
        request_id = request_id or uuid.uuid4().hex
        t0 = time.perf_counter()
        images: list[Findings] = []
        notes: list[str] = []
        for n, (data, laterality) in enumerate(uploads, start=1):
            try:
                f = self.analyze(data, request_id=request_id, laterality=laterality)
            except FoveaError as exc:
                raise type(exc)(f"image {n} of {len(uploads)}: {exc.message}") from exc
            for g in (f, *f.additional_frames):
                if laterality and g.image.laterality_source == "dicom" and g.image.laterality != laterality:
                    notes.append(f"image {n}: the form said {laterality} but the DICOM header says "
                                 f"{g.image.laterality}; the header was used")
                images.append(g.model_copy(update={"additional_frames": []}))
        card = self.grader_card
        eyes = eye_results(images, fellow_eye=card.fellow_eye, classes=card.classes)
        return StudyFindings(
            request_id=request_id, disclaimer=self.disclaimer, images=images, eyes=eyes,
            patient=patient_result(images, eyes), notes=notes,
            timing_ms={"total": round(1000 * (time.perf_counter() - t0), 2)},
        )

    def _analyze_image(self, img: DecodedImage, *, request_id: str, frame: int, frames: int,
                       laterality: str | None, decode_ms: float, field_: Field | None = None) -> Findings:
        t0 = time.perf_counter()
        timing: dict[str, float] = {"decode": decode_ms}
        card = self.grader_card
        # One field location and one crop pyramid for every consumer (the gate's measures, the quality model,
        # the grader, the detector): the field square is cut once, and a crop that is an exact block mean of a
        # larger one is made from it (models.preprocess.crop_pyramid).
        field_ = field_ or locate_field(img.rgb)
        crops = crop_pyramid(img.rgb, (ANALYSIS_SIZE, *self.input_sizes), field=field_, exact=self._exact_sizes)
        crop_ms = 1000 * (time.perf_counter() - t0)
        # The detector and the gate need nothing from the grader: they run beside it (see STAGE_THREADS), the
        # detector first, as its boxes are drawn on the overlay before the gate's answer is needed.
        lesions_job = (self._stage(timing, "detection", self._detect, img, crops)
                       if self.detector is not None else None)
        quality_job = self._stage(timing, "quality", self._quality, crops)

        t = time.perf_counter()
        # The model's own recipe (its card's); the heatmap is drawn on the photograph through pre.transform.
        pre = from_crop(*crops[card.input.size], recipe=recipe_of(card))
        timing["preprocess"] = round(crop_ms + 1000 * (time.perf_counter() - t), 2)  # the pyramid is shared
        t = time.perf_counter()
        out = self.run_grader(pre.tensor[None])
        timing["inference"] = round(1000 * (time.perf_counter() - t), 2)

        t = time.perf_counter()
        probs = softmax(out["logits"][0])
        grade = int(grade_from(probs, card.grade_rule.cutpoints if card.grade_rule else None))
        target = saliency_target(grade, probs)
        # The maps are drawn at most RENDER_MAX_SIDE px on the long side, k decoded pixels per map pixel.
        k = render_factor(*img.rgb.shape[:2])
        heat = cam_to_heatmap(out["cam"][0, target], coarser(pre.transform, k))
        heat_u8 = heat_to_u8(heat)
        # An all-negative CAM (no evidence for the grade anywhere) leaves a blank heatmap; say so rather than
        # let a reader wonder whether the overlay failed.
        evidence = bool(heat_u8.max() > 0)
        picture = overlay(reduce_by(img.rgb, k), heat_u8, caption=saliency_caption(caption_for(card), target, evidence))
        heatmap_png = png_base64(heat_u8)
        render_ms = 1000 * (time.perf_counter() - t)
        lesions = lesions_job.result() if lesions_job is not None else None
        t = time.perf_counter()
        scale = img.scale * k
        if lesions:
            draw_lesions(picture, [(les.type, les.score, tuple(les.box)) for les in lesions], scale=scale)
        saliency = Saliency(target_grade=target, scale=scale, evidence=evidence, heatmap_png=heatmap_png,
                            overlay_png=png_base64(picture))
        timing["render"] = round(render_ms + 1000 * (time.perf_counter() - t), 2)
        quality = quality_job.result()

        lat, lat_source = (img.laterality, "dicom") if img.laterality else (laterality, "form" if laterality else None)
        timing["total"] = round(decode_ms + 1000 * (time.perf_counter() - t0), 2)
        timing = {name: timing[name] for name in TIMING_ORDER if name in timing}  # stages finish in any order
        return Findings(
            request_id=request_id,
            disclaimer=self.disclaimer,
            image=ImageInfo(source=img.source, width=img.width, height=img.height, laterality=lat,
                            laterality_source=lat_source, frame=frame, frames=frames, notes=list(img.notes),
                            sop_instance_uid=img.sop_instance_uid, study_instance_uid=img.study_instance_uid),
            quality=quality,
            dr_grade=DrGrade(grade=grade, label=card.classes[grade], probabilities=[float(p) for p in probs]),
            referable_dr=self._referable(probs, quality),
            lesions=lesions,
            saliency=saliency,
            models=self.model_refs(),
            timing_ms=timing,
        )

    def _stage(self, timing: dict[str, float], name: str, fn: Callable[..., T], *args: object) -> Future[T]:
        """Run ``fn(*args)`` as stage ``name`` (its milliseconds go to ``timing[name]``): on the stage threads
        when :attr:`concurrent_stages`, else here and now. Either way the result (or the exception) is the
        returned future's."""
        def timed() -> T:
            t = time.perf_counter()
            try:
                return fn(*args)
            finally:
                timing[name] = round(1000 * (time.perf_counter() - t), 2)

        if self.concurrent_stages:
            return _stage_pool().submit(timed)
        done: Future[T] = Future()
        try:
            done.set_result(timed())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future, as a thread would
            done.set_exception(exc)
        return done

    def _quality(self, crops: Crops) -> Quality:
        """The gate on the shared crops: the classic measures, refined by the image-quality model when loaded."""
        verdict = assess(measure_crop(crops[ANALYSIS_SIZE][0]), self.rules)
        if self.quality_model is None:
            return Quality(gradable=verdict.gradable, score=verdict.score, reasons=list(verdict.reasons),
                           method=QUALITY_METHOD, measures=verdict.measures.as_dict())
        qcard = self.quality_model.card
        q_in = from_crop(*crops[qcard.input.size], recipe=recipe_of(qcard)).tensor[None]
        return combine(self.quality_model.run(q_in)["probabilities"][0], qcard, verdict)

    def _detect(self, img: DecodedImage, crops: Crops) -> list[LesionFinding]:
        """The detector's lesions in its input (from the shared crops), boxes in original pixels (the decoded
        grid times ``img.scale``)."""
        assert self.detector is not None
        card = self.detector.card
        pre = from_crop(*crops[card.input.size], recipe=recipe_of(card))
        thresholds = {t.name: t.threshold for t in card.score_thresholds}
        (found,) = decode_lesions(self.detector.run(pre.tensor[None]), input_size=card.input.size,
                                  classes=card.classes, thresholds=thresholds)
        s = img.scale
        return [LesionFinding(type=les.type, score=round(float(les.score), 4),  # type: ignore[arg-type]
                              box=[round(v * s, 1) for v in les.box])
                for les in to_original(found, pre.transform)]

    @property
    def disclaimer(self) -> str:
        """What every result says about the served models: the grader's intended-use statement, then, for each
        other model trained on data with terms of its own (an image-quality model refitted on research-only
        photographs), which model and those terms — a result depends on all of them."""
        parts = [self.grader_card.intended_use]
        for model in (self.quality_model, self.detector):
            terms = model.card.training.data_terms if model is not None else None
            if model is not None and terms and terms not in parts[0]:
                parts.append(f"The {model.card.task} model {model.card.tag} was trained on data under these "
                             f"terms: {terms}.")
        return " ".join(parts)

    def served(self) -> list[tuple[ModelCard, str]]:
        """Every served model's verified card and execution provider: the grader, then the detector and the
        image-quality model when installed."""
        served = [(self.grader_card, self.provider_name)]
        served += [(m.card, m.provider) for m in (self.detector, self.quality_model) if m is not None]
        return served

    def model_refs(self) -> list[ModelRef]:
        """What each result records of the models that made it (name, version, sha256, provider, task)."""
        return [ModelRef(name=card.name, version=card.version, sha256=card.sha256, provider=provider, task=card.task)
                for card, provider in self.served()]

    def referable_operating_point(self) -> tuple[float, str] | None:
        """The referable-DR threshold in force and where it comes from (``"site configuration"`` or ``"model
        card"``); ``None`` when neither sets one."""
        if self.referable_threshold is not None:
            return self.referable_threshold, "site configuration"
        op = self.grader_card.operating_point("referable_dr")
        return (op.threshold, "model card") if op is not None else None

    def _referable(self, probs: np.ndarray, quality: Quality) -> ReferableDr | None:
        """Referable DR at the site's or the card's operating point; ``value`` null when ungradable."""
        point = self.referable_operating_point()
        if point is None:
            return None
        threshold, source = point
        p_ref = float(referable_probability(probs))
        if not quality.gradable:
            return ReferableDr(value=None, probability=p_ref, operating_point=threshold,
                               operating_point_source=source,
                               reason="insufficient image quality (" + ", ".join(quality.reasons)
                                      + "): re-photograph this eye, or refer per the programme's protocol")
        return ReferableDr(value=bool(is_referable(p_ref, threshold)), probability=p_ref, operating_point=threshold,
                           operating_point_source=source)
