"""The rules of the house (README, developer section): imports point one way, ``service -> analysis -> models``;
``training`` and ``bench`` use ``analysis`` and ``models``, never ``service``; ``analysis`` and ``service`` never
import torch (directly or through ``models.architectures``) and ``analysis`` never imports ``service``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: package -> the top-level modules (or dotted prefixes) its code may never import.
RULES: dict[str, tuple[str, ...]] = {
    "models": ("analysis", "service", "training", "bench"),
    "analysis": ("service", "training", "bench", "torch", "torchvision", "models.architectures"),
    "service": ("training", "bench", "torch", "torchvision", "models.architectures"),
    "training": ("service", "bench"),
    "bench": ("service",),
    "datasets": ("analysis", "service", "training", "bench"),
}


def imported(source: str) -> list[tuple[int, str]]:
    """``(line, module)`` of every absolute import in ``source``, at any depth (functions included)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def violations(package: str, source: str) -> list[str]:
    """The imports in ``source`` (a file of ``package``) that break :data:`RULES`."""
    banned = RULES[package]
    first: dict[int, str] = {}
    for line, mod in imported(source):  # ``from a.b import c`` yields a.b then a.b.c: name the shorter
        if any(mod == b or mod.startswith(b + ".") for b in banned) and line not in first:
            first[line] = mod
    return [f"{line}: {mod}" for line, mod in sorted(first.items())]


def test_the_check_catches_planted_violations() -> None:
    planted = ("import torch\nfrom service.settings import load_settings\n"
               "def f():\n    from models.architectures import build\n    import service\n"
               "from models import architectures\nimport analysis.pipeline\nfrom models.card import ModelCard\n")
    assert violations("analysis", planted) == ["1: torch", "2: service.settings", "4: models.architectures",
                                               "5: service", "6: models.architectures"]
    assert violations("training", planted) == ["2: service.settings", "5: service"]


@pytest.mark.parametrize("package", sorted(RULES))
def test_imports_point_one_way(package: str) -> None:
    offenders = {p.relative_to(REPO).as_posix(): v for p in sorted((REPO / package).rglob("*.py"))
                 if (v := violations(package, p.read_text()))}
    assert offenders == {}
