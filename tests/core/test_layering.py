"""Layering: who may import whom (DESIGN.md, "Layout").

- ``vetting_core`` imports no other ``vetting_*`` package, and of third-party code
  only its own dependencies (pluggy, anyio, msgspec, pyyaml, structlog) — except the
  plugin authors' pytest plugin ``vetting_core/testing.py``, which imports pytest;
- ``vetting_agent``, ``vetting_stages`` and ``vetting_notifiers`` never import
  litestar, piccolo or ``vetting_server`` (nor the server-only uvicorn/asyncpg), so the
  agent installs and runs without the server's dependencies; stages and notifiers use
  no ``vetting_*`` package but ``vetting_core``;
- ``vetting_reports`` (shared by the server and the agent's local mode) imports
  ``vetting_core`` and jinja2 only, besides the stdlib and vetting_core's own
  dependencies.

The static scan reads every ``.py`` file (imports inside functions and
``TYPE_CHECKING`` blocks included; ``importlib.import_module("…")`` with a literal
too) and names file:line. The dynamic test imports every module in a fresh
interpreter in which the forbidden packages cannot be imported at all.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["vetting_core", "vetting_stages", "vetting_notifiers", "vetting_agent", "vetting_reports"]
SERVER_ONLY = {"litestar", "piccolo", "vetting_server", "uvicorn", "granian", "asyncpg"}
CORE_DEPS = {"pluggy", "anyio", "msgspec", "yaml", "structlog"}
VETTING = {"vetting_core", "vetting_stages", "vetting_notifiers", "vetting_agent", "vetting_reports", "vetting_server"}


def _stdlib(top: str) -> bool:
    return top in sys.stdlib_module_names or top == "__future__"


# The plugin authors' test kit is a pytest plugin: only test code imports it.
EXEMPT = {("vetting_core/testing.py", "pytest")}


def rule_violation(package: str, module: str, file: str = "") -> str | None:
    """Why ``package`` may not import ``module`` (a dotted name), or None."""
    top = module.split(".")[0]
    if top == package or _stdlib(top) or (file, top) in EXEMPT:
        return None
    if package == "vetting_core":
        if top in VETTING:
            return "vetting_core imports no other vetting_* package"
        if top not in CORE_DEPS:
            return f"vetting_core may use only {sorted(CORE_DEPS)} besides the stdlib"
        return None
    if top in SERVER_ONLY:
        return f"{package} must not import server-only {top}"
    if package in ("vetting_stages", "vetting_notifiers") and top in VETTING and top != "vetting_core":
        return f"{package} may use only vetting_core of the vetting packages"
    if package == "vetting_reports":
        if top in VETTING and top != "vetting_core":
            return "vetting_reports imports only vetting_core of the vetting packages"
        if top not in CORE_DEPS | {"vetting_core", "jinja2", "markupsafe"}:
            return "vetting_reports imports only vetting_core and jinja2 (and core's dependencies)"
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


def python_files(package: str) -> list[Path]:
    base = ROOT / package
    return sorted(p for p in base.rglob("*.py") if "__pycache__" not in p.parts)


def package_parts_of(path: Path) -> list[str]:
    """The package a module's relative imports are resolved against."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    return parts if parts[-1] == "__init__" and parts.pop() is not None else parts[:-1]


def test_rules_themselves():
    assert rule_violation("vetting_core", "vetting_server.app")
    assert rule_violation("vetting_core", "httpx")
    assert rule_violation("vetting_core", "yaml") is None
    assert rule_violation("vetting_core", "pytest")
    assert rule_violation("vetting_core", "pytest", "vetting_core/testing.py") is None
    assert rule_violation("vetting_agent", "litestar.testing")
    assert rule_violation("vetting_agent", "piccolo.table")
    assert rule_violation("vetting_agent", "vetting_reports") is None
    assert rule_violation("vetting_agent", "httpx") is None
    assert rule_violation("vetting_stages", "vetting_agent.client")
    assert rule_violation("vetting_notifiers", "vetting_server")
    assert rule_violation("vetting_reports", "httpx")
    assert rule_violation("vetting_reports", "jinja2") is None
    parts = ["vetting_stages", "cpu"]
    assert package_parts_of(ROOT / "vetting_stages" / "cpu" / "__init__.py") == parts
    assert package_parts_of(ROOT / "vetting_stages" / "cpu" / "stressng.py") == parts


def test_scanner_resolves_relative_and_dynamic_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(
        "from .. import records\nfrom .x import y\nimport importlib\n"
        "def later():\n    import litestar\n    importlib.import_module('piccolo.table')\n"
    )
    got = imports_of(f, ["vetting_agent", "sub"])
    assert (1, "vetting_agent") in got and (2, "vetting_agent.sub.x") in got
    assert (5, "litestar") in got and (6, "piccolo.table") in got


@pytest.mark.parametrize("package", PACKAGES)
def test_no_forbidden_imports(package):
    files = python_files(package)
    assert files, f"{package} has no modules"
    problems = []
    for path in files:
        for line, module in imports_of(path, package_parts_of(path)):
            why = rule_violation(package, module, path.relative_to(ROOT).as_posix())
            if why:
                problems.append(f"{path.relative_to(ROOT)}:{line}: imports {module}: {why}")
    assert not problems, "\n".join(problems)


CHECK = r"""
import importlib, importlib.abc, json, sys, traceback

BLOCKED = set(sys.argv[1].split(","))

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{name} is blocked for the layering test", name=name)
        return None

sys.meta_path.insert(0, Block())
failures = {}
for module in sys.argv[2:]:
    try:
        importlib.import_module(module)
    except BaseException:
        failures[module] = traceback.format_exc(limit=-3)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps({"failures": failures, "leaked": leaked}))
"""


def module_names(package: str) -> list[str]:
    names = []
    for path in python_files(package):
        rel = path.relative_to(ROOT).with_suffix("")
        if rel.name == "__main__":
            continue  # importing it would run the program
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def test_agent_side_imports_without_server_packages():
    """Import every existing module of the agent side with litestar, piccolo and
    vetting_server made unimportable (only modules found on disk are imported; any
    error fails the test)."""
    modules = [m for p in ["vetting_core", "vetting_agent", "vetting_stages", "vetting_notifiers", "vetting_reports"]
               for m in module_names(p)]
    blocked = ["litestar", "piccolo", "vetting_server", "uvicorn", "asyncpg"]
    out = subprocess.run(
        [sys.executable, "-c", CHECK, ",".join(blocked), *modules],
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
