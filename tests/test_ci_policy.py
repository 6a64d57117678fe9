"""The suite's own rule: under CI a skip is a failure (checked in a child pytest run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_skip_fails_under_ci_and_skips_otherwise(tmp_path: Path) -> None:
    test = tmp_path / "test_probe.py"
    test.write_text("import pytest\n\ndef test_needs_tool():\n    pytest.skip('tool X is not installed')\n")
    # Load the suite's conftest as a plugin so the probe, outside tests/, gets the same hook.
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
            "--rootdir", str(tmp_path), str(test)]
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(REPO)
    r = subprocess.run(base, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "1 skipped" in r.stdout, r.stdout + r.stderr
    r = subprocess.run(base, cwd=tmp_path, env={**env, "CI": "true"}, capture_output=True, text=True)
    assert r.returncode == 1 and "tool X is not installed" in r.stdout, r.stdout + r.stderr
