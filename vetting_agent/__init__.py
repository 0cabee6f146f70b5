"""The Vetting agent: runs the stage pipeline on the machine under test.

It runs in the PXE live image (``vetting-agent pxe``), by hand (``connect``), on an
installed machine that polls the orchestrator (``host``) or entirely on its own
(``local``). It imports only :mod:`vetting_core` (and :mod:`vetting_reports` for local
mode), so ``pip install 'vetting[agent]'`` is enough to run it.
"""

from vetting_core import __version__

AGENT_VERSION = __version__

__all__ = ["AGENT_VERSION"]
