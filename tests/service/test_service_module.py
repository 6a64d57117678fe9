"""service.service: the serving process never imports torch; bentofile lists exactly the serving deps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from tests.test_layout import RULES

REPO = Path(__file__).resolve().parents[2]


#: Modules the serving process may not load: what service/ may not import (tests/test_layout.py), at run time.
FORBIDDEN = RULES["service"]


def forbidden(modules: list[str]) -> list[str]:
    """The loaded modules that are, or sit inside, a :data:`FORBIDDEN` package."""
    return sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))


def test_the_check_catches_a_planted_torch_import() -> None:
    assert forbidden(["models.architectures.classifier", "torch._C", "training", "models.card", "torchmetrics",
                      "service.service", "bench.load"]) == ["bench.load", "models.architectures.classifier",
                                                            "torch._C", "training"]


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


def test_importing_the_serving_code_has_no_side_effects(tmp_path: Path) -> None:
    """Every module of analysis/ and service/ imports with definitions only: no settings read (an invalid
    setting does not fail the import), nothing written to the model store, BentoML's job store not replaced,
    no logger reconfigured. Building the service (``service.service.Fovea``) then does all of these."""
    code = (
        "import importlib, json, logging, pathlib, pkgutil, sys\n"
        "import analysis, service\n"
        "names = [m.name for pkg in (analysis, service) for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.')"
        " if not m.name.endswith('__main__')]\n"
        "for n in names: importlib.import_module(n)\n"
        "import _bentoml_impl.server.app as app\n"
        "home = pathlib.Path(sys.argv[1])\n"
        "print(json.dumps({'modules': len(names), 'store': app.Sqlite3Store.__module__,\n"
        "  'home': sorted(str(p.relative_to(home)) for p in home.rglob('*')) if home.exists() else [],\n"
        "  'filters': [type(f).__name__ for f in logging.getLogger('bentoml._internal.server.http_app').filters],\n"
        "  'pydicom_level': logging.getLogger('pydicom').level,\n"
        "  'multipart_level': logging.getLogger('python_multipart.multipart').level}))\n")
    home = tmp_path / "home"
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true",
           "FOVEA_MAX_UPLOAD_BYTES": "not a number"}
    r = subprocess.run([sys.executable, "-c", code, str(home)], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen["modules"] > 30
    assert seen["store"] == "_bentoml_impl.tasks.result"  # BentoML's own class: nothing patched
    assert not any(p.startswith("models") for p in seen["home"])
    assert seen["filters"] == [] and seen["multipart_level"] == 0
    assert seen["pydicom_level"] < 40  # pydicom sets its own WARNING; the log policy raises it to ERROR


def test_building_the_service_applies_the_settings(tmp_path: Path) -> None:
    code = ("import json, logging, service.service as s, _bentoml_impl.server.app as app\n"
            "svc = s.Fovea\n"
            "print(json.dumps({'name': svc.name, 'store': app.Sqlite3Store.__name__, 'same': s.Fovea is svc,\n"
            "  'filters': [type(f).__name__ for f in logging.getLogger('bentoml._internal.server.http_app').filters]}))")
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "true"}
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {
        "name": "fovea", "store": "SealedTaskStore", "same": True, "filters": ["ClientErrorLogFilter"]}
    assert (tmp_path / "home" / "models" / "dr-grader").is_dir()  # the embedded defaults, imported on build

    bad = {**env, "FOVEA_MAX_UPLOAD_BYTES": "not a number"}
    r = subprocess.run([sys.executable, "-c", "import service.service as s; s.Fovea"], cwd=REPO, env=bad,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode != 0 and "invalid Fovea settings: max_upload_bytes" in r.stderr
