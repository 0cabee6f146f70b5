"""The ``vetting`` command line: admin commands, the HTTP client, the SSE reader and the demo.

``vetting_server.cli:main`` is the console script's entry point."""

from .parser import main

__all__ = ["main"]
