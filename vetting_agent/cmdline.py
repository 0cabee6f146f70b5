"""Reading the run's coordinates from the kernel command line (PXE mode).

The iPXE script served by ``GET /ipxe/{mac}`` boots the live image with::

    vetting.server=https://orchestrator:8080 vetting.run=42 vetting.token=<secret>

(names in :mod:`vetting_core.protocol`). The kernel command line is split like a
shell does it (the kernel honours double quotes around values with spaces); a
parameter given twice keeps the last one, as the kernel's own parser does.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from vetting_core.protocol import KERNEL_PARAM_RUN, KERNEL_PARAM_SERVER, KERNEL_PARAM_TOKEN

PROC_CMDLINE = "/proc/cmdline"


class CmdlineError(ValueError):
    """The command line lacks a parameter or carries a malformed one."""


@dataclass(frozen=True)
class RunCoordinates:
    server: str
    run_id: int
    token: str

    def __repr__(self) -> str:  # never print the token in logs or tracebacks
        return f"RunCoordinates(server={self.server!r}, run_id={self.run_id}, token='***')"


def parse_params(text: str) -> dict[str, str]:
    """``key=value`` words of a kernel command line; bare words map to ``""``.

    Everything after a lone ``--`` belongs to init, not the kernel: ignored.
    """
    try:
        words = shlex.split(text, posix=True)
    except ValueError:  # unbalanced quote: the kernel keeps going, so do we
        words = text.replace('"', " ").split()
    params: dict[str, str] = {}
    for word in words:
        if word == "--":
            break
        key, sep, value = word.partition("=")
        params[key] = value if sep else ""
    return params


def coordinates_from_text(text: str) -> RunCoordinates:
    params = parse_params(text)
    missing = [k for k in (KERNEL_PARAM_SERVER, KERNEL_PARAM_RUN, KERNEL_PARAM_TOKEN) if not params.get(k)]
    if missing:
        raise CmdlineError(
            f"kernel command line lacks {', '.join(missing)} "
            f"(the iPXE script of the orchestrator sets them; got {len(params)} other parameters)"
        )
    server = params[KERNEL_PARAM_SERVER].rstrip("/")
    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CmdlineError(f"{KERNEL_PARAM_SERVER}={server!r} is not an http(s) URL")
    raw_run = params[KERNEL_PARAM_RUN]
    try:
        run_id = int(raw_run)
    except ValueError:
        raise CmdlineError(f"{KERNEL_PARAM_RUN}={raw_run!r} is not a run number") from None
    if run_id <= 0:
        raise CmdlineError(f"{KERNEL_PARAM_RUN}={raw_run!r} is not a run number")
    return RunCoordinates(server=server, run_id=run_id, token=params[KERNEL_PARAM_TOKEN])


def read_coordinates(path: str | Path = PROC_CMDLINE) -> RunCoordinates:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        raise CmdlineError(f"cannot read {path}: {exc.strerror}") from None
    return coordinates_from_text(text)
