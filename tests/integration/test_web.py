"""The reader's web page (service/web/) in a real headless Chromium, against the real service.

Debian's ``chromium`` is driven by Playwright's Python package through ``executable_path`` (no browser is ever
downloaded). The page's answers are checked against the service's own JSON for the same file, so the test
follows the model rather than hard-coding its output. Screenshots go to ``test-artifacts/`` (git-ignored).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path(os.environ.get("FOVEA_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
EYES = {"R": "Right eye (OD)", "L": "Left eye (OS)"}
# Checked before any fixture runs, so a machine without the browser does not start the service for nothing.
pytestmark = [pytest.mark.integration, pytest.mark.skipif(
    not CHROMIUM.is_file(), reason=f"{CHROMIUM} missing: install Debian's chromium and chromium-driver (.ci/run does)")]


def _referral_words(value: bool | None) -> str:
    return {True: "Refer", False: "Do not refer", None: "Insufficient quality"}[value]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (dev extra) is not installed")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture()
def page(browser: Any, server: str) -> Iterator[Any]:
    """A fresh page on the service; fails the test on a script error, a CSP violation or any request that
    leaves the service's origin."""
    context = browser.new_context(base_url=server, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    # Chromium logs every 4xx response as a console error; those are the error test's point, not a fault.
    page.on("console", lambda m: problems.append(f"console: {m.text}")
            if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("request", lambda r: problems.append(f"external request: {r.url}")
            if not r.url.startswith((server, "data:", "blob:")) else None)
    page.set_default_timeout(30_000)
    try:
        yield page
    finally:
        context.close()
    assert not problems, problems


@pytest.fixture(scope="module")
def dark_retina(tmp_path_factory: pytest.TempPathFactory, retina_path: Path) -> Path:
    """The real photograph at 15 % exposure: the quality gate calls it ungradable (underexposed)."""
    out = tmp_path_factory.mktemp("dark") / "retina-dark.jpg"
    cv2.imwrite(str(out), (cv2.imread(str(retina_path)) * 0.15).astype(np.uint8))
    return out


def _shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def _pixels(png: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR).astype(np.int16)


def _open(page: Any) -> None:
    page.goto("/")
    # /info has answered: the footer names the model.
    page.locator("#models-footer strong").first.wait_for()


def _analyse(page: Any, files: list[Path]) -> None:
    page.set_input_files("#files", [str(f) for f in files])
    page.get_by_role("button", name="Analyse").click()


def test_single_photograph(page: Any, server: str, retina_path: Path) -> None:
    expected = httpx.post(f"{server}/analyze", files={"image": ("retina.jpg", retina_path.read_bytes(), "image/jpeg")},
                          timeout=60).json()
    _open(page)
    intended = page.locator("#intended-use")
    assert intended.is_visible() and "research use, not for clinical use" in intended.inner_text().lower()
    _analyse(page, [retina_path])
    card = page.locator("article.finding")
    card.wait_for()
    assert "Analysis finished" in page.locator("#status").inner_text()

    # What a reader reads: disclaimer, referral, quality, grade with probabilities, model.
    assert expected["disclaimer"] in card.locator(".warning").inner_text()
    assert "non-commercial research use only" in card.locator(".warning").inner_text().lower()
    assert card.locator(".verdict-title").inner_text().endswith(_referral_words(expected["referable_dr"]["value"]))
    quality = card.locator(".quality").inner_text()
    assert ("✓ Gradable" if expected["quality"]["gradable"] else "✗ Ungradable") in quality
    grade = expected["dr_grade"]
    assert card.locator(".grade").inner_text().startswith(f"Grade {grade['grade']} — {grade['label']}")
    bars = card.locator(".probs li")
    assert bars.count() == 5
    for i, p in enumerate(grade["probabilities"]):
        assert f"{100 * p:.1f}%" in bars.nth(i).inner_text()
    assert "predicted" in bars.nth(grade["grade"]).inner_text()
    model = expected["models"][0]
    details = card.locator(".details").inner_text()
    assert f"{model['name']} {model['version']}" in details and model["sha256"][:12] in details
    assert model["provider"] in details

    # The original photograph (from the file, not the service) under the coloured heatmap.
    photo = card.locator("img.photo")
    assert photo.get_attribute("src").startswith("blob:")
    assert photo.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [
        expected["image"]["width"], expected["image"]["height"]]
    card.locator("canvas.heat[data-ready=true]").wait_for(state="attached")
    # The page says when the grader found no evidence for the grade it explains (a blank heatmap).
    caption = card.locator("figcaption").inner_text()
    assert ("found no region of evidence" in caption) is (not expected["saliency"]["evidence"])
    _shot(page, "web-single.png")


def test_heatmap_toggle_and_opacity(page: Any, server: str, lesioned_retina: Path) -> None:
    """On a photograph where the grader finds evidence, the heatmap shows, hides and fades as the reader asks."""
    expected = httpx.post(f"{server}/analyze", files={"image": (lesioned_retina.name, lesioned_retina.read_bytes(),
                                                                "image/jpeg")}, timeout=60).json()
    assert expected["saliency"]["evidence"]
    _open(page)
    _analyse(page, [lesioned_retina])
    card = page.locator("article.finding")
    card.wait_for()
    assert "Photograph with the saliency heatmap" in card.locator("figcaption").inner_text()
    card.locator("canvas.heat[data-ready=true]").wait_for(state="attached")
    stack = card.locator(".stack")
    on_50 = _pixels(stack.screenshot())
    _shot(page, "web-heatmap.png")

    # The toggle (keyboard: Space) hides the heatmap; the photo alone differs from photo + heatmap.
    toggle = card.get_by_label("Show saliency overlay")
    toggle.focus()
    page.keyboard.press("Space")
    assert not toggle.is_checked() and card.locator("canvas.heat").is_hidden()
    off = _pixels(stack.screenshot())
    assert np.abs(on_50 - off).mean() > 1.0
    page.keyboard.press("Space")
    assert toggle.is_checked() and card.locator("canvas.heat").is_visible()

    # The opacity slider (keyboard: End / Home) changes how strongly the heatmap shows.
    slider = card.get_by_label("Overlay opacity")
    slider.focus()
    page.keyboard.press("End")
    assert slider.input_value() == "100" and card.locator("output").inner_text() == "100%"
    on_100 = _pixels(stack.screenshot())
    assert np.abs(on_100 - off).mean() > np.abs(on_50 - off).mean() + 1.0
    page.keyboard.press("Home")
    assert slider.input_value() == "0"
    assert np.abs(_pixels(stack.screenshot()) - off).mean() < 0.5


def test_lesion_boxes_are_drawn_when_present(page: Any, server: str, retina_path: Path) -> None:
    """``lesions`` is a future field: the page's request is answered with the service's real findings for the
    same photograph plus three boxes. (Playwright's ``route.fetch`` drops a file-upload body, so the handler
    posts the file itself.)"""
    lesions = [{"type": "microaneurysm", "score": 0.91, "box": [600, 500, 660, 560]},
               {"type": "microaneurysm", "score": 0.55, "box": [300, 800, 340, 840]},
               {"type": "hard_exudate", "score": 0.7, "box": [900, 650, 1000, 720]}]

    def add_lesions(route: Any) -> None:
        r = httpx.post(f"{server}/analyze", files={"image": ("retina.jpg", retina_path.read_bytes(), "image/jpeg")},
                       timeout=60)
        body = r.json()
        body["lesions"] = lesions
        route.fulfill(status=r.status_code, content_type="application/json", body=json.dumps(body))

    page.route("**/analyze", add_lesions)
    _open(page)
    _analyse(page, [retina_path])
    card = page.locator("article.finding")
    card.wait_for()
    legend = card.locator(".legend").inner_text()
    assert "Microaneurysm: 2 boxes (highest score 0.91)" in legend and "Hard exudate: 1 box" in legend
    boxes = card.locator("canvas.boxes")
    # The box outline is painted at its original-pixel corner; the inside stays clear.
    alpha = boxes.evaluate("c => { const d = c.getContext('2d'); return [d.getImageData(600, 530, 1, 1).data[3],"
                           " d.getImageData(630, 530, 1, 1).data[3]]; }")
    assert alpha[0] > 0 and alpha[1] == 0
    _shot(page, "web-lesions.png")
    card.get_by_label("Show lesion boxes").uncheck()
    assert boxes.is_hidden()


def test_dicom_shows_the_service_overlay(page: Any, jpeg_dicom: Path) -> None:
    _open(page)
    _analyse(page, [jpeg_dicom])
    card = page.locator("article.finding")
    card.wait_for()
    assert card.locator("img.photo").get_attribute("src").startswith("data:image/png;base64,")
    assert "cannot display DICOM" in card.locator(".viewer").inner_text()
    _shot(page, "web-dicom.png")


def test_invalid_upload_shows_the_error(page: Any, server: str, tmp_path: Path) -> None:
    _open(page)
    page.get_by_role("button", name="Analyse").click()
    assert "choose a photograph first" in page.locator("#error").inner_text()

    text = tmp_path / "notes.txt"
    text.write_text("this is not a photograph\n")
    expected = httpx.post(f"{server}/analyze", files={"image": ("notes.txt", text.read_bytes(), "text/plain")},
                          timeout=30).json()["error"]
    _analyse(page, [text])
    error = page.locator("#error")
    error.wait_for()
    page.get_by_text("Analysis failed.").wait_for()
    assert expected["message"] in error.inner_text() and expected["code"] in error.inner_text()
    assert page.locator("#results").is_hidden()
    _shot(page, "web-error.png")


def _study_on_the_page(page: Any, server: str, right: Path, left: Path) -> tuple[dict, Any]:
    """The API's answer for the two photographs (right, left), and the page's patient card after submitting the
    same two with those lateralities chosen in the form."""
    files = [right, left]
    expected = httpx.post(f"{server}/analyze_study", data={"laterality": "R,L"}, timeout=60,
                          files=[("images", (f.name, f.read_bytes())) for f in files]).json()
    _open(page)
    page.set_input_files("#files", [str(f) for f in files])
    page.get_by_label(right.name, exact=True).select_option("R")
    page.get_by_label(left.name, exact=True).select_option("L")
    page.get_by_role("button", name="Analyse").click()
    patient = page.locator("article.patient")
    patient.wait_for()
    return expected, patient


def test_both_eyes_gradable_show_the_fellow_eye_grade(page: Any, server: str, retina_path: Path,
                                                      lesioned_retina: Path) -> None:
    """Both eyes gradable: the per-eye table says the other eye's photograph informed each grade, with its
    weight, and shows the photograph's own grade beside any grade it changed."""
    expected, patient = _study_on_the_page(page, server, retina_path, lesioned_retina)
    eyes = expected["eyes"]
    assert all(e["gradable"] and e["fellow_eye_weight"] is not None for e in eyes)
    assert f"other eye's photograph weighing {eyes[0]['fellow_eye_weight']}" in patient.locator("caption").inner_text()
    for row, eye in zip(patient.locator("tbody tr").all(), eyes, strict=True):
        grade = row.locator("td").nth(2).inner_text()
        alone = f" (photograph alone: {eye['photograph_grade']})" if eye["photograph_grade"] != eye["dr_grade"] else ""
        assert grade == f"{eye['dr_grade']} — {eye['label']}{alone}"


def test_two_photograph_study(page: Any, server: str, retina_path: Path, dark_retina: Path) -> None:
    """Right eye: the real photograph; left eye: the same underexposed, so the patient outcome must say
    insufficient quality, and the left eye's card must say why."""
    expected, patient = _study_on_the_page(page, server, retina_path, dark_retina)
    assert [f["quality"]["gradable"] for f in expected["images"]] == [True, False]

    outcome = expected["patient"]
    assert patient.locator(".verdict-title").inner_text().endswith(_referral_words(outcome["referable"]))
    assert outcome["reason"].lower() in patient.locator(".verdict").inner_text().lower()
    assert "research use, not for clinical use" in patient.locator(".warning").inner_text().lower()
    rows = patient.locator("tbody tr")
    assert rows.count() == len(expected["eyes"]) == 2
    for row, eye in zip(rows.all(), expected["eyes"], strict=True):
        cells = row.locator("th, td").all_inner_texts()
        assert cells[0] == EYES[eye["laterality"]]
        assert cells[2] == ("Gradable" if eye["gradable"] else "Ungradable")
        assert cells[3] == (f"{eye['dr_grade']} — {eye['label']}" if eye["dr_grade"] is not None else "—")
        assert cells[4] == _referral_words(eye["referable"])
    cards = page.locator("article.finding")
    assert cards.count() == 2
    for card, f, side in zip(cards.all(), expected["images"], "RL", strict=True):
        assert EYES[side] in card.locator("h3").inner_text()
        assert card.locator(".verdict-title").inner_text().endswith(_referral_words(f["referable_dr"]["value"]))
        assert card.locator(".grade").inner_text().startswith(f"Grade {f['dr_grade']['grade']}")
        assert card.locator("img.photo").get_attribute("src").startswith("blob:")
    assert "other eye" not in patient.locator("caption").inner_text()  # one eye gradable: no fellow-eye grade
    dark = cards.nth(1)
    assert "✗ Ungradable" in dark.locator(".quality").inner_text()
    assert "too dark (underexposed)" in dark.locator(".reasons").inner_text()
    assert "re-photograph this eye" in dark.locator(".verdict").inner_text()
    # Every control a reader can reach has a label.
    unlabelled = page.evaluate("() => [...document.querySelectorAll('input, select')]"
                               ".filter(e => !e.labels || e.labels.length === 0).map(e => e.outerHTML)")
    assert unlabelled == []
    _shot(page, "web-study.png")


#: Routes a person opens in a browser; :func:`_html_routes` adds every other GET route that answers HTML.
PAGE_ROUTES = ("/", "/index.html", "/docs")
#: BentoML's own GET routes that are not in the OpenAPI document.
FRAMEWORK_ROUTES = ("/healthz", "/livez", "/readyz", "/metrics", "/docs.json", "/schema.json",
                    "/static_content/index.css")


def _html_routes(server: str) -> list[str]:
    """Every GET route of the running service that answers HTML (ours and whatever BentoML adds)."""
    spec = httpx.get(f"{server}/docs.json", timeout=30).json()
    candidates = {*PAGE_ROUTES, *FRAMEWORK_ROUTES,
                  *(path for path, ops in spec["paths"].items() if "get" in ops and "{" not in path)}
    return sorted(p for p in candidates
                  if httpx.get(f"{server}{p}", timeout=30).headers.get("content-type", "").startswith("text/html"))


def test_every_page_the_service_serves_stays_on_its_origin(page: Any, server: str) -> None:
    """Each HTML route, loaded in Chromium until the network is idle: a Content-Security-Policy on the answer,
    and (the ``page`` fixture) no request to another origin, no script error, no CSP violation."""
    routes = _html_routes(server)
    assert set(PAGE_ROUTES) <= set(routes), routes
    for route in routes:
        response = page.goto(route, wait_until="networkidle")
        assert response is not None and response.ok, route
        assert "default-src 'self'" in response.headers.get("content-security-policy", ""), route
    page.goto("/docs", wait_until="networkidle")
    # The API page works from local assets: Swagger UI has rendered the service's own operations.
    page.locator(".opblock-summary-path", has_text="/analyze").first.wait_for()
    assert "googletagmanager" not in page.content()
    _shot(page, "docs.png")
