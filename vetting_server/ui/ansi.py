"""Log lines to HTML: ANSI colours kept as classes, everything else made harmless.

A tool's output may carry escape sequences: SGR colours (``ESC[31m``), but also cursor
moves, screen clears, window titles (OSC) and terminal queries. The log tail keeps the
colours an operator expects (foreground 30–37/90–97, bold, reset) as ``<span
class="a-…">`` and drops every other sequence; the text between them is HTML-escaped,
and any other control character is written as a visible ``\\xNN`` (as the ``/logs`` text
route does, :func:`vetting_core.text.printable`). Nothing from the line becomes markup or
an attribute: only the class names listed here.
"""

from __future__ import annotations

import re
from html import escape

from vetting_core.text import printable

# CSI ... final byte, OSC ... BEL/ST, and two-byte escapes (ESC followed by one character)
_ESCAPE = re.compile(r"\x1b\[([0-9;?]*)([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?|\x9b[0-9;?]*[@-~]")
_COLOURS = ("black", "red", "green", "yellow", "blue", "magenta", "cyan", "white")


def _classes(params: str, current: list[str]) -> list[str]:
    classes = list(current)
    for p in (params or "0").split(";"):
        n = int(p) if p.isdigit() else 0
        if n == 0:
            classes = []
        elif n == 1:
            classes = [c for c in classes if c != "a-bold"] + ["a-bold"]
        elif n == 22:
            classes = [c for c in classes if c != "a-bold"]
        elif 30 <= n <= 37 or 90 <= n <= 97:
            bright = "bright-" if n >= 90 else ""
            classes = [c for c in classes if not c.startswith("a-fg-")] + [f"a-fg-{bright}{_COLOURS[n % 10]}"]
        elif n == 39:
            classes = [c for c in classes if not c.startswith("a-fg-")]
    return classes


def ansi_html(text: str) -> str:
    """One log message as safe HTML (no trailing newline added)."""
    out: list[str] = []
    classes: list[str] = []
    pos = 0

    def emit(chunk: str) -> None:
        if not chunk:
            return
        safe = escape(printable(chunk))
        out.append(f'<span class="{" ".join(classes)}">{safe}</span>' if classes else safe)

    for m in _ESCAPE.finditer(text):
        emit(text[pos:m.start()])
        pos = m.end()
        if m.group(2) == "m":  # SGR; every other sequence is dropped
            classes = _classes(m.group(1), classes)
    emit(text[pos:])
    return "".join(out)
