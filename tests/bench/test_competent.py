"""bench.competent: the competent torch stack decodes in draft mode, follows the card's recipe, grades as ONNX
Runtime does on the same weights, and writes both PNGs at most 1024 px."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("pytorch_grad_cam", reason="grad-cam (dev extra) is not installed")

import onnxruntime as ort  # noqa: E402
from PIL import Image  # noqa: E402

from bench.competent import RENDER_MAX_SIDE, STAGES, CompetentStack, decode  # noqa: E402
from bench.onnx_torch import torch_grader  # noqa: E402
from models.card import ModelCard, recipe_of  # noqa: E402
from models.grading import grade_from, softmax  # noqa: E402
from models.preprocess import preprocess  # noqa: E402


def _load(folder: Path, stem: str) -> tuple[ModelCard, bytes]:
    card = ModelCard.load(folder / f"{stem}.card.json")
    return card, (folder / card.file).read_bytes()


def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _png_array(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


@pytest.fixture(scope="module")
def research(tiny_research_export: Path) -> tuple[ModelCard, bytes]:
    """A tiny grader with the ``fovea.fundus-contrast`` recipe (the default grader's)."""
    return _load(tiny_research_export, "tiny-research")


def test_jpeg_draft_mode_decodes_reduced_but_not_below_1024() -> None:
    big = _jpeg(np.full((3000, 4200, 3), 90, np.uint8))
    assert decode(big).shape == (1500, 2100, 3)  # 1/2 scale: 1/4 (750 px) would be below 1024
    small = _jpeg(np.full((600, 700, 3), 90, np.uint8))
    assert decode(small).shape == (600, 700, 3)


def test_grade_equals_onnx_on_the_same_weights_and_both_pngs_are_written(
        research: tuple[ModelCard, bytes], retina_path: Path) -> None:
    card, onnx_bytes = research
    assert recipe_of(card).contrast  # the recipe the default grader names
    stack = CompetentStack(torch_grader(onnx_bytes, card.architecture, len(card.classes)), card, threads=1)
    data = retina_path.read_bytes()
    r = stack.run(data)
    assert list(r.timing_ms) == list(STAGES) and all(v >= 0 for v in r.timing_ms.values())
    # The model input is the card's recipe (crop + contrast normalisation) on the decoded photograph.
    ref = preprocess(decode(data), card.input.size, recipe=recipe_of(card)).tensor[None]
    np.testing.assert_allclose(r.tensor, ref, atol=1e-6)
    # The grade is ONNX Runtime's on the same input and weights, through the card's grade rule.
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    probs = softmax(sess.run(["logits"], {sess.get_inputs()[0].name: r.tensor})[0][0])
    np.testing.assert_allclose(r.probabilities, probs, atol=1e-4)
    assert r.grade == int(grade_from(probs, card.grade_rule.cutpoints if card.grade_rule else None))
    heat, picture = _png_array(r.heatmap_png), _png_array(r.overlay_png)
    assert heat.ndim == 2 and picture.ndim == 3 and heat.shape == picture.shape[:2]
    assert max(picture.shape[:2]) <= RENDER_MAX_SIDE and heat.max() > 0


def test_the_map_lands_on_the_field_of_a_large_photograph(research: tuple[ModelCard, bytes]) -> None:
    from datasets.synthetic.fundus import render_fundus

    card, onnx_bytes = research
    stack = CompetentStack(torch_grader(onnx_bytes, card.architecture, len(card.classes)), card, threads=1)
    rgb = render_fundus(np.random.default_rng(1), grade=2, laterality="R", size=(2400, 1600)).image
    r = stack.run(_jpeg(rgb))
    heat = _png_array(r.heatmap_png)
    assert heat.shape == (683, 1024)  # 2400x1600 decoded in full (1/2 would be 800 px), shown at 1024 px
    # The field is centred: the heat lies inside the field's bounding square, nothing in the side margins.
    cols = np.flatnonzero(heat.max(axis=0) > 0)
    assert cols.min() >= (1024 - 683) // 2 - 8 and cols.max() <= (1024 + 683) // 2 + 8


def test_the_cards_grade_rule_decides_the_grade(research: tuple[ModelCard, bytes], retina_path: Path) -> None:
    from models.card import GradeRule

    card, onnx_bytes = research
    # Cut-points this low put any expected grade above the last one: grade 4, whatever the most probable grade.
    ruled = card.model_copy(update={"grade_rule": GradeRule(cutpoints=(1e-4, 2e-4, 3e-4, 4e-4), chosen_on="test")})
    stack = CompetentStack(torch_grader(onnx_bytes, card.architecture, len(card.classes)), ruled, threads=1)
    r = stack.run(retina_path.read_bytes())
    assert r.grade == 4 and r.target == 4
    assert int(np.argmax(r.probabilities)) != 4  # so the rule, not the argmax, gave it
