"""Layering: who may import whom — the table of DESIGN.md ("Layout"), in one place.

=================  ====================================  ==========================================
package            may import of the vetting packages    of third-party code
=================  ====================================  ==========================================
vetting_core       none                                  pluggy, anyio, msgspec, pyyaml, structlog
                                                         (``vetting_core/testing.py``: pytest too)
vetting_stages     vetting_core                          anything but the server's stack
vetting_notifiers  vetting_core                          anything but the server's stack
vetting_reports    vetting_core                          core's dependencies and jinja2
vetting_agent      vetting_core, vetting_reports         anything but the server's stack
vetting_server     vetting_core, vetting_reports,        anything
                   vetting_notifiers (the dispatcher)
vetting_example    vetting_core                          anything but the server's stack
=================  ====================================  ==========================================

The server's stack is litestar, piccolo, uvicorn, granian, asyncpg and
``vetting_server``: the agent, the stages and the notifiers install and run without
it. The server imports no plugin (``vetting_stages``): plugins reach it through entry
points and their hooks only, so blocking one removes its code. ``vetting_agent`` is
the live image's program: the server never imports it.

The static scan reads every ``.py`` file of each package (imports inside functions
and ``TYPE_CHECKING`` blocks included; ``importlib.import_module("…")`` with a
literal too) and names file:line. The dynamic tests import every module of the agent
side, and run the agent, in a fresh interpreter in which the server's stack cannot be
imported at all; the slow one installs ``.[agent]`` into a fresh virtual environment.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VETTING = frozenset({"vetting_core", "vetting_stages", "vetting_notifiers", "vetting_agent", "vetting_reports",
                     "vetting_server", "vetting_example"})
SERVER_STACK = frozenset({"litestar", "piccolo", "vetting_server", "uvicorn", "granian", "asyncpg"})
CORE_DEPS = frozenset({"pluggy", "anyio", "msgspec", "yaml", "structlog"})


@dataclass(frozen=True)
class Layer:
    path: str  # the package's directory, from the repository root
    vetting: frozenset[str]  # the other vetting packages it may import
    third_party: frozenset[str] | None  # None: any but ``forbidden``
    forbidden: frozenset[str] = frozenset()

    @property
    def package(self) -> str:
        return Path(self.path).name


LAYERS = [
    Layer("vetting_core", frozenset(), CORE_DEPS),
    Layer("vetting_stages", frozenset({"vetting_core"}), None, SERVER_STACK),
    Layer("vetting_notifiers", frozenset({"vetting_core"}), None, SERVER_STACK),
    Layer("vetting_reports", frozenset({"vetting_core"}), CORE_DEPS | {"jinja2", "markupsafe"}),
    Layer("vetting_agent", frozenset({"vetting_core", "vetting_reports"}), None, SERVER_STACK),
    Layer("vetting_server", frozenset({"vetting_core", "vetting_reports", "vetting_notifiers"}), None),
    Layer("plugins-example/vetting_example", frozenset({"vetting_core"}), None, SERVER_STACK),
]
BY_PACKAGE = {layer.package: layer for layer in LAYERS}
# the plugin authors' test kit is a pytest plugin: only test code imports it
EXEMPT = {("vetting_core/testing.py", "pytest")}


def _stdlib(top: str) -> bool:
    return top in sys.stdlib_module_names or top == "__future__"


def rule_violation(package: str, module: str, file: str = "") -> str | None:
    """Why ``package`` may not import ``module`` (a dotted name), or None."""
    layer = BY_PACKAGE[package]
    top = module.split(".")[0]
    if top == package or _stdlib(top) or (file, top) in EXEMPT:
        return None
    if top in VETTING:
        if top in layer.vetting:
            return None
        allowed = ", ".join(sorted(layer.vetting)) or "no other vetting package"
        return f"{package} may import {allowed} (DESIGN.md), not {top}"
    if top in layer.forbidden:
        return f"{package} must not import server-only {top}"
    if layer.third_party is not None and top not in layer.third_party:
        return f"{package} may use only {sorted(layer.third_party)} besides the stdlib"
    return None


def imports_of(path: Path, package_parts: list[str]) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - node.level + 1]
                if not base:
                    found.append((node.lineno, "<relative import beyond the top package>"))
                    continue
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.append((node.lineno, mod))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def python_files(layer: Layer) -> list[Path]:
    return sorted(p for p in (ROOT / layer.path).rglob("*.py") if "__pycache__" not in p.parts)


def _package_of(path: Path, layer: Layer) -> list[str]:
    parts = list(path.relative_to((ROOT / layer.path).parent).with_suffix("").parts)
    return parts[:-1] if parts[-1] != "__init__" else parts[:-1]


def test_the_table_is_design_md():
    assert set(BY_PACKAGE) == VETTING
    assert rule_violation("vetting_core", "vetting_server.app")
    assert rule_violation("vetting_core", "httpx")
    assert rule_violation("vetting_core", "yaml") is None
    assert rule_violation("vetting_core", "pytest")
    assert rule_violation("vetting_core", "pytest", "vetting_core/testing.py") is None
    assert rule_violation("vetting_agent", "litestar.testing")
    assert rule_violation("vetting_agent", "piccolo.table")
    assert rule_violation("vetting_agent", "vetting_server.app")
    assert rule_violation("vetting_agent", "vetting_stages.smart")
    assert rule_violation("vetting_agent", "vetting_reports") is None
    assert rule_violation("vetting_agent", "httpx") is None
    assert rule_violation("vetting_stages", "vetting_agent.client")
    assert rule_violation("vetting_stages", "uvicorn")
    assert rule_violation("vetting_notifiers", "vetting_server")
    assert rule_violation("vetting_reports", "httpx")
    assert rule_violation("vetting_reports", "jinja2") is None
    assert rule_violation("vetting_server", "vetting_stages.network.iperf_server")  # plugins come through hooks
    assert rule_violation("vetting_server", "vetting_agent.session")
    assert rule_violation("vetting_server", "litestar") is None
    assert rule_violation("vetting_example", "vetting_server.app")


def test_scanner_resolves_relative_and_dynamic_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(
        "from .. import records\nfrom .x import y\nimport importlib\n"
        "def later():\n    import litestar\n    importlib.import_module('piccolo.table')\n"
    )
    got = imports_of(f, ["vetting_agent", "sub"])
    assert (1, "vetting_agent") in got and (2, "vetting_agent.sub.x") in got
    assert (5, "litestar") in got and (6, "piccolo.table") in got
    stages = BY_PACKAGE["vetting_stages"]
    assert _package_of(ROOT / "vetting_stages" / "cpu" / "__init__.py", stages) == ["vetting_stages", "cpu"]
    assert _package_of(ROOT / "vetting_stages" / "cpu" / "stressng.py", stages) == ["vetting_stages", "cpu"]


@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: layer.package)
def test_no_forbidden_imports(layer):
    files = python_files(layer)
    assert files, f"{layer.path} has no modules"
    problems = []
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        for line, module in imports_of(path, _package_of(path, layer)):
            why = rule_violation(layer.package, module, rel)
            if why:
                problems.append(f"{rel}:{line}: imports {module}: {why}")
    assert not problems, "\n".join(problems)


BLOCKING = r"""
import importlib, importlib.abc, sys

