"""Throwaway distributions for plugin-loading tests.

A directory on ``PYTHONPATH`` holding ``<module>.py`` and
``<name>-<version>.dist-info/{METADATA,entry_points.txt}`` is, for
``importlib.metadata``, an installed distribution: exactly what pip leaves behind,
without pip. Tests hand the directory to subprocesses only, so the test process's
own plugin set is never polluted.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

BIN = Path(sys.executable).parent


def make_distribution(root: Path, name: str, modules: dict[str, str], entry_points: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = ["[vetting]"] + [f"{ep} = {target}" for ep, target in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return root


BROKEN_IMPORT = """
raise RuntimeError("boom at import")
"""

BROKEN_HOOK = """
from vetting_core import NotifierSpec, hookimpl

class Never:
    def __init__(self, config):
        pass

    async def send(self, event):
        pass

@hookimpl
def vetting_stages():
    raise ValueError("no stages today")

@hookimpl
def vetting_notifiers():
    return [NotifierSpec(kind="never-seen", factory=Never)]
"""

CRASHY = """
from vetting_core import ProfileSpec, StageSpec, hookimpl


async def crash(ctx):
    ctx.log("crashy: warming up")
    ctx.measure("crashy", "before_crash", 1.0)
    ctx.progress(0.5, "half way")
    return helper_that_divides(0)


def helper_that_divides(n):
    return 1 / n


@hookimpl
def vetting_stages():
    return [StageSpec(name="Crashy", order=455, run=crash, profiles=())]


@hookimpl
def vetting_profiles():
    # quick-memtest comes from the installed example plugin: profiles extend across plugins
    return [ProfileSpec(name="crash-then-memtest", extends="quick-memtest", include=("Crashy",),
                        params={"Memtester": {"mib": 4}})]
"""


def throwaway_site(root: Path) -> Path:
    make_distribution(root, "vetting-broken-import", {"vetting_broken_import": BROKEN_IMPORT},
                      {"broken_import": "vetting_broken_import"})
    make_distribution(root, "vetting-broken-hook", {"vetting_broken_hook": BROKEN_HOOK},
                      {"broken_hook": "vetting_broken_hook"})
    make_distribution(root, "vetting-crashy", {"vetting_crashy": CRASHY}, {"crashy": "vetting_crashy"})
    return root


def env_with(path: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VETTING")}
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(path), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env
