"""`bentoml build` packages the service from bentofile.yaml, offline, with the default model and no torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def test_bentoml_build(tmp_path: Path) -> None:
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "true"}
    r = subprocess.run([sys.executable, "-m", "bentoml", "build", "--output", "tag"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (bento_dir,) = (tmp_path / "home" / "bentos" / "fovea").glob("*/")
    info = yaml.safe_load((bento_dir / "bento.yaml").read_text())
    assert [m["tag"].split(":")[0] for m in info["services"][0]["models"]] == ["dr-grader"]
    src = {p.relative_to(bento_dir / "src").as_posix() for p in (bento_dir / "src").rglob("*") if p.is_file()}
    assert {"service/service.py", "models/preprocess.py", "models/default/dr-grader.onnx", "service/web/index.html",
            "service/web/app.js", "service/web/style.css"} <= src
    assert not any(p.startswith(("training/", "models/architectures/", "tests/")) for p in src)
    reqs = (bento_dir / "env" / "python" / "requirements.txt").read_text()
    assert "onnxruntime" in reqs and "torch" not in reqs
