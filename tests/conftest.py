"""Shared fixtures: tiny synthetic datasets and a tiny trained + exported grader (seconds, not minutes)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    # Keep every test's BentoML model store out of the user's ~/bentoml, and fresh per run: models a test
    # creates (the tiny grader) would otherwise clash with a changed one of the same tag on the next run.
    if "BENTOML_HOME" not in os.environ:
        home = tempfile.mkdtemp(prefix="fovea-test-bentoml-")
        os.environ["BENTOML_HOME"] = home
        config.add_cleanup(lambda: shutil.rmtree(home, ignore_errors=True))
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 synthetic 128-px photographs, all grades, EyePACS layout."""
    from datasets.synthetic.writer import generate

    root = tmp_path_factory.mktemp("synthetic") / "train"
    generate(root, count=20, seed=7, size=128)
    return root


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path) -> Path:
    """A grader config for a 64-px MobileNetV3-Small trained for one epoch on ``tiny_dataset``."""
    out = tmp_path_factory.mktemp("run")
    cfg = out / "tiny.yaml"
    cfg.write_text(
        "name: tiny-grader\nversion: 0.0.1\narchitecture: mobilenet_v3_small\ninput_size: 64\nepochs: 1\n"
        f"batch_size: 8\nout: {out / 'run'}\n"
        f"data: {{train: {tiny_dataset}, test: {tiny_dataset}, val_fraction: 0.3}}\n"
    )
    return cfg


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory: pytest.TempPathFactory, tiny_config: Path) -> Path:
    """Train + export the tiny grader; returns the folder holding ``tiny-grader.onnx`` and its card."""
    pytest.importorskip("torch", reason="training extras (torch) are not installed")
    from training.__main__ import main

    out = tmp_path_factory.mktemp("export")
    assert main(["train", "--config", str(tiny_config)]) == 0
    assert main(["export", "--config", str(tiny_config), "--out", str(out)]) == 0
    return out

#: The data description and terms of :func:`tiny_research_export` (as a real dataset's config states them).
TINY_RESEARCH_DATA = "tiny published fundus set"
TINY_RESEARCH_TERMS = "non-commercial research use only (test terms)"


@pytest.fixture(scope="session")
def tiny_research_run(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path) -> tuple[Path, Path]:
    """A grader as the real-photograph model is made, in miniature: ``tiny_dataset``'s photographs as a plain
    EyePACS folder (labels and images only: not the generator's output), ``preprocessing:
    fovea.fundus-contrast``, the data's description and terms, no test folder (the card is measured on the
    validation patients). Trained one epoch and exported; returns the config and the export folder holding
    ``tiny-research.onnx`` and its card."""
    pytest.importorskip("torch", reason="training extras (torch) are not installed")
    from training.__main__ import main

    root = tmp_path_factory.mktemp("research")
    plain = root / "eyepacs"
    plain.mkdir()
    shutil.copy(tiny_dataset / "trainLabels.csv", plain)
    for jpeg in tiny_dataset.glob("*.jpeg"):
        shutil.copy(jpeg, plain)
    cfg = root / "research.yaml"
    cfg.write_text(
        "name: tiny-research\nversion: 0.0.1-test\narchitecture: mobilenet_v3_small\ninput_size: 64\n"
        f"preprocessing: fovea.fundus-contrast\nepochs: 1\nbatch_size: 8\nout: {root / 'run'}\n"
        f"data: {{format: eyepacs, train: {plain}, val_fraction: 0.3, description: {TINY_RESEARCH_DATA}, "
        f"terms: {TINY_RESEARCH_TERMS}}}\n"
    )
    assert main(["train", "--config", str(cfg)]) == 0
    assert main(["export", "--config", str(cfg), "--out", str(root / "export")]) == 0
    return cfg, root / "export"


@pytest.fixture(scope="session")
def tiny_research_export(tiny_research_run: tuple[Path, Path]) -> Path:
    """The export folder of :func:`tiny_research_run`."""
    return tiny_research_run[1]


