"""The command a run was started with, as reports show it (OCPTV ``testRunStart``).

A run's *origin* is recorded when it starts: the operator CLI's argv (sent to the
server with the request), the agent's own argv in local mode, or the API request itself
for other clients. Secrets never reach a report: the value after ``--token``,
``--password`` and their ``=`` forms is replaced by ``***``.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import PurePath

SECRET_OPTIONS = ("--token", "--password", "--agent-token")
MAX_LENGTH = 1000
REDACTED = "***"  # left unquoted: it stands for a value, it is not one


def command_line(argv: Sequence[str]) -> str:
    """``argv`` as one shell-quoted line, program name without its directory, secrets
    redacted, at most :data:`MAX_LENGTH` characters::

        >>> command_line(["/usr/bin/vetting", "run", "start", "n1", "--token", "vo_abc"])
        'vetting run start n1 --token ***'
    """
    out: list[str] = []
    hide = False
    for i, arg in enumerate(argv):
        if hide:
            out.append(REDACTED)
            hide = False
            continue
        name, eq, _ = arg.partition("=")
        if name in SECRET_OPTIONS:
            out.append(f"{name}={REDACTED}" if eq else name)
            hide = not eq
            continue
        out.append(shlex.quote(PurePath(arg).name if i == 0 else arg))
    return " ".join(out)[:MAX_LENGTH]
