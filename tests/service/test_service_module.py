"""service.service: the serving process never imports torch; bentofile lists exactly the serving deps."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_service_import_does_not_load_torch(tmp_path: Path) -> None:
    code = ("import sys, service.service; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'torchvision', 'models.architectures', 'training')]; print(bad); sys.exit(1 if bad else 0)")
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "true"}
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]


def test_bentofile_packages_are_the_serving_dependencies() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    bento = yaml.safe_load((REPO / "bentofile.yaml").read_text())["python"]["packages"]
    assert sorted(bento) == sorted(deps)
    assert not any(d.startswith(("torch", "torchvision")) for d in deps)
