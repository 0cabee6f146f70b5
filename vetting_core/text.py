"""Text from machines under test, made safe to show.

Log lines, stage reasons, host names and progress messages come from agents: a tool's
output may carry ANSI escape sequences (colours, but also "clear screen", "move cursor",
window-title and terminal-query sequences) and carriage returns or newlines that let one
line pose as others. The server **stores them raw** (nothing an operator may need is
lost; the JSON API returns them JSON-escaped, as ``\\u001b``), and every place that
shows them as text — the ``/logs`` text route, the CLI — passes them through
:func:`printable`, which writes each control character as a visible ``\\xNN`` escape.
"""

from __future__ import annotations

import re

# C0 controls except tab, DEL, and C1 controls (0x9b is a one-byte CSI on some terminals)
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with every control character but tab as ``\\xNN`` (``"\\x1b[31m"`` → ``"\\\\x1b[31m"``)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", text) if _CONTROL.search(text) else text