BLOCKED = set(sys.argv[1].split(","))

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{name} is blocked for the layering test", name=name)
        return None

sys.meta_path.insert(0, Block())
"""

CHECK = BLOCKING + r"""
import json, traceback
failures = {}
for module in sys.argv[2:]:
    try:
        importlib.import_module(module)
    except BaseException:
        failures[module] = traceback.format_exc(limit=-3)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps({"failures": failures, "leaked": leaked}))
"""

AGENT_SIDE = ["vetting_core", "vetting_agent", "vetting_stages", "vetting_notifiers", "vetting_reports"]
SERVER_ONLY = sorted(SERVER_STACK - {"granian"})


def module_names(layer: Layer) -> list[str]:
    names = []
    for path in python_files(layer):
        rel = path.relative_to((ROOT / layer.path).parent).with_suffix("")
        if rel.name == "__main__":
            continue  # importing it would run the program
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def test_agent_side_imports_without_server_packages():
    """Import every existing module of the agent side with the server's stack made
    unimportable (only modules found on disk are imported; any error fails the test)."""
    modules = [m for p in AGENT_SIDE for m in module_names(BY_PACKAGE[p])]
    out = subprocess.run(
        [sys.executable, "-c", CHECK, ",".join(SERVER_ONLY), *modules],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert not report["failures"], "\n\n".join(f"{m}:\n{tb}" for m, tb in report["failures"].items())
    assert report["leaked"] == []
    assert "vetting_agent" in modules and "vetting_core.plugins" in modules


def test_blocking_finder_really_blocks():
    out = subprocess.run(
        [sys.executable, "-c", CHECK, "litestar", "vetting_core", "litestar.app"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert list(report["failures"]) == ["litestar.app"]
    assert "blocked for the layering test" in report["failures"]["litestar.app"]


def test_the_agent_runs_with_the_server_stack_absent():
    """``vetting-agent plugins`` with the server's packages made unimportable (as on an
    agent-only install): it lists the stages; the server's own plugins (boot providers)
    are reported broken and skipped, never fatal."""
    code = BLOCKING + (
        "from vetting_agent.cli import main\n"
        "sys.exit(main(['--log-level', 'error', 'plugins']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, ",".join(SERVER_ONLY)], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stages:" in proc.stdout
    assert "blocked for the layering test" in proc.stdout or "boot" not in proc.stdout


@pytest.mark.slow
def test_a_real_agent_only_install_has_no_server_stack(tmp_path):
    """``pip install '.[agent]'`` into a fresh virtual environment: the agent runs,
    finds its plugins through entry points, and Litestar/Piccolo are not there."""
    venv = tmp_path / "agent-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    build = tmp_path / "src"  # a copy without the developer's build leftovers
    shutil.copytree(ROOT, build, ignore=shutil.ignore_patterns(".venv", ".git", "*.egg-info", "build", "var", "__pycache__"))
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


def _module_graph(layer: Layer, prefix: str) -> dict[str, set[str]]:
    """Every import between the modules named ``prefix…`` (lazy ones inside functions
    included), as module -> the modules it imports."""
    names = {name: path for name, path in zip(module_names(layer), [p for p in python_files(layer)
                                                                  if p.name != "__main__.py"])}
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        if not name.startswith(prefix):
            continue
        package = _package_of(path, layer)
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else [])
                                ) if node.level else node.module or ""
                # ``from . import demo`` imports the module demo; ``from .client import Client`` the module client
                candidates = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in names else base for alias in node.names]
            else:
                continue
            targets |= {c for c in candidates if c in names and c.startswith(prefix) and c != name}
        graph[name] = targets
    return graph


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        for nxt in graph.get(node, ()):
            if nxt == goal:
                return True
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return False


def test_the_cli_modules_import_each_other_in_one_direction():
    """``vetting`` (vetting_server/cli/): the parser knows every command and the demo;
    the demo uses the client and the watcher; nothing imports its way back (the old
    cli.py and demo.py imported each other)."""
    graph = _module_graph(BY_PACKAGE["vetting_server"], "vetting_server.cli")
    assert "vetting_server.cli.demo" in graph["vetting_server.cli.parser"]
    circles = sorted(m for m in graph if _reaches(graph, m, m))
    assert circles == [], f"modules of vetting_server/cli that import themselves back: {circles}"