@pytest.fixture(scope="session")
def tiny_detector_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Train one epoch of a 128-px lesion detector on 12 synthetic photographs and export it; returns the
    config and the folder holding ``tiny-detector.onnx`` and its card."""
    pytest.importorskip("torch", reason="training extras (torch) are not installed")
    from datasets.synthetic.writer import generate
    from training.__main__ import main

    root = tmp_path_factory.mktemp("lesions")
    generate(root / "data", count=12, seed=5, size=192, progress=False)
    cfg = root / "det.yaml"
    cfg.write_text("task: lesion-detection\nname: tiny-detector\nversion: 0.0.1\narchitecture: centernet_mnv3_small\n"
                   "input_size: 128\ntrain_crop: 96\nnum_classes: 4\ndropout: 0.0\nepochs: 1\nbatch_size: 4\n"
                   f"out: {root / 'run'}\n"
                   f"data: {{format: synthetic, train: {root / 'data'}, test: {root / 'data'}, val_fraction: 0.3}}\n")
    assert main(["train", "--config", str(cfg)]) == 0
    assert main(["export", "--config", str(cfg), "--out", str(root / "export")]) == 0
    return cfg, root / "export"


@pytest.fixture(scope="session")
def tiny_quality_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One epoch of a 96-px quality model on 16 synthetic photographs (60 % degraded), exported; returns the
    config and the folder holding ``tiny-quality.onnx`` and its card."""
    pytest.importorskip("torch", reason="training extras (torch) are not installed")
    from datasets.synthetic.writer import generate
    from training.__main__ import main

    root = tmp_path_factory.mktemp("quality")
    # Seed 3: the validation split (2 of 8 patients) holds gradable and ungradable photographs.
    generate(root / "data", count=16, seed=3, size=128, progress=False, p_degraded=0.6)
    cfg = root / "q.yaml"
    cfg.write_text("task: image-quality\nname: tiny-quality\nversion: 0.0.1\narchitecture: mobilenet_v3_small\n"
                   "input_size: 96\nnum_classes: 7\nepochs: 1\nbatch_size: 4\n"
                   f"out: {root / 'run'}\n"
                   f"data: {{format: synthetic, train: {root / 'data'}, test: {root / 'data'}, val_fraction: 0.3}}\n")
    assert main(["train", "--config", str(cfg)]) == 0
    assert main(["export", "--config", str(cfg), "--out", str(root / "export")]) == 0
    return cfg, root / "export"


# Real inputs: scikit-image's fundus photo and pydicom's bundled colour DICOMs.


@pytest.fixture(scope="session")
def retina_path() -> Path:
    """scikit-image's real fundus photograph (1411×1411 JPEG, a normal eye)."""
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (dev extra) is not installed")
    path = Path(skimage_data.__file__).parent / "retina.jpg"
    if not path.is_file():
        pytest.skip("this scikit-image build does not ship retina.jpg")
    return path


@pytest.fixture(scope="session")
def retina_png(tmp_path_factory: pytest.TempPathFactory, retina_path: Path) -> Path:
    """The same photo as a 700-px PNG."""
    img = cv2.imread(str(retina_path))
    out = tmp_path_factory.mktemp("png") / "retina.png"
    cv2.imwrite(str(out), cv2.resize(img, (700, 700), interpolation=cv2.INTER_AREA))
    return out


@pytest.fixture(scope="session")
def pydicom_files() -> Path:
    """pydicom's bundled test files (opened by path: the download helper would hang offline)."""
    import pydicom

    return Path(pydicom.__file__).parent / "data" / "test_files"


@pytest.fixture(scope="session")
def jpeg_dicom(pydicom_files: Path) -> Path:
    """A colour JPEG-baseline Secondary Capture."""
    path = pydicom_files / "SC_jpeg_no_color_transform.dcm"
    assert path.is_file()
    return path


@pytest.fixture()
def fundus_rgb() -> np.ndarray:
    """A small fundus-like RGB image (orange disc on black)."""
    img = np.zeros((300, 400, 3), np.uint8)
    cv2.circle(img, (200, 150), 140, (200, 90, 40), -1, cv2.LINE_AA)
    cv2.circle(img, (260, 150), 18, (250, 230, 170), -1, cv2.LINE_AA)
    return img


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Under CI (``CI=true``) a skipped test is a failure: CI installs every tool and extra the suite needs,
    so a skip there means something is missing, and it must not pass silently. On a user's machine a skip
    keeps its reason (e.g. "scikit-image is not installed")."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI", "").lower() == "true" and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which must have every tool installed: {reason}"


@pytest.fixture(scope="session")
def lesioned_retina(tmp_path_factory: pytest.TempPathFactory, retina_path: Path) -> Path:
    """The real photograph with 25 dark-red blots and 15 yellow spots painted on (haemorrhage- and
    exudate-like): the grader finds evidence of DR in it, so its heatmap is not blank."""
    img = cv2.imread(str(retina_path))
    rng = np.random.default_rng(0)
    for _ in range(25):
        x, y = rng.integers(350, 1100, 2)
        cv2.circle(img, (int(x), int(y)), int(rng.integers(6, 16)), (20, 20, 110), -1, cv2.LINE_AA)
    for _ in range(15):
        x, y = rng.integers(400, 1000, 2)
        cv2.circle(img, (int(x), int(y)), int(rng.integers(4, 9)), (120, 230, 240), -1, cv2.LINE_AA)
    out = tmp_path_factory.mktemp("lesioned") / "retina-lesioned.jpg"
    cv2.imwrite(str(out), img)
    return out
