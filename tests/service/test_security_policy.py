"""Repository-wide security rules of the serving code (SECURITY.md): no forced DICOM parsing, no pickle, and
dependency floors above the known CVEs."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SERVICE = sorted((REPO / "service").rglob("*.py")) + sorted((REPO / "analysis").rglob("*.py"))


def _code(path: Path) -> str:
    """Source without comments and docstring-ish lines that merely mention the words."""
    return "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())


def forced_reads(source: str) -> list[int]:
    """Line numbers of every call that passes ``force=`` anything but a literal ``False`` (``dcmread``,
    ``pydicom.dcmread``, ``read_file``, ``Dataset``-level helpers alike: any call at all may not force)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg == "force" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    lines.append(node.lineno)
    return lines


def test_the_force_check_catches_every_call_form() -> None:
    planted = ("ds = dcmread(BytesIO(data), force=True)\n"
               "ds = pydicom.dcmread(\n    io.BytesIO(b), stop_before_pixels=True, force=True)\n"
               "ds = dcmread(fp, force=flag)\n"
               "ds = dcmread(fp, force=False)\n")
    assert forced_reads(planted) == [1, 2, 4]


def test_dicom_is_never_read_with_force_true() -> None:
    offenders = {p.relative_to(REPO).as_posix(): lines for p in SERVICE if (lines := forced_reads(p.read_text()))}
    assert offenders == {}


def test_no_pickle_in_the_serving_path() -> None:
    offenders = [p.name for p in SERVICE if re.search(r"^\s*(import|from)\s+(c?pickle|dill|cloudpickle|joblib)\b",
                                                       _code(p), re.M)]
    assert offenders == []


def _floor(spec: str) -> tuple[int, ...]:
    match = re.search(r">=\s*([0-9.]+)", spec)
    assert match, spec
    return tuple(int(x) for x in match.group(1).split("."))


def test_dependency_floors_are_above_the_fixed_cves() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    bento = yaml.safe_load((REPO / "bentofile.yaml").read_text())["python"]["packages"]
    for specs in (deps, bento):
        by_name = {re.split(r"[<>=!~ \[]", s, maxsplit=1)[0]: s for s in specs}
        assert _floor(by_name["bentoml"]) >= (1, 4, 19)  # CVE-2025-27520/32375 (1.4.8), CVE-2025-54381 (1.4.19)
        assert _floor(by_name["python-multipart"]) >= (0, 0, 27)  # CVE-2026-42561
