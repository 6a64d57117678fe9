"""The suite's own rule: under CI a skip is a failure (checked in a child pytest run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_skip_fails_under_ci_and_skips_otherwise(tmp_path: Path) -> None:
    test = REPO / "tests" / "_tmp_skip_probe_test.py"
    test.write_text("import pytest\n\ndef test_needs_tool():\n    pytest.skip('tool X is not installed')\n")
    try:
        base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)]
        env = {k: v for k, v in os.environ.items() if k != "CI"}
        r = subprocess.run(base, cwd=REPO, env=env, capture_output=True, text=True)
        assert r.returncode == 0 and "1 skipped" in r.stdout
        r = subprocess.run(base, cwd=REPO, env={**env, "CI": "true"}, capture_output=True, text=True)
        assert r.returncode == 1 and "tool X is not installed" in r.stdout
    finally:
        test.unlink()
