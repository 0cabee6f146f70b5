"""Fixtures of the core tests: real distributions on sys.path for the plugin manager."""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest


@dataclass
class Site:
    """A directory on ``sys.path`` holding ``*.dist-info`` directories and modules,
    exactly what ``pip install`` leaves behind, so ``importlib.metadata`` sees real
    distributions with real entry points."""

    root: Path
    modules: set[str] = field(default_factory=set)

    def distribution(
        self,
        name: str,
        version: str,
        entry_points: dict[str, str],
        modules: dict[str, str],
    ) -> None:
        info = self.root / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: test plugin\n"
        )
        eps = "\n".join(f"{ep} = {target}" for ep, target in entry_points.items())
        (info / "entry_points.txt").write_text(f"[vetting]\n{eps}\n")
        (info / "RECORD").write_text("")
        for module, source in modules.items():
            (self.root / f"{module}.py").write_text(textwrap.dedent(source))
            self.modules.add(module)


@pytest.fixture
def site(tmp_path, monkeypatch):
    root = tmp_path / "site-packages"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))  # also invalidates the import caches
    monkeypatch.delenv("VETTING_DISABLE_PLUGINS", raising=False)
    s = Site(root)
    yield s
    for module in s.modules:
        sys.modules.pop(module, None)
