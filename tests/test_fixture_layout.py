"""Captured tool output lives in ``tests/fixtures/<tool>/<version>/`` and every tool
folder says where its captures come from (README.md at the tool or version level).

Version folders are the tool's version (``7.3``, ``1.8.19``), ``unversioned`` for
published captures whose tool version was not recorded, or ``synthetic`` for the few
documents written by hand for hardware no machine here has (each README says so)."""

from __future__ import annotations

import re
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
VERSION = re.compile(r"^(\d+(\.\d+)*[a-z0-9.+-]*|unversioned|synthetic)$")


def test_every_capture_is_under_tool_and_version():
    misplaced = []
    for f in FIXTURES.rglob("*"):
        if not f.is_file():
            continue
        parts = f.relative_to(FIXTURES).parts
        if len(parts) == 2 and parts[1] == "README.md":
            continue
        if len(parts) < 3 or not VERSION.match(parts[1]):
            misplaced.append("/".join(parts))
    assert not misplaced, f"not under <tool>/<version>/: {misplaced}"


def test_every_tool_folder_documents_its_sources():
    undocumented = []
    for tool in sorted(p for p in FIXTURES.iterdir() if p.is_dir()):
        versions = [v for v in tool.iterdir() if v.is_dir()]
        assert versions, f"{tool.name}: no version folder"
        if (tool / "README.md").exists():
            continue
        undocumented += [f"{tool.name}/{v.name}" for v in versions if not (v / "README.md").exists()]
    assert not undocumented, f"no README.md saying where these captures come from: {undocumented}"


def test_synthetic_documents_say_so():
    for folder in FIXTURES.glob("*/synthetic"):
        readme = folder / "README.md" if (folder / "README.md").exists() else folder.parent / "README.md"
        assert "not a capture" in readme.read_text(), f"{folder}: its README must say it is not a capture"
