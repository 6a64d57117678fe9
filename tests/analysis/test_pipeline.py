"""analysis.pipeline: one analysis on real files (JPEG, PNG, DICOM) with a tiny exported grader."""

from __future__ import annotations

import base64
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from analysis.errors import FoveaError, UnsupportedMediaType
from models.grading import softmax
from analysis.decode import DecodeLimits
from models.card import ModelCard
from analysis.pipeline import Analyzer, saliency_target


@pytest.fixture(scope="module")
def analyzer(tiny_export: Path) -> Analyzer:
    return Analyzer.load(tiny_export / "tiny-grader.card.json")


def _png_size(b64: str) -> tuple[int, int]:
    img = cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_UNCHANGED)
    return img.shape[1], img.shape[0]


@pytest.mark.parametrize("fixture", ["retina_path", "retina_png", "jpeg_dicom"])
def test_analyze_real_files(analyzer: Analyzer, fixture: str, request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(fixture)
    f = analyzer.analyze(path.read_bytes(), request_id="r1")
    assert f.request_id == "r1"
    assert sum(f.dr_grade.probabilities) == pytest.approx(1.0, abs=1e-6)
    assert f.dr_grade.label == analyzer.grader_card.classes[f.dr_grade.grade]
    scale = f.saliency.scale
    size = (math.ceil(f.image.width / scale), math.ceil(f.image.height / scale))
    assert _png_size(f.saliency.overlay_png) == size and _png_size(f.saliency.heatmap_png) == size
    assert f.models[0].sha256 == analyzer.grader_card.sha256 and f.models[0].provider == "CPUExecutionProvider"
    assert {"decode", "quality", "preprocess", "inference", "render", "total"} <= set(f.timing_ms)
    assert f.referable_dr is not None
    if f.quality.gradable:  # the DICOM test file is not a fundus photograph: the gate may reject it
        assert f.referable_dr.value == (f.referable_dr.probability >= f.referable_dr.operating_point)
    else:
        assert f.referable_dr.value is None and f.quality.reasons
    assert "synthetic" in f.disclaimer
    dumped = f.model_dump(mode="json")
    assert dumped["lesions"] is None  # no detector loaded: null ("not assessed"), never an empty placeholder
    assert dumped["quality"]["method"].startswith("classic measures")


def test_large_photo_is_analysed_at_reduced_resolution(analyzer: Analyzer, retina_path: Path) -> None:
    rgb = cv2.imread(str(retina_path))
    big = cv2.imencode(".jpg", cv2.resize(rgb, (2822, 2822)), [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
    f = analyzer.analyze(big)
    assert (f.image.width, f.image.height) == (2822, 2822)
    assert f.saliency.scale == 4.0 and _png_size(f.saliency.heatmap_png) == (706, 706)
    full = analyzer.analyze(retina_path.read_bytes())
    # The model sees (almost) the same pixels either way: same grade, close probabilities.
    assert f.dr_grade.grade == full.dr_grade.grade
    assert np.abs(np.subtract(f.dr_grade.probabilities, full.dr_grade.probabilities)).max() < 0.05


def test_source_is_sniffed_not_named(analyzer: Analyzer, retina_path: Path, jpeg_dicom: Path) -> None:
    assert analyzer.analyze(retina_path.read_bytes()).image.source == "jpeg"
    assert analyzer.analyze(jpeg_dicom.read_bytes()).image.source == "dicom"


def test_bad_input_raises_typed_errors(analyzer: Analyzer) -> None:
    with pytest.raises(UnsupportedMediaType):
        analyzer.analyze(b"hello, this is not an image")
    with pytest.raises(FoveaError):
        analyzer.analyze(b"\xff\xd8\xff\xe0" + b"\0" * 40)


def test_softmax_and_saliency_target() -> None:
    p = softmax(np.array([1000.0, 0.0, -1000.0, 0.0, 0.0]))
    assert np.isfinite(p).all() and p.sum() == pytest.approx(1.0)
    assert saliency_target(3, np.array([0.1, 0.1, 0.1, 0.6, 0.1])) == 3
    assert saliency_target(0, np.array([0.7, 0.05, 0.2, 0.04, 0.01])) == 2


def test_multi_frame_dicom_analyses_every_frame(analyzer: Analyzer, pydicom_files: Path) -> None:
    f = analyzer.analyze((pydicom_files / "SC_rgb_rle_2frame.dcm").read_bytes())
    assert f.image.source == "dicom" and (f.image.frame, f.image.frames) == (0, 2)
    assert [g.image.frame for g in f.additional_frames] == [1]
    assert f.additional_frames[0].image.sop_instance_uid == f.image.sop_instance_uid
    assert f.additional_frames[0].additional_frames == []


def test_frame_limit_is_a_setting(tiny_export: Path, pydicom_files: Path) -> None:
    one = Analyzer.load(tiny_export / "tiny-grader.card.json", limits=DecodeLimits(max_frames=1))
    f = one.analyze((pydicom_files / "SC_rgb_rle_2frame.dcm").read_bytes())
    assert f.additional_frames == [] and any("1 of 2 frames" in n for n in f.image.notes)


def test_laterality_from_the_form_unless_the_file_says(analyzer: Analyzer, retina_path: Path) -> None:
    f = analyzer.analyze(retina_path.read_bytes(), laterality="L")
    assert (f.image.laterality, f.image.laterality_source) == ("L", "form")
    assert analyzer.analyze(retina_path.read_bytes()).image.laterality is None


def test_ungradable_photo_has_no_referral_value(analyzer: Analyzer, retina_path: Path) -> None:
    rgb = cv2.imread(str(retina_path))
    dark = cv2.imencode(".png", (rgb * 0.15).astype(np.uint8))[1].tobytes()
    f = analyzer.analyze(dark)
    assert not f.quality.gradable and "underexposed" in f.quality.reasons
    assert f.referable_dr is not None and f.referable_dr.value is None
    assert "insufficient image quality" in (f.referable_dr.reason or "")


def test_site_operating_point_replaces_the_cards(tiny_export: Path, retina_path: Path) -> None:
    site = Analyzer.load(tiny_export / "tiny-grader.card.json", referable_threshold=0.0)
    r = site.analyze(retina_path.read_bytes()).referable_dr
    assert r is not None and r.value is True and r.operating_point == 0.0
    assert r.operating_point_source == "site configuration"
    with pytest.raises(ValueError, match="threshold"):
        Analyzer.load(tiny_export / "tiny-grader.card.json", referable_threshold=1.5)


def test_tampered_model_is_refused_before_a_session_exists(tiny_export: Path, tmp_path: Path) -> None:
    import shutil

    from models.card import CardError

    d = tmp_path / "m"
    shutil.copytree(tiny_export, d)
    (d / "tiny-grader.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(CardError, match="sha256"):
        Analyzer.load(d / "tiny-grader.card.json")


def test_detector_lesions_are_in_original_pixels(tiny_export: Path, tiny_detector_run: tuple[Path, Path],
                                                 retina_path: Path) -> None:
    _, det_dir = tiny_detector_run
    a = Analyzer.load(tiny_export / "tiny-grader.card.json", detector=det_dir / "tiny-detector.card.json")
    assert a.detector is not None
    det_card = a.detector.card
    s = det_card.input.size
    # Replace the (barely trained) network by known outputs: one haemorrhage centred in the model input,
    # a quarter of it wide. Everything after the network — thresholds, decoding, mapping — is the real code.
    h = s // 4
    heat = np.zeros((1, 4, h, h), np.float32)
    heat[0, 1, h // 2, h // 2] = 0.99
    size = np.zeros((1, 2, h, h), np.float32)
    size[0, :, h // 2, h // 2] = h / 4
    fake = {"heatmap": heat, "size": size, "offset": np.zeros((1, 2, h, h), np.float32)}
    object.__setattr__(a.detector, "run", lambda batch: fake)
    f = a.analyze(retina_path.read_bytes())
    assert f.lesions is not None and [les.type for les in f.lesions] == ["haemorrhage"]
    x0, y0, x1, y1 = f.lesions[0].box
    # The retina's field spans the 1411-px image: a centred box a quarter of the crop wide.
    assert (x0 + x1) / 2 == pytest.approx(705.5, abs=12) and (y0 + y1) / 2 == pytest.approx(705.5, abs=12)
    assert x1 - x0 == pytest.approx(1411 / 4, rel=0.05)
    assert [m.name for m in f.models] == [a.grader_card.name, det_card.name]
    assert "detection" in f.timing_ms


def test_a_grader_is_not_a_detector(tiny_export: Path) -> None:
    from models.card import CardError

    with pytest.raises(CardError, match="not a lesion detector"):
        Analyzer.load(tiny_export / "tiny-grader.card.json", detector=tiny_export / "tiny-grader.card.json")


def test_maps_of_a_large_lossless_photo_are_drawn_at_most_1024_px(analyzer: Analyzer, retina_path: Path) -> None:
    # A PNG is decoded at full size (no DCT scaling), so the cap is what keeps its overlay small.
    rgb = cv2.resize(cv2.imread(str(retina_path)), (2100, 1500))
    f = analyzer.analyze(cv2.imencode(".png", rgb, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes())
    assert (f.image.width, f.image.height) == (2100, 1500) and f.saliency.scale == 3.0
    assert _png_size(f.saliency.overlay_png) == _png_size(f.saliency.heatmap_png) == (700, 500)


def test_a_contrast_recipe_grader_gets_its_recipe_and_the_overlay_stays_on_the_photograph(
        tiny_research_export: Path, retina_png: Path) -> None:
    """The grader's input is its card's recipe (fovea.fundus-contrast: contrast-normalised, mean/std 0.5), not
    the disc crop; the overlay is still the photograph (where the heatmap is empty, its pixels are the
    photograph's, not the model's grey-surround view); the findings carry the card's research statement."""
    from models.preprocess import CONTRAST, DISC_CROP, locate_field, preprocess
    from analysis.decode import decode
    from analysis.quality import ANALYSIS_SIZE
    from analysis.render import CAPTION_RESEARCH, caption_for
    from tests.conftest import TINY_RESEARCH_TERMS

    a = Analyzer.load(tiny_research_export / "tiny-research.card.json")
    seen: list[np.ndarray] = []
    run = a.run_grader
    a.run_grader = lambda batch: (seen.append(batch.copy()), run(batch))[1]
    data = retina_png.read_bytes()
    f = a.analyze(data)
    size = a.grader_card.input.size
    (img,) = decode(data, limits=a.limits, target=max(size, ANALYSIS_SIZE))
    field = locate_field(img.rgb)
    expected = preprocess(img.rgb, size, field=field, recipe=CONTRAST).tensor[None]
    np.testing.assert_array_equal(seen[0], expected)
    assert not np.allclose(seen[0], preprocess(img.rgb, size, field=field, recipe=DISC_CROP).tensor[None])

    overlay = cv2.cvtColor(cv2.imdecode(np.frombuffer(base64.b64decode(f.saliency.overlay_png), np.uint8),
                                        cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    heat = cv2.imdecode(np.frombuffer(base64.b64decode(f.saliency.heatmap_png), np.uint8), cv2.IMREAD_UNCHANGED)
    assert f.saliency.scale == 1.0 and overlay.shape[:2] == img.rgb.shape[:2]
    cold = heat == 0
    assert cold.mean() > 0.1  # the dark surround at least
    diff = np.abs(overlay.astype(np.int16) - img.rgb.astype(np.int16)).max(axis=2)
    assert np.median(diff[cold]) == 0  # the photograph itself (only the caption band differs)
    assert caption_for(a.grader_card) == CAPTION_RESEARCH
    assert f.disclaimer == a.grader_card.intended_use and TINY_RESEARCH_TERMS in f.disclaimer
    assert f.disclaimer.startswith("Research use, not for clinical use") and "synthetic" not in f.disclaimer.lower()


def test_results_state_the_terms_of_every_served_model(tiny_export: Path, retina_path: Path) -> None:
    from models.store import DEFAULT_DIR

    quality_card = DEFAULT_DIR / "image-quality.card.json"
    terms = ModelCard.load(quality_card).training.data_terms
    assert terms  # the embedded quality model was refitted on research-only photographs
    plain = Analyzer.load(tiny_export / "tiny-grader.card.json")
    assert plain.disclaimer == plain.grader_card.intended_use
    with_quality = Analyzer.load(tiny_export / "tiny-grader.card.json", quality=quality_card)
    f = with_quality.analyze(retina_path.read_bytes())
    assert f.disclaimer.startswith(plain.grader_card.intended_use) and terms in f.disclaimer
    assert "image-quality" in f.disclaimer


def test_decode_target_keeps_the_field_at_the_finest_input() -> None:
    """The target is a shorter side: a field spanning FIELD_FRACTION of it still covers the finest input."""
    from analysis.decode import jpeg_reduction
    from analysis.pipeline import FIELD_FRACTION, decode_target
    from analysis.quality import ANALYSIS_SIZE

    assert decode_target([64]) == decode_target([]) == math.ceil(ANALYSIS_SIZE / FIELD_FRACTION)
    assert decode_target([224, 768, 256]) == math.ceil(768 / FIELD_FRACTION)
    with pytest.raises(ValueError):
        decode_target([768], field_fraction=0.0)
    target = decode_target([224, 768, 256])
    # Camera sizes and the detector's own 1024-px test photographs: the field is never upsampled for 768 px.
    reductions = {(w, h): jpeg_reduction(w, h, target) for w, h in
                  [(1024, 1024), (2592, 1944), (3888, 2592), (4928, 3264)]}
    assert reductions == {(1024, 1024): 1, (2592, 1944): 2, (3888, 2592): 2, (4928, 3264): 2}
    assert all(FIELD_FRACTION * min(size) / s >= 768 for size, s in reductions.items())


def test_every_loaded_model_sets_the_decode_target(tiny_export: Path) -> None:
    """A detector with a larger input raises the target; without one the grader and the quality model decide."""
    import dataclasses

    from analysis.pipeline import decode_target
    from models.store import DEFAULT_DIR

    grader = tiny_export / "tiny-grader.card.json"
    plain = Analyzer.load(grader)
    assert plain.input_sizes == (64,) and plain.decode_target == decode_target([64])
    with_detector = Analyzer.load(grader, detector=DEFAULT_DIR / "lesion-detector.card.json",
                                  quality=DEFAULT_DIR / "image-quality.card.json")
    det = ModelCard.load(DEFAULT_DIR / "lesion-detector.card.json").input.size
    assert with_detector.input_sizes == (64, det, 256)
    assert with_detector.decode_target == decode_target([det]) > plain.decode_target

    with_quality = Analyzer.load(grader, quality=DEFAULT_DIR / "image-quality.card.json")
    assert with_quality.decode_target == plain.decode_target  # 256 px: the gate's 512-px measures decide
    qm = with_quality.quality_model
    assert qm is not None
    big = qm.card.model_copy(update={"input": qm.card.input.model_copy(update={"size": 1000})})
    with_quality.quality_model = dataclasses.replace(qm, card=big)
    assert with_quality.decode_target == decode_target([1000])
    card = plain.grader_card
    fine_grader = Analyzer(grader_card=card.model_copy(update={"input": card.input.model_copy(update={"size": 900})}),
                           run_grader=plain.run_grader, provider="CPUExecutionProvider")
    assert fine_grader.decode_target == decode_target([900])


def _camera_jpeg(retina_path: Path, camera: tuple[int, int], field_side: int) -> bytes:
    """retina.jpg (its field spans the square) resized to ``field_side`` and centred in a black camera frame."""
    w, h = camera
    frame = np.zeros((h, w, 3), np.uint8)
    y0, x0 = (h - field_side) // 2, (w - field_side) // 2
    frame[y0:y0 + field_side, x0:x0 + field_side] = cv2.resize(cv2.imread(str(retina_path)), (field_side, field_side))
    return cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


@pytest.mark.parametrize(("field_side", "note"), [(2592, "decoded at 1/4 resolution"), (1000, None)])
def test_the_detector_gets_the_field_of_a_camera_photograph_at_its_input_size(
        tiny_export: Path, retina_path: Path, monkeypatch: pytest.MonkeyPatch, field_side: int, note: str | None
) -> None:
    """3888x2592 with the field across the frame's height: decoded at 1/4 (a 648-px field, enough for the
    default detector's 544 px; 0.2.0's 768 px needed 1/2); with a field of 1000 px (under FIELD_FRACTION of the
    frame) the 1/4 decode would leave it 250 px, so the photograph is decoded again at full size."""
    import analysis.pipeline as pipeline
    from models.store import DEFAULT_DIR

    a = Analyzer.load(tiny_export / "tiny-grader.card.json", detector=DEFAULT_DIR / "lesion-detector.card.json")
    fields: dict[int, float] = {}  # input size -> side of the field square its crop was resized from
    real = pipeline.crop_pyramid

    def spy(rgb: np.ndarray, sizes: tuple[int, ...], **kwargs: object):  # type: ignore[no-untyped-def]
        out = real(rgb, sizes, **kwargs)  # type: ignore[arg-type]
        fields.update({size: t.scale * size for size, (_, t) in out.items()})
        return out

    monkeypatch.setattr(pipeline, "crop_pyramid", spy)
    f = a.analyze(_camera_jpeg(retina_path, (3888, 2592), field_side))
    assert (f.image.width, f.image.height) == (3888, 2592) and f.lesions is not None
    assert [n.split(" (")[0] for n in f.image.notes if n.startswith("decoded at")] == ([note] if note else [])
    det = a.detector.card.input.size  # type: ignore[union-attr]
    assert fields[det] >= det  # the detector's crop is the field at its input size or finer, never upsampled


def test_the_shown_grade_follows_the_cards_grade_rule(analyzer: Analyzer, retina_path: Path) -> None:
    """Without a rule the most probable grade; with one, the cut-points on the expected grade (every probability
    is above 0, so cut-points just above 0 put any photograph at grade 4); the probabilities are the same."""
    from models.card import GradeRule
    from models.grading import expected_grade, grade_from

    plain = analyzer.analyze(retina_path.read_bytes())
    probs = np.array(plain.dr_grade.probabilities)
    assert plain.dr_grade.grade == int(np.argmax(probs))
    tiny = float(expected_grade(probs)) / 10
    rule = GradeRule(cutpoints=(tiny, 2 * tiny, 3 * tiny, 4 * tiny), chosen_on="test")
    ruled = Analyzer(grader_card=analyzer.grader_card.model_copy(update={"grade_rule": rule}),
                     run_grader=analyzer.run_grader, provider="CPUExecutionProvider")
    f = ruled.analyze(retina_path.read_bytes())
    assert f.dr_grade.grade == 4 == int(grade_from(probs, rule.cutpoints))
    assert f.dr_grade.probabilities == pytest.approx(plain.dr_grade.probabilities)
    assert f.dr_grade.label == ruled.grader_card.classes[4]


@pytest.mark.parametrize(("camera", "located_in"), [((3888, 2592), "decode"), ((1000, 800), "analysis")])
def test_the_field_is_located_once_and_cut_once_per_analysis(
        tiny_export: Path, retina_path: Path, monkeypatch: pytest.MonkeyPatch, camera: tuple[int, int],
        located_in: str) -> None:
    """Gate measures, quality model, grader and detector share one field location and one pyramid: the field is
    located once (while decoding a reduced JPEG, else in the analysis), its square cut once, nothing is cropped
    per model; each model gets its crop of that pyramid; the stage names stay."""
    import analysis.pipeline as pipeline
    import analysis.quality as quality
    import models.preprocess as pp
    from models.card import recipe_of
    from models.store import DEFAULT_DIR

    a = Analyzer.load(tiny_export / "tiny-grader.card.json", detector=DEFAULT_DIR / "lesion-detector.card.json",
                      quality=DEFAULT_DIR / "image-quality.card.json")
    calls: dict[str, int] = {"locate_field": 0, "crop_pyramid": 0, "square": 0}

    def counted(name: str, real):  # type: ignore[no-untyped-def]
        def f(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls[name] += 1
            return real(*args, **kwargs)
        return f

    def refused(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a per-model crop: the pyramid's crops are to be used")

    monkeypatch.setattr(pipeline, "locate_field", counted("locate_field", pipeline.locate_field))
    monkeypatch.setattr(pipeline, "crop_pyramid", counted("crop_pyramid", pipeline.crop_pyramid))
    monkeypatch.setattr(pp, "_padded_square", counted("square", pp._padded_square))
    for module in (pp, quality):
        monkeypatch.setattr(module, "crop_field", refused)
    monkeypatch.setattr(pp, "preprocess", refused)
    monkeypatch.setattr(pp, "locate_field", refused)  # only the analyzer's own call may locate

    inputs: dict[str, np.ndarray] = {}
    for name, model in (("quality", a.quality_model), ("detector", a.detector)):
        assert model is not None
        run = model.run
        object.__setattr__(model, "run", lambda batch, run=run, name=name: (inputs.__setitem__(name, batch), run(batch))[1])
    run_grader = a.run_grader
    a.run_grader = lambda batch: (inputs.__setitem__("grader", batch), run_grader(batch))[1]
    pyramids: list[dict[int, tuple[np.ndarray, object]]] = []
    counting = pipeline.crop_pyramid
    monkeypatch.setattr(pipeline, "crop_pyramid", lambda *args, **kw: (pyramids.append(r := counting(*args, **kw)), r)[1])

    f = a.analyze(_camera_jpeg(retina_path, camera, min(camera)))
    assert calls == {"locate_field": 1, "crop_pyramid": 1, "square": 1}
    assert any(n.startswith("decoded at") for n in f.image.notes) == (located_in == "decode")
    assert list(f.timing_ms) == ["decode", "quality", "preprocess", "inference", "detection", "render", "total"]
    (pyramid,) = pyramids
    assert sorted(pyramid) == sorted({512, 64, a.detector.card.input.size, 256})  # type: ignore[union-attr]
    for name, model in (("quality", a.quality_model), ("detector", a.detector)):
        card = model.card  # type: ignore[union-attr]
        np.testing.assert_array_equal(inputs[name], pp.from_crop(*pyramid[card.input.size],
                                                                 recipe=recipe_of(card)).tensor[None])
    card = a.grader_card
    np.testing.assert_array_equal(inputs["grader"], pp.from_crop(*pyramid[card.input.size],
                                                                 recipe=recipe_of(card)).tensor[None])


@pytest.mark.parametrize("shift", [-1e3, 0.0])
def test_a_blank_heatmap_says_there_is_no_evidence(analyzer: Analyzer, retina_path: Path, shift: float,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``saliency.evidence`` is false exactly when the target grade's CAM is negative everywhere (the heatmap
    is blank), as the default grader's map is for a healthy eye; true when any of the field has evidence."""
    run = analyzer.run_grader

    def shifted(x: np.ndarray) -> dict[str, np.ndarray]:
        out = dict(run(x))
        out["cam"] = out["cam"] - np.abs(out["cam"]).max() + 1e-3 + shift  # the peak is +1e-3, or all negative
        return out

    import analysis.pipeline as pipeline

    captions: list[str] = []
    real_overlay = pipeline.overlay
    monkeypatch.setattr(pipeline, "overlay", lambda *a, caption, **kw: (captions.append(caption),
                                                                        real_overlay(*a, caption=caption, **kw))[1])
    monkeypatch.setattr(analyzer, "run_grader", shifted)
    f = analyzer.analyze(retina_path.read_bytes())
    heat = cv2.imdecode(np.frombuffer(base64.b64decode(f.saliency.heatmap_png), np.uint8), cv2.IMREAD_UNCHANGED)
    assert f.saliency.evidence is (shift == 0.0)
    assert bool(heat.max() > 0) is f.saliency.evidence
    # The burned-in overlay (what a PACS shows in the Secondary Capture) says so too.
    note = f"no evidence found for grade {f.saliency.target_grade}"
    assert (note in captions[0]) is (not f.saliency.evidence)


@pytest.fixture(scope="module")
def default_analyzer() -> Analyzer:
    """Every default model ``make serve`` loads: the grader, the lesion detector and the image-quality model."""
    from models.store import DEFAULT_DIR

    return Analyzer.load(DEFAULT_DIR / "dr-grader.card.json", detector=DEFAULT_DIR / "lesion-detector.card.json",
                         quality=DEFAULT_DIR / "image-quality.card.json")


def _answer(f: object) -> dict[str, object]:
    d = f.model_dump()  # type: ignore[attr-defined]
    return {k: v for k, v in d.items() if k not in {"request_id", "timing_ms"}}


def test_concurrent_stages_give_the_sequential_answer(default_analyzer: Analyzer, lesioned_retina: Path) -> None:
    """The gate and the detector beside the grader change nothing in the answer, the PNGs included, and the
    timing keys keep their pipeline order whichever stage finishes first."""
    a = default_analyzer
    assert a.concurrent_stages is True
    data = lesioned_retina.read_bytes()
    together = [a.analyze(data) for _ in range(3)]
    a.concurrent_stages = False
    try:
        alone = a.analyze(data)
    finally:
        a.concurrent_stages = True
    assert alone.lesions, "the painted lesions should be found, or the comparison proves little"
    for f in together:
        assert _answer(f) == _answer(alone)
        assert list(f.timing_ms) == ["decode", "quality", "preprocess", "inference", "detection", "render", "total"]


@pytest.mark.parametrize("concurrent", [True, False])
def test_a_failing_stage_fails_the_analysis_in_either_mode(default_analyzer: Analyzer, retina_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch, concurrent: bool) -> None:
    a = default_analyzer

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("detector failed")

    monkeypatch.setattr(a, "_detect", broken)
    monkeypatch.setattr(a, "concurrent_stages", concurrent)
    with pytest.raises(RuntimeError, match="detector failed"):
        a.analyze(retina_path.read_bytes())
