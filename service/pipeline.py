"""One analysis: bytes → decode → preprocess → grader (logits + CAM) → findings + saliency.

This module holds the logic; ``service/service.py`` only adapts it to HTTP.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.card import CardError, ModelCard
from models.grading import is_referable, referable_probability, softmax
from models.preprocess import preprocess
from models.store import load_verified
from service.decode import DecodedImage, DecodeLimits, decode
from service.findings import DrGrade, Findings, ImageInfo, ModelRef, ReferableDr, Saliency
from service.render import caption_for, cam_to_heatmap, heat_to_u8, overlay, png_base64
from service.runtime import OnnxModel

def saliency_target(grade: int, probs: np.ndarray) -> int:
    """The grade whose evidence the heatmap shows: the predicted grade if it is a DR grade; for a "No DR"
    prediction, the most probable DR grade — a reader wants to see what *could* be disease."""
    return grade if grade > 0 else 1 + int(np.argmax(probs[1:]))


@dataclass
class Analyzer:
    """Holds the verified models; :meth:`analyze` is thread-safe (ONNX Runtime sessions are)."""

    grader: OnnxModel
    # One frame is analysed per upload for now, so only one is decoded (a note says if there were more).
    limits: DecodeLimits = field(default_factory=lambda: DecodeLimits(max_frames=1))

    @classmethod
    def load(cls, grader: Path, providers: list[str] | None = None, limits: DecodeLimits | None = None) -> Analyzer:
        """Verify each model (a store directory or a ``*.card.json``) against its card, then create sessions."""
        card, onnx = load_verified(grader)
        if card.task != "dr-grading" or tuple(card.outputs) != ("logits", "cam") or len(card.classes) != 5:
            raise CardError(f"{card.tag} is not a five-grade ICDR grader with in-graph CAM")
        model = OnnxModel.load(card, onnx, providers)
        return cls(grader=model) if limits is None else cls(grader=model, limits=limits)

    @property
    def grader_card(self) -> ModelCard:
        return self.grader.card

    def analyze(self, data: bytes, *, request_id: str | None = None) -> Findings:
        """Analyse one upload; raises :class:`service.errors.FoveaError` subclasses for bad input."""
        t0 = time.perf_counter()
        timing: dict[str, float] = {}

        def lap(name: str, since: float) -> float:
            now = time.perf_counter()
            timing[name] = round(1000 * (now - since), 2)
            return now

        frames = decode(data, limits=self.limits)
        t = lap("decode", t0)
        img: DecodedImage = frames[0]
        card = self.grader.card
        pre = preprocess(img.rgb, card.input.size)
        t = lap("preprocess", t)
        out = self.grader.run(pre.tensor[None])
        t = lap("inference", t)

        probs = softmax(out["logits"][0])
        grade = int(np.argmax(probs))
        target = saliency_target(grade, probs)
        heat = cam_to_heatmap(out["cam"][0, target], pre.transform)
        heat_u8 = heat_to_u8(heat)
        saliency = Saliency(target_grade=target, heatmap_png=png_base64(heat_u8),
                            overlay_png=png_base64(overlay(img.rgb, heat_u8, caption=caption_for(card))))
        t = lap("render", t)

        referable = None
        op = card.operating_point("referable_dr")
        if op is not None:
            p_ref = float(referable_probability(probs))
            referable = ReferableDr(value=bool(is_referable(p_ref, op.threshold)), probability=p_ref,
                                    operating_point=op.threshold)
        timing["total"] = round(1000 * (time.perf_counter() - t0), 2)
        return Findings(
            request_id=request_id or uuid.uuid4().hex,
            disclaimer=card.intended_use,
            image=ImageInfo(source=img.source, width=img.width, height=img.height, laterality=img.laterality,
                            notes=list(img.notes), sop_instance_uid=img.sop_instance_uid,
                            study_instance_uid=img.study_instance_uid),
            dr_grade=DrGrade(grade=grade, label=card.classes[grade], probabilities=[float(p) for p in probs]),
            referable_dr=referable,
            saliency=saliency,
            models=[ModelRef(name=card.name, version=card.version, sha256=card.sha256, provider=self.grader.provider)],
            timing_ms=timing,
        )
