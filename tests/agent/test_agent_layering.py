"""The agent installs with ``pip install '.[agent]'``: it must never import the
server's stack (Litestar, Piccolo, uvicorn) nor ``vetting_server``."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import vetting_agent

FORBIDDEN = ("litestar", "piccolo", "uvicorn", "asyncpg", "vetting_server", "vetting_stages", "vetting_notifiers")
AGENT_DIR = Path(vetting_agent.__file__).parent


def test_agent_sources_import_only_allowed_packages():
    offenders = []
    for path in sorted(AGENT_DIR.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in FORBIDDEN:
                    offenders.append(f"{path.name}:{node.lineno} imports {name}")
    assert offenders == []


def test_agent_runs_with_the_server_stack_absent():
    """Import every agent module and run ``vetting-agent plugins`` with the server's
    packages made unimportable (as on an agent-only install)."""
    code = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {("litestar", "piccolo", "uvicorn", "asyncpg", "vetting_server")!r}:
            raise ImportError("blocked on an agent-only install: " + name)
        return None
sys.meta_path.insert(0, Block())
import pkgutil, vetting_agent
for m in pkgutil.iter_modules(vetting_agent.__path__):
    importlib.import_module("vetting_agent." + m.name)
from vetting_agent.cli import main
sys.exit(main(["--log-level", "error", "plugins"]))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stages:" in proc.stdout
    # the server's boot plugin is reported as broken and skipped, never fatal
    assert "blocked on an agent-only install" in proc.stdout or "boot" not in proc.stdout


@pytest.mark.slow
def test_a_real_agent_only_install_has_no_server_stack(tmp_path):
    """``pip install '.[agent]'`` into a fresh virtual environment: the agent runs,
    finds its plugins through entry points, and Litestar/Piccolo are not there."""
    repo = AGENT_DIR.parent
    venv = tmp_path / "agent-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    build = tmp_path / "src"  # a copy without the developer's build leftovers
    shutil.copytree(repo, build, ignore=shutil.ignore_patterns(".venv", ".git", "*.egg-info", "build", "var", "__pycache__"))
    pip = subprocess.run([str(py), "-m", "pip", "install", "-q", f"{build}[agent]"],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]
    installed = subprocess.run([str(py), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True).stdout.lower()
    for server_only in ("litestar", "piccolo", "uvicorn", "asyncpg"):
        assert f"{server_only}==" not in installed, installed
    out = subprocess.run([str(venv / "bin" / "vetting-agent"), "--log-level", "error", "plugins"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "InventoryCheck" in out.stdout and "Storage" in out.stdout
    assert "BROKEN" not in out.stdout, out.stdout  # every installed entry point loads, the server's boot plugin too
