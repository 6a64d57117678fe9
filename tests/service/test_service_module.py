"""service.service: the serving process never imports torch; bentofile lists exactly the serving deps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


#: Modules the serving process may not load: torch and everything that needs it.
FORBIDDEN = ("torch", "torchvision", "training", "models.architectures")


def forbidden(modules: list[str]) -> list[str]:
    """The loaded modules that are, or sit inside, a :data:`FORBIDDEN` package."""
    return sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))


def test_the_check_catches_a_planted_torch_import() -> None:
    assert forbidden(["models.architectures.classifier", "torch._C", "training", "models.card", "torchmetrics",
                      "service.service"]) == ["models.architectures.classifier", "torch._C", "training"]


def test_service_import_does_not_load_torch(tmp_path: Path) -> None:
    code = "import json, sys, service.service; print(json.dumps(sorted(sys.modules)))"
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "true"}
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert forbidden(json.loads(r.stdout.strip().splitlines()[-1])) == []


def test_bentofile_packages_are_the_serving_dependencies() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    bento = yaml.safe_load((REPO / "bentofile.yaml").read_text())["python"]["packages"]
    assert sorted(bento) == sorted(deps)
    assert not any(d.startswith(("torch", "torchvision")) for d in deps)
