"""The framework's own plugin: built-in threshold operators and the three base profiles.

Registered through the ``vetting`` entry-point group like every other plugin
(entry point ``core``), so blocking it is possible — and breaks most runs.
"""

from __future__ import annotations

from ._markers import hookimpl
from .records import ProfileSpec
from .thresholds import BUILTIN_OPERATORS


@hookimpl
def vetting_threshold_operators():
    return list(BUILTIN_OPERATORS)


@hookimpl
def vetting_profiles():
    return [
        ProfileSpec(
            name="quick",
            description="Smoke test of every component; about 10 minutes on a typical server.",
        ),
        ProfileSpec(
            name="deep",
            description="Long stress of every component, destructive disk tests; up to 2 hours.",
        ),
        ProfileSpec(
            name="soak",
            description="Burn-in of everything at once for hours (default 12 h).",
        ),
    ]
