"""plugins-example's own test suite passes, run as its author runs it:
``cd plugins-example && python -m pytest -q`` (the root suite does not collect it)."""

import subprocess
import sys
from pathlib import Path

from .distributions import env_with

EXAMPLE = Path(__file__).resolve().parents[2] / "plugins-example"


def test_plugins_example_suite_passes():
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=EXAMPLE, env=env_with(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout.splitlines()[-1]
