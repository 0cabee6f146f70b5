"""The one marker pair of the ``vetting`` project.

Plugin authors import only :data:`hookimpl` (re-exported by :mod:`vetting_core`);
the spec marker stays private to the framework.
"""

import pluggy

PROJECT = "vetting"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
